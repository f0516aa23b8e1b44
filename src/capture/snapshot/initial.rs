//! The initial snapshot: every captured table copied in the slot's exported
//! snapshot, as `op: "r"` events, before streaming starts from the slot's
//! consistent point.

use futures::StreamExt;
use tokio_postgres::Client;

use super::super::envelope::{self, Envelope, Op, SnapshotMark, Source};
use super::super::error::CaptureError;
use super::super::pgoutput::Cell;
use super::super::producer::Outgoing;
use super::super::relations::{self, Relations, Table};
use super::super::setup::CapturedTable;
use super::copy::CopyRows;
use super::{SnapshotContext, catalog_table, column_list, mark_done};
use crate::sql::quote_literal;

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
    metrics::counter!(super::super::metrics::SNAPSHOT_ROWS_TOTAL).increment(rows);
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
    buffers: ReadBuffers,
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
        let has_key = self
            .buffers
            .encode(ctx, table, cells, at.lsn, SnapshotMark::True, now);
        let ReadBuffers { key, payload, .. } = &self.buffers;
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
            key
        } else {
            payload
        }));
        self.pending.push((
            if has_key { key.clone() } else { Vec::new() },
            payload.clone(),
            idem.clone(),
        ));
    }
}

/// The buffers one read event is encoded in, reused row after row.
#[derive(Default)]
struct ReadBuffers {
    key: Vec<u8>,
    row: Vec<u8>,
    payload: Vec<u8>,
}

impl ReadBuffers {
    /// Encodes one snapshot row into `key` and `payload`; whether the
    /// table has a key.
    fn encode(
        &mut self,
        ctx: &SnapshotContext,
        table: &Table,
        cells: &[Cell],
        lsn: u64,
        mark: SnapshotMark,
        now: i64,
    ) -> bool {
        let ReadBuffers { key, row, payload } = self;
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
}
