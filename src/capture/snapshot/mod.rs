//! Snapshots: existing rows as `op: "r"` events, consistent with the stream.
//!
//! ```text
//!  initial:      CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT ─► SET TRANSACTION SNAPSHOT
//!                   ─► COPY each table ─► Kafka ─► extsync.capture_snapshots = done
//!                   ─► stream from the slot's consistent point (no gap, no overlap)
//!  incremental:  low watermark ─► SELECT chunk by key ─► high watermark    (DBLog)
//!                   stream: rows whose last change the chunk's snapshot missed
//!                   drop from the chunk (see `window`); the rest is emitted at
//!                   the high mark, in stream order
//! ```
//!
//! Progress is kept per table in `extsync.capture_snapshots`, so a crash
//! resumes: finished tables are not copied again, unfinished ones continue
//! incrementally from their last acknowledged chunk while streaming runs.
//! An on-demand re-snapshot is a logical message on the captured database:
//! `SELECT pg_logical_emit_message(true, 'extsync.snapshot', 'public.accounts,public.contacts')`.
//!
//! Here: the table catalog, the context the snapshots share and the progress
//! table; [`initial`] and [`incremental`] are the two kinds, and `copy`
//! reads `COPY` text rows.

mod copy;
mod incremental;
mod initial;

use std::sync::Arc;

use tokio_postgres::Client;

use super::error::CaptureError;
use super::producer::CaptureProducer;
use super::relations::{Relations, Table};
use super::setup::{CapturedTable, STATE_SCHEMA, Settings};
use super::toast::ToastCache;
use crate::sql::quote_ident;

pub use incremental::{Chunk, incremental, parse_watermark};
pub use initial::initial;

/// Prefix of the logical messages that request a re-snapshot.
pub const REQUEST_PREFIX: &str = "extsync.snapshot";
/// Prefix of the watermark messages of incremental snapshots.
pub const WATERMARK_PREFIX: &str = "extsync.watermark";
/// Rows per incremental chunk.
pub const CHUNK_ROWS: i64 = 4096;

/// Builds a [`Table`] from the catalog, with the primary key (or replica
/// identity) as key columns.
pub async fn catalog_table(
    sql: &Client,
    relations: &mut Relations,
    t: &CapturedTable,
) -> Result<Table, CaptureError> {
    let rows = sql
        .query(
            "SELECT a.attname::text, a.atttypid, \
                    COALESCE(a.attnum = ANY(pk.indkey), false) \
             FROM pg_attribute a \
             LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&t.oid],
        )
        .await
        .map_err(|e| CaptureError::sql("reading table columns", e))?;
    let cols: Vec<(String, u32, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let oids: Vec<u32> = cols.iter().map(|c| c.1).collect();
    relations.types.resolve(sql, &oids).await?;
    Ok(relations.build(t.oid, t.schema.clone(), t.name.clone(), cols))
}

fn column_list(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything a snapshot needs to produce events.
#[derive(Clone)]
pub struct SnapshotContext {
    pub settings: Arc<Settings>,
    pub database: Arc<str>,
    pub producer: Arc<CaptureProducer>,
    pub toast: ToastCache,
}

/// Records tables as waiting for a snapshot (kept across restarts).
pub async fn mark_pending(
    state: &Client,
    slot: &str,
    tables: &[String],
) -> Result<(), CaptureError> {
    state
        .execute(
            &format!(
                "INSERT INTO {STATE_SCHEMA}.capture_snapshots (slot_name, table_name, status) \
                 SELECT $1, t, 'pending' FROM unnest($2::text[]) t \
                 ON CONFLICT (slot_name, table_name) DO UPDATE SET status = 'pending', last_key = NULL, rows = 0, updated_at = now()"
            ),
            &[&slot, &tables],
        )
        .await
        .map_err(|e| CaptureError::sql("recording snapshot requests", e))?;
    Ok(())
}

async fn mark_done(state: &Client, slot: &str, table: &str, rows: i64) -> Result<(), CaptureError> {
    state
        .execute(
            &format!(
                "INSERT INTO {STATE_SCHEMA}.capture_snapshots (slot_name, table_name, status, rows) VALUES ($1, $2, 'done', $3) \
                 ON CONFLICT (slot_name, table_name) DO UPDATE SET status = 'done', rows = EXCLUDED.rows, last_key = NULL, updated_at = now()"
            ),
            &[&slot, &table, &rows],
        )
        .await
        .map_err(|e| CaptureError::sql("recording snapshot progress", e))?;
    Ok(())
}

/// Snapshot status of the tables of one slot: `(table, status, last_key)`.
pub async fn progress(
    state: &Client,
    slot: &str,
) -> Result<Vec<(String, String, Option<Vec<String>>)>, CaptureError> {
    Ok(state
        .query(
            &format!("SELECT table_name, status, last_key FROM {STATE_SCHEMA}.capture_snapshots WHERE slot_name = $1"),
            &[&slot],
        )
        .await
        .map_err(|e| CaptureError::sql("reading snapshot progress", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
