//! Incremental snapshots (DBLog): a table read chunk by chunk by key
//! between a low and a high watermark written to the WAL, while streaming
//! runs; the stream drops chunk rows it has seen change since and emits the
//! rest at the high watermark.

use std::sync::Arc;

use futures::StreamExt;
use tokio_postgres::Client;

use super::super::error::CaptureError;
use super::super::pgoutput::Cell;
use super::super::relations::{self, Relations, Table};
use super::super::setup::{CapturedTable, STATE_SCHEMA};
use super::super::window::Visibility;
use super::copy::CopyRows;
use super::{CHUNK_ROWS, SnapshotContext, WATERMARK_PREFIX, catalog_table, column_list, mark_done};
use crate::sql::{quote_ident, quote_literal};

/// One incremental chunk, handed to the stream before its high watermark.
pub struct Chunk {
    pub id: u64,
    pub table: String,
    pub topic: String,
    /// `(key JSON, event payload without source LSN)`: the stream writes the envelope.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    pub schema: String,
    pub name: String,
    /// The transactions the chunk's snapshot saw.
    pub visibility: Visibility,
    /// The table's last chunk.
    pub last: bool,
    pub done: tokio::sync::oneshot::Sender<u64>,
}

impl Chunk {
    /// Chunk `id` of `t` with `rows`, and the receiver of the batch the
    /// stream emits them in.
    fn new(
        id: u64,
        table: &Table,
        t: &CapturedTable,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        visibility: Visibility,
    ) -> (Chunk, tokio::sync::oneshot::Receiver<u64>) {
        let (done, answer) = tokio::sync::oneshot::channel();
        let last = (rows.len() as u64) < CHUNK_ROWS as u64;
        let chunk = Chunk {
            id,
            table: t.qualified(),
            topic: table.topic.clone(),
            rows,
            schema: table.schema.clone(),
            name: table.name.clone(),
            visibility,
            last,
            done,
        };
        (chunk, answer)
    }
}

/// Text of a watermark message: `<slot>|low|<id>|<table>`.
pub fn watermark(slot: &str, high: bool, id: u64, table: &str) -> String {
    format!("{slot}|{}|{id}|{table}", if high { "high" } else { "low" })
}

/// Parses a watermark of this slot: `(high, id, table)`.
pub fn parse_watermark<'a>(slot: &str, content: &'a str) -> Option<(bool, u64, &'a str)> {
    let mut parts = content.splitn(4, '|');
    if parts.next()? != slot {
        return None;
    }
    let high = match parts.next()? {
        "low" => false,
        "high" => true,
        _ => return None,
    };
    Some((high, parts.next()?.parse().ok()?, parts.next()?))
}

/// Runs the incremental snapshot of one table to completion: chunks by
/// primary key between watermarks, progress saved after each acknowledged
/// chunk.
pub async fn incremental(
    ctx: &SnapshotContext,
    sql: &Client,
    relations: &mut Relations,
    t: &CapturedTable,
    mut last_key: Option<Vec<String>>,
    chunks: &tokio::sync::mpsc::Sender<Chunk>,
    next_id: &mut u64,
) -> Result<u64, CaptureError> {
    let table = Arc::new(catalog_table(sql, relations, t).await?);
    if table.key_columns.is_empty() {
        return Err(CaptureError::Snapshot {
            table: t.qualified(),
            message: "an incremental snapshot needs a primary key".into(),
        });
    }
    let key_list = key_list(&table);
    let mut total = 0u64;
    loop {
        *next_id += 1;
        let id = *next_id;
        emit(
            sql,
            &watermark(&ctx.settings.slot, false, id, &t.qualified()),
        )
        .await?;
        let copy = chunk_query(&table, t, &key_list, last_key.as_deref());
        let visibility = begin_chunk_snapshot(sql, t).await?;
        let (rows, last) = read_chunk(ctx, sql, &table, &copy).await?;
        sql.batch_execute("COMMIT")
            .await
            .map_err(|e| CaptureError::sql("ending a snapshot chunk", e))?;
        let n = rows.len() as u64;
        let (chunk, done) = Chunk::new(id, &table, t, rows, visibility);
        hand_chunk_to_stream(ctx, sql, t, chunks, chunk, done).await?;
        total += n;
        if n < CHUNK_ROWS as u64 {
            mark_done(sql, &ctx.settings.slot, &t.qualified(), total as i64).await?;
            metrics::counter!(super::super::metrics::SNAPSHOT_ROWS_TOTAL).increment(total);
            tracing::info!(table = %t.qualified(), rows = total, "incremental snapshot of table done");
            return Ok(total);
        }
        last_key = last;
        save_progress(sql, &ctx.settings.slot, t, &last_key, n).await?;
    }
}

/// The table's key columns, quoted and comma-separated.
fn key_list(table: &Table) -> String {
    let keys: Vec<String> = table
        .key_columns
        .iter()
        .map(|&i| quote_ident(&table.columns[i].name))
        .collect();
    keys.join(", ")
}

