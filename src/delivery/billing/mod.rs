//! The billing writer: applies [`BillingWrite`]s to the billing database in
//! one transaction per batch, tagged with extsync's replication origin so
//! capture drops them (no loops), and guarded by the row's version column so
//! an older change never overwrites a newer one.
//!
//! ```text
//!  BillingWrite* ─► check tables/columns against the catalog (all or nothing)
//!               ─► pg_replication_origin_session_setup(origin)
//!               ─► BEGIN; per write: UPDATE … SET col = ($n::text)::<type>, updated_at = as_of
//!                                   WHERE key AND (updated_at IS NULL OR updated_at <= as_of)
//!               ─► COMMIT ─► pg_replication_origin_session_reset()
//! ```
//!
//! Values are always bound as parameters, in their text form (JSON text for
//! `json`/`jsonb` columns, array elements for array columns), and cast to
//! the column's type by the server. Identifiers are quoted. The updates of
//! a batch are pipelined on the connection; when a value is rejected (a data
//! or constraint error) the batch is rolled back and applied again one write
//! at a time under savepoints, so that write alone fails and the rest commits.
//!
//! PostgreSQL 15 lets one session at a time use an origin, so the writer
//! holds it only for the length of a batch; writers in other processes wait
//! their turn (up to [`BillingWriterConfig::origin_wait`]).

mod apply;
mod catalog;
mod statement;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use super::intent::{BillingWrite, DeliveryOutcome};
use super::metrics;
use crate::config::DEFAULT_ORIGIN;
use catalog::Table;

/// Default version column.
pub const DEFAULT_VERSION_COLUMN: &str = "updated_at";
/// Default time to wait for an origin held by another writer.
pub const DEFAULT_ORIGIN_WAIT: Duration = Duration::from_secs(30);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 512;

/// Settings of the billing writer.
#[derive(Debug, Clone)]
pub struct BillingWriterConfig {
    /// Replication origin that tags the writes (capture drops it).
    pub origin: String,
    /// Column holding a row's last change time; compared with `as_of` and
    /// set to it.
    pub version_column: String,
    /// How long to wait for the origin while another session holds it.
    pub origin_wait: Duration,
}

impl Default for BillingWriterConfig {
    fn default() -> Self {
        BillingWriterConfig {
            origin: DEFAULT_ORIGIN.to_string(),
            version_column: DEFAULT_VERSION_COLUMN.to_string(),
            origin_wait: DEFAULT_ORIGIN_WAIT,
        }
    }
}

