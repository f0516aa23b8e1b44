//! The state database as the stages use it: one connection shared by a
//! stage's tasks (their queries pipeline on it), opened again when it
//! closes, so a PostgreSQL restart or a dropped connection costs the work
//! in flight (retried by its caller) and never the stage.
//!
//! ```text
//!  processor / ingest ──► Db::client ──► open connection, or a new one ──► Postgres
//! ```

use std::sync::{Arc, Mutex};

use tokio_postgres::{Client, NoTls};

/// A shared connection to `url`, reopened on first use after it closed.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    /// What the connection is called in `pg_stat_activity`.
    role: &'static str,
    current: Mutex<Arc<Client>>,
    /// Held while a new connection opens: callers who find the connection
    /// closed at the same time wait for one new connection.
    reopening: tokio::sync::Mutex<()>,
}

impl Db {
    /// Opens the first connection; `role` names it in `pg_stat_activity`
    /// (`application_name` = `extsync <role>`) and in logs.
    pub async fn connect(url: &str, role: &'static str) -> Result<Db, tokio_postgres::Error> {
        let client = connect_as(url, role).await?;
        metrics::describe_counter!(
            REOPENED_TOTAL,
            "State database connections opened again after one closed, by role"
        );
        Ok(Db {
            inner: Arc::new(Inner {
                url: url.to_string(),
                role,
                current: Mutex::new(Arc::new(client)),
                reopening: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The open connection; a new one when it has closed. The error is the
    /// failed attempt to connect (the server is away): the caller's work
    /// fails as it would on a query error, and its retry connects again.
    pub async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        if let Some(c) = self.open_client() {
            return Ok(c);
        }
        let _one = self.inner.reopening.lock().await;
        if let Some(c) = self.open_client() {
            return Ok(c);
        }
        let client = Arc::new(connect_as(&self.inner.url, self.inner.role).await?);
        tracing::info!(role = self.inner.role, "state database connection reopened");
        metrics::counter!(REOPENED_TOTAL, "role" => self.inner.role).increment(1);
        *self.inner.current.lock().expect("not poisoned") = client.clone();
        Ok(client)
    }

    fn open_client(&self) -> Option<Arc<Client>> {
        let c = self.inner.current.lock().expect("not poisoned");
        (!c.is_closed()).then(|| c.clone())
    }
}

/// Counter of state database connections opened again after one closed.
pub const REOPENED_TOTAL: &str = "extsync_state_db_reopened_total";

/// Connects to `url` as `extsync <role>` (its `application_name`, unless
/// the URL sets one) and drives the connection in a background task.
pub(crate) async fn connect_as(
    url: &str,
    role: &'static str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name(format!("extsync {role}"));
    }
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            let why = e.as_db_error().map_or_else(
                || e.to_string(),
                |d| format!("{}: {}", d.code().code(), d.message()),
            );
            tracing::warn!(role, error = %why, "state database connection closed");
        }
    });
    Ok(client)
}
