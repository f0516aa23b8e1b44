//! Who reads what: of the processes running ingest for one pipeline, one at
//! a time sweeps each integration's object and follows each change stream,
//! so extra processes add no API calls. Each of these jobs is a PostgreSQL
//! session advisory lock, keyed by the pipeline's topic prefix and the job,
//! held on a connection of this process's own: when the process or that
//! connection goes, its locks go too, and another process takes each job at
//! its next try. Webhooks need no lease: any receiver may take any of them.
//!
//! ```text
//!  poller / change stream ──Lease::held──► work ─► Emitter
//!                                  └─ another process holds it ─► wait for the next tick
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio_postgres::Client;

/// The locks of this process's ingest jobs, on one connection.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    /// Keys are scoped by this (the pipeline's topic prefix).
    scope: String,
    session: Mutex<Session>,
}

#[derive(Default)]
struct Session {
    client: Option<Client>,
    /// The keys locked on `client`.
    held: HashSet<i64>,
}

/// One job's lease.
pub struct Lease {
    leases: Leases,
    key: i64,
    /// What the job is, for logs.
    pub job: String,
    /// Whether the last look found it held, to log only the changes.
    was_held: AtomicBool,
}

impl Leases {
    /// Leases on the database at `url`, for the pipeline whose topics start
    /// with `scope`. Connects on first use.
    pub fn new(url: &str, scope: &str) -> Self {
        Leases {
            inner: Arc::new(Inner {
                url: url.to_string(),
                scope: scope.to_string(),
                session: Mutex::new(Session::default()),
            }),
        }
    }

    /// The lease of `job` (e.g. `poll salesforce Account`).
    pub fn lease(&self, job: &str) -> Lease {
        let digest = Sha256::digest(format!("extsync ingest\0{}\0{job}", self.inner.scope));
        let key = i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        Lease {
            leases: self.clone(),
            key,
            job: job.to_string(),
            was_held: AtomicBool::new(false),
        }
    }

    async fn hold(&self, key: i64) -> Result<bool, tokio_postgres::Error> {
        let mut s = self.inner.session.lock().await;
        if s.client.as_ref().is_none_or(Client::is_closed) {
            // Locks end with their session.
            s.held.clear();
            s.client = None;
            s.client = Some(crate::store::connect_as(&self.inner.url, "ingest leases").await?);
        }
        if s.held.contains(&key) {
            return Ok(true);
        }
        let client = s.client.as_ref().expect("connected above");
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if got {
            s.held.insert(key);
        }
        Ok(got)
    }
}

impl Lease {
    /// Whether this process holds the lease now, taking it when it is free.
    /// False while another process holds it, or the database is away.
    pub async fn held(&self) -> bool {
        let held = match self.leases.hold(self.key).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "could not take the ingest lease; trying again at the next tick");
                false
            }
        };
        if self.was_held.swap(held, Ordering::Relaxed) != held {
            if held {
                tracing::info!(job = %self.job, "this process does the job now");
            } else {
                tracing::info!(job = %self.job, "another process does the job; standing by");
            }
        }
        held
    }
}
