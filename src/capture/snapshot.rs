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

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio_postgres::Client;

use super::envelope::{self, Envelope, Op, SnapshotMark, Source};
use super::error::CaptureError;
use super::pgoutput::Cell;
use super::producer::{CaptureProducer, Outgoing};
use super::relations::{self, Relations, Table};
use super::setup::{CapturedTable, STATE_SCHEMA, Settings};
use super::toast::ToastCache;
use super::window::Visibility;
use crate::sql::{quote_ident, quote_literal};

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

/// Splits COPY text-format output into rows of cells, across chunk borders.
#[derive(Default)]
pub struct CopyRows {
    carry: BytesMut,
}

impl CopyRows {
    /// Feeds one chunk; calls `row` for every complete line.
    pub fn feed(&mut self, chunk: Bytes, cells: &mut Vec<Cell>, mut row: impl FnMut(&[Cell])) {
        let mut data = chunk;
        if !self.carry.is_empty() {
            self.carry.extend_from_slice(&data);
            data = self.carry.split().freeze();
        }
        let mut start = 0;
        while let Some(nl) = memchr(b'\n', &data[start..]) {
            let line = data.slice(start..start + nl);
            split_line(&line, cells);
            row(cells);
            start += nl + 1;
        }
        if start < data.len() {
            self.carry.extend_from_slice(&data[start..]);
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn split_line(line: &Bytes, cells: &mut Vec<Cell>) {
    cells.clear();
    let mut start = 0;
    loop {
        let end = memchr(b'\t', &line[start..]).map_or(line.len(), |i| start + i);
        let field = &line[start..end];
        cells.push(if field == b"\\N" {
            Cell::Null
        } else if field.contains(&b'\\') {
            Cell::Text(Bytes::from(unescape(field)))
        } else {
            Cell::Text(line.slice(start..end))
        });
        if end >= line.len() {
            break;
        }
        start = end + 1;
    }
}

fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'\\' || i + 1 == f.len() {
            out.push(f[i]);
            i += 1;
            continue;
        }
        let c = f[i + 1];
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < f.len() && (b'0'..=b'7').contains(&f[i]) {
                    v = v * 8 + u32::from(f[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u8;
                let mut n = 0;
                while n < 2 && i < f.len() && f[i].is_ascii_hexdigit() {
                    v = v * 16 + (f[i] as char).to_digit(16).unwrap_or(0) as u8;
                    i += 1;
                    n += 1;
                }
                out.push(v);
            }
            other => out.push(other),
        }
    }
    out
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

/// Encodes one snapshot row into `key` and `payload`.
#[allow(clippy::too_many_arguments)]
fn encode_read(
    ctx: &SnapshotContext,
    table: &Table,
    cells: &[Cell],
    lsn: u64,
    mark: SnapshotMark,
    now: i64,
    key: &mut Vec<u8>,
    row: &mut Vec<u8>,
    payload: &mut Vec<u8>,
) -> bool {
    key.clear();
    row.clear();
    payload.clear();
    let has_key = relations::write_key(key, table, cells, ctx.settings.numeric);
    let mut unavailable = Vec::new();
    relations::write_row(
        row,
        table,
        cells,
        ctx.settings.numeric,
        &mut |_| None,
        &mut unavailable,
    );
    if has_key {
        ctx.toast.remember(table, key, cells, ctx.settings.numeric);
    }
    Envelope {
        op: Op::Read,
        before: None,
        after: Some(row),
        source: Source {
            name: &ctx.settings.pipeline,
            db: &ctx.database,
            schema: &table.schema,
            table: &table.name,
            ts_us: now * 1000,
            tx_id: None,
            lsn,
            snapshot: mark,
            origin: None,
        },
        unavailable: &[],
        transaction: None,
        ts_ms: now,
    }
    .write(payload);
    has_key
}

/// Copies every table in `tables` inside the exported snapshot. Each table
/// is marked done only after Kafka acknowledged all of its rows.
pub async fn initial(
    ctx: &SnapshotContext,
    reader: &Client,
    state: &Client,
    relations: &mut Relations,
    tables: &[CapturedTable],
    snapshot_name: &str,
    consistent_point: u64,
) -> Result<u64, CaptureError> {
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {};",
            quote_literal(snapshot_name)
        ))
        .await
        .map_err(|e| CaptureError::sql("importing the slot's snapshot", e))?;
    let at = SnapshotPoint {
        lsn: consistent_point,
        lsn_text: envelope::lsn_text(consistent_point),
    };
    let mut total = 0;
    for t in tables {
        total += copy_table(ctx, reader, state, relations, t, &at).await?;
    }
    reader
        .batch_execute("COMMIT")
        .await
        .map_err(|e| CaptureError::sql("ending the snapshot", e))?;
    Ok(total)
}

/// The slot's consistent point: the LSN every initial snapshot row carries.
struct SnapshotPoint {
    lsn: u64,
    lsn_text: String,
}

/// Copies one table of the initial snapshot to Kafka in a batch of its own
/// and marks it done once Kafka acknowledged the batch.
async fn copy_table(
    ctx: &SnapshotContext,
    reader: &Client,
    state: &Client,
    relations: &mut Relations,
    t: &CapturedTable,
    at: &SnapshotPoint,
) -> Result<u64, CaptureError> {
    let table = catalog_table(reader, relations, t).await?;
    let batch = ctx.producer.acks().open();
    let rows = send_table_rows(ctx, reader, &table, t, batch, at).await?;
    ctx.producer.acks().seal(batch, None);
    ctx.producer.wait_batch(batch).await?;
    mark_done(state, &ctx.settings.slot, &t.qualified(), rows as i64).await?;
    metrics::counter!(super::metrics::SNAPSHOT_ROWS_TOTAL).increment(rows);
    tracing::info!(table = %t.qualified(), rows, "snapshot of table done");
    Ok(rows)
}

/// Streams the table's rows out of `COPY` and sends each as a read event
/// in `batch`; returns how many were sent.
async fn send_table_rows(
    ctx: &SnapshotContext,
    reader: &Client,
    table: &Table,
    t: &CapturedTable,
    batch: u64,
    at: &SnapshotPoint,
) -> Result<u64, CaptureError> {
    let copy = format!(
        "COPY (SELECT {} FROM {}) TO STDOUT",
        column_list(table),
        t.quoted()
    );
    let stream = reader
        .copy_out(&copy)
        .await
        .map_err(|e| CaptureError::sql("copying a table", e))?;
    let mut stream = std::pin::pin!(stream);
    let mut parser = CopyRows::default();
    let mut cells = Vec::new();
    let mut events = ReadEvents::default();
    let mut rows: u64 = 0;
    let now = envelope::now_ms();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CaptureError::sql("copying a table", e))?;
        parser.feed(chunk, &mut cells, |cells| {
            events.encode(ctx, table, cells, at, now);
        });
        for (k, p, i) in events.pending.drain(..) {
            ctx.producer
                .send(
                    batch,
                    Outgoing {
                        topic: &table.topic,
                        key: (!k.is_empty()).then_some(k.as_slice()),
                        payload: &p,
                        commit_lsn: &at.lsn_text,
                        xid: None,
                        idempotency_key: &i,
                    },
                )
                .await?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// The read events of one `COPY` chunk of the initial snapshot, encoded and
/// waiting to be sent, and the buffers they are encoded in.
#[derive(Default)]
struct ReadEvents {
    key: Vec<u8>,
    row: Vec<u8>,
    payload: Vec<u8>,
    idem: String,
    /// `(key or empty, payload, idempotency key)`.
    pending: Vec<(Vec<u8>, Vec<u8>, String)>,
}

impl ReadEvents {
    /// Encodes one row and queues its event. The idempotency key is
    /// `r/<lsn>/<schema.table>/<key>` (the whole payload for a table
    /// without key).
    fn encode(
        &mut self,
        ctx: &SnapshotContext,
        table: &Table,
        cells: &[Cell],
        at: &SnapshotPoint,
        now: i64,
    ) {
        let has_key = encode_read(
            ctx,
            table,
            cells,
            at.lsn,
            SnapshotMark::True,
            now,
            &mut self.key,
            &mut self.row,
            &mut self.payload,
        );
        let idem = &mut self.idem;
        idem.clear();
        idem.push_str("r/");
        idem.push_str(&at.lsn_text);
        idem.push('/');
        idem.push_str(&table.schema);
        idem.push('.');
        idem.push_str(&table.name);
        idem.push('/');
        idem.push_str(&String::from_utf8_lossy(if has_key {
            &self.key
        } else {
            &self.payload
        }));
        self.pending.push((
            if has_key {
                self.key.clone()
            } else {
                Vec::new()
            },
            self.payload.clone(),
            idem.clone(),
        ));
    }
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
        hand_chunk_to_stream(ctx, sql, &table, t, chunks, id, rows, visibility).await?;
        total += n;
        if n < CHUNK_ROWS as u64 {
            mark_done(sql, &ctx.settings.slot, &t.qualified(), total as i64).await?;
            metrics::counter!(super::metrics::SNAPSHOT_ROWS_TOTAL).increment(total);
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
/// Kafka acknowledged the batch the stream emitted the chunk's rows in.
#[allow(clippy::too_many_arguments)]
async fn hand_chunk_to_stream(
    ctx: &SnapshotContext,
    sql: &Client,
    table: &Table,
    t: &CapturedTable,
    chunks: &tokio::sync::mpsc::Sender<Chunk>,
    id: u64,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    visibility: Visibility,
) -> Result<(), CaptureError> {
    let n = rows.len() as u64;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    chunks
        .send(Chunk {
            id,
            table: t.qualified(),
            topic: table.topic.clone(),
            rows,
            schema: table.schema.clone(),
            name: table.name.clone(),
            visibility,
            last: n < CHUNK_ROWS as u64,
            done: done_tx,
        })
        .await
        .map_err(|_| CaptureError::Snapshot {
            table: t.qualified(),
            message: "the stream stopped".into(),
        })?;
    emit(
        sql,
        &watermark(&ctx.settings.slot, true, id, &t.qualified()),
    )
    .await?;
    // The stream answers with the batch that carries the chunk's rows.
    let batch = done_rx.await.map_err(|_| CaptureError::Snapshot {
        table: t.qualified(),
        message: "the stream stopped".into(),
    })?;
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
    fn copy_rows_split_across_chunks_and_unescape() {
        let mut p = CopyRows::default();
        let mut cells = Vec::new();
        let mut seen = Vec::new();
        let mut collect = |c: &[Cell]| {
            seen.push(
                c.iter()
                    .map(|x| match x {
                        Cell::Text(b) => String::from_utf8_lossy(b).into_owned(),
                        Cell::Null => "<null>".into(),
                        _ => "?".into(),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        p.feed(
            Bytes::from_static(b"1\ta\\tb\t\\N\n2\tx"),
            &mut cells,
            &mut collect,
        );
        p.feed(Bytes::from_static(b"y\t\\\\\n"), &mut cells, &mut collect);
        assert_eq!(
            seen,
            vec![vec!["1", "a\tb", "<null>"], vec!["2", "xy", "\\"]]
        );
    }

    #[test]
    fn watermarks_roundtrip_and_ignore_other_slots() {
        let w = watermark("s1", true, 7, "public.a");
        assert_eq!(parse_watermark("s1", &w), Some((true, 7, "public.a")));
        assert_eq!(parse_watermark("s2", &w), None);
    }
}