/// The `COPY` of the chunk after `last_key`: the next [`CHUNK_ROWS`] rows in
/// key order.
fn chunk_query(
    table: &Table,
    t: &CapturedTable,
    key_list: &str,
    last_key: Option<&[String]>,
) -> String {
    let filter = match last_key {
        Some(k) => format!(
            "WHERE ({key_list}) > ({})",
            k.iter()
                .map(|v| quote_literal(v))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    format!(
        "COPY (SELECT {} FROM {} {filter} ORDER BY {key_list} LIMIT {CHUNK_ROWS}) TO STDOUT",
        column_list(table),
        t.quoted()
    )
}

/// Opens the chunk's snapshot and tells which transactions it saw.
async fn begin_chunk_snapshot(sql: &Client, t: &CapturedTable) -> Result<Visibility, CaptureError> {
    sql.simple_query(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_current_snapshot()::text",
    )
    .await
    .map_err(|e| CaptureError::sql("starting a snapshot chunk", e))?
    .iter()
    .find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(Visibility::parse),
        _ => None,
    })
    .ok_or_else(|| CaptureError::Snapshot {
        table: t.qualified(),
        message: "pg_current_snapshot() gave no readable snapshot".into(),
    })
}

/// The rows of one chunk as `(key JSON, row JSON)`, and the key of its last
/// row (where the next chunk starts).
type ChunkRows = (Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<String>>);

/// Reads one chunk with `copy`, inside the chunk's snapshot.
async fn read_chunk(
    ctx: &SnapshotContext,
    sql: &Client,
    table: &Table,
    copy: &str,
) -> Result<ChunkRows, CaptureError> {
    let stream = sql
        .copy_out(copy)
        .await
        .map_err(|e| CaptureError::sql("reading a snapshot chunk", e))?;
    let mut stream = std::pin::pin!(stream);
    let mut parser = CopyRows::default();
    let (mut cells, mut rows) = (Vec::new(), Vec::new());
    let mut last: Option<Vec<String>> = None;
    while let Some(data) = stream.next().await {
        let data = data.map_err(|e| CaptureError::sql("reading a snapshot chunk", e))?;
        parser.feed(data, &mut cells, |cells| {
            let mut key = Vec::new();
            let mut row = Vec::new();
            relations::write_key(&mut key, table, cells, ctx.settings.numeric);
            relations::write_row(
                &mut row,
                table,
                cells,
                ctx.settings.numeric,
                &mut |_| None,
                &mut Vec::new(),
            );
            last = Some(key_values(table, cells));
            rows.push((key, row));
        });
    }
    Ok((rows, last))
}

/// The text of a row's key columns, as `last_key` keeps them.
fn key_values(table: &Table, cells: &[Cell]) -> Vec<String> {
    table
        .key_columns
        .iter()
        .map(|&i| match &cells[i] {
            Cell::Text(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        })
        .collect()
}

/// Hands the chunk to the stream, writes its high watermark and waits until
/// Kafka acknowledged the batch the stream emitted the chunk's rows in
/// (`done` answers it).
async fn hand_chunk_to_stream(
    ctx: &SnapshotContext,
    sql: &Client,
    t: &CapturedTable,
    chunks: &tokio::sync::mpsc::Sender<Chunk>,
    chunk: Chunk,
    done: tokio::sync::oneshot::Receiver<u64>,
) -> Result<(), CaptureError> {
    let stopped = || CaptureError::Snapshot {
        table: t.qualified(),
        message: "the stream stopped".into(),
    };
    let id = chunk.id;
    chunks.send(chunk).await.map_err(|_| stopped())?;
    emit(
        sql,
        &watermark(&ctx.settings.slot, true, id, &t.qualified()),
    )
    .await?;
    // The stream answers with the batch that carries the chunk's rows.
    let batch = done.await.map_err(|_| stopped())?;
    ctx.producer.wait_batch(batch).await
}

/// Records an acknowledged chunk: where the next one starts, and its rows.
async fn save_progress(
    sql: &Client,
    slot: &str,
    t: &CapturedTable,
    last_key: &Option<Vec<String>>,
    n: u64,
) -> Result<(), CaptureError> {
    sql.execute(
        &format!(
            "UPDATE {STATE_SCHEMA}.capture_snapshots SET last_key = $3, rows = rows + $4, updated_at = now() \
             WHERE slot_name = $1 AND table_name = $2"
        ),
        &[&slot, &t.qualified(), last_key, &(n as i64)],
    )
    .await
    .map_err(|e| CaptureError::sql("recording snapshot progress", e))?;
    Ok(())
}

async fn emit(sql: &Client, content: &str) -> Result<(), CaptureError> {
    sql.execute(
        "SELECT pg_logical_emit_message(true, $1, $2)",
        &[&WATERMARK_PREFIX, &content],
    )
    .await
    .map_err(|e| CaptureError::sql("writing a snapshot watermark", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_roundtrip_and_ignore_other_slots() {
        let w = watermark("s1", true, 7, "public.a");
        assert_eq!(parse_watermark("s1", &w), Some((true, 7, "public.a")));
        assert_eq!(parse_watermark("s2", &w), None);
    }
}