/// Why a batch of billing writes was not applied. Nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("table name {table:?} is not of the form schema.table")]
    InvalidTable { table: String },
    #[error("table {table} does not exist in the billing database")]
    UnknownTable { table: String },
    #[error("table {table} has no column {column:?}")]
    UnknownColumn { table: String, column: String },
    #[error(
        "table {table} has no version column {column:?} (set the billing writer's version column)"
    )]
    NoVersionColumn { table: String, column: String },
    #[error("write to {table} names no key columns")]
    NoKey { table: String },
    #[error("column {column:?} of {table} is generated and cannot be written")]
    Generated { table: String, column: String },
    #[error("replication origin {origin:?} stayed in use by another session for {waited:?}")]
    OriginBusy { origin: String, waited: Duration },
    #[error("billing database: {context}")]
    Postgres {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

fn pg(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> BillingError {
    move |source| BillingError::Postgres { context, source }
}

/// The writer's connection and the statements prepared on it.
struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Applies billing writes over one connection.
pub struct BillingWriter {
    url: String,
    config: BillingWriterConfig,
    session: Mutex<Option<Session>>,
    tables: Mutex<HashMap<String, Arc<Table>>>,
}

impl BillingWriter {
    /// Connects to `url` and creates the origin when it does not exist.
    pub async fn connect(url: &str, config: BillingWriterConfig) -> Result<Self, BillingError> {
        let writer = BillingWriter {
            url: url.to_string(),
            config,
            session: Mutex::new(None),
            tables: Mutex::new(HashMap::new()),
        };
        {
            let mut guard = writer.session.lock().await;
            let session = writer.session(&mut guard).await?;
            ensure_origin(&session.client, &writer.config.origin).await?;
        }
        Ok(writer)
    }

    pub fn config(&self) -> &BillingWriterConfig {
        &self.config
    }

    async fn session<'a>(
        &self,
        guard: &'a mut Option<Session>,
    ) -> Result<&'a mut Session, BillingError> {
        if guard.as_ref().is_none_or(|s| s.client.is_closed()) {
            let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(pg("connecting"))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "billing writer connection closed");
                }
            });
            *guard = Some(Session {
                client,
                statements: HashMap::new(),
            });
        }
        Ok(guard.as_mut().expect("session just set"))
    }

    /// Applies `writes` in one transaction and answers one outcome per
    /// write, in input order: `Updated`, `Skipped` (the row is newer than
    /// `as_of`), or `Failed` (no such row, or a value the column refuses).
    /// Every table and column is checked first; on an error nothing of the
    /// batch is written.
    pub async fn write(
        &self,
        writes: &[BillingWrite],
    ) -> Result<Vec<DeliveryOutcome>, BillingError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.session.lock().await;
        let session = self.session(&mut guard).await?;
        let mut plans = Vec::with_capacity(writes.len());
        for w in writes {
            let table = self.table(&session.client, &w.table, w).await?;
            plans.push(self.plan(&table, w)?);
        }
        let started = Instant::now();
        self.acquire_origin(&session.client).await?;
        let result = apply::apply(session, writes, &plans).await;
        let reset = session
            .client
            .batch_execute("SELECT pg_catalog.pg_replication_origin_session_reset()")
            .await;
        if let Err(e) = reset {
            // The origin stays with this session until it ends; end it.
            *guard = None;
            result?;
            return Err(pg("releasing the replication origin")(e));
        }
        let outcomes = result?;
        ::metrics::histogram!(metrics::BILLING_BATCH_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let mut counted: HashMap<(&str, &'static str), u64> = HashMap::new();
        for (w, o) in writes.iter().zip(&outcomes) {
            *counted
                .entry((w.table.as_str(), metrics::outcome_label(o.kind)))
                .or_default() += 1;
        }
        for ((table, outcome), n) in counted {
            ::metrics::counter!(metrics::BILLING_WRITES_TOTAL,
                "table" => table.to_string(),
                "outcome" => outcome)
            .increment(n);
        }
        tracing::debug!(writes = writes.len(), "billing writes committed");
        Ok(outcomes)
    }

    async fn acquire_origin(&self, client: &Client) -> Result<(), BillingError> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(5);
        loop {
            let r = client
                .execute(
                    "SELECT pg_catalog.pg_replication_origin_session_setup($1)",
                    &[&self.config.origin],
                )
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                    if started.elapsed() >= self.config.origin_wait {
                        return Err(BillingError::OriginBusy {
                            origin: self.config.origin.clone(),
                            waited: started.elapsed(),
                        });
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                    ensure_origin(client, &self.config.origin).await?;
                }
                Err(e) => return Err(pg("setting the replication origin")(e)),
            }
        }
    }
}

async fn ensure_origin(client: &Client, origin: &str) -> Result<(), BillingError> {
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_replication_origin_oid($1) IS NOT NULL",
            &[&origin],
        )
        .await
        .map_err(pg("looking up the replication origin"))?;
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    match client
        .execute(
            "SELECT pg_catalog.pg_replication_origin_create($1)",
            &[&origin],
        )
        .await
    {
        Ok(_) => {
            tracing::info!(origin, "created replication origin");
            Ok(())
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(()),
        Err(e) => Err(pg("creating the replication origin")(e)),
    }
}
