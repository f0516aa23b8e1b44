//! extsync's own durable state in the billing database, schema `extsync`:
//! polling cursors, emitted versions, stream positions, sync status. The
//! schema is created and migrated at start (SQL files in `migrations/`).
//!
//! ```text
//!  ingest / processor / control plane ──► store ──► Postgres schema `extsync`
//! ```

use tokio_postgres::Client;

mod db;
pub(crate) use db::connect_as;
pub use db::{Db, REOPENED_TOTAL};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory-lock key serializing changes to schema `extsync` between
/// processes and stages (capture takes it too).
pub const MIGRATION_LOCK: i64 = 0x6578_7473_796e_6301;

/// Errors reaching or migrating the state database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connecting to PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("migrating schema extsync: {0}")]
    Migrate(#[from] refinery::Error),
}

/// Connects to `url` and drives the connection in a background task.
pub async fn connect(url: &str) -> Result<Client, StoreError> {
    db::connect_as(url, "migrations")
        .await
        .map_err(StoreError::Connect)
}

/// Migrates schema `extsync` over a connection of its own, then opens the
/// shared connection that `role` (its name in `pg_stat_activity`) uses.
pub async fn open(url: &str, role: &'static str) -> Result<Db, StoreError> {
    let mut first = connect(url).await?;
    migrate(&mut first).await?;
    drop(first);
    Db::connect(url, role).await.map_err(StoreError::Connect)
}

/// Creates schema `extsync` and applies pending migrations, one process at a time.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = match client
        .batch_execute("CREATE SCHEMA IF NOT EXISTS extsync")
        .await
    {
        Ok(()) => embedded::migrations::runner()
            .set_migration_table_name("extsync.schema_history")
            .run_async(client)
            .await
            .map(|_| ())
            .map_err(StoreError::from),
        Err(e) => Err(StoreError::from(e)),
    };
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result?;
    Ok(())
}
