//! Logical messages in the stream: heartbeats, snapshot requests and the
//! watermarks of incremental snapshots.
//!
//! ```text
//!  extsync.heartbeat, outside a transaction ─► acknowledge its LSN
//!  extsync.snapshot ─► open the tables' windows, hold the batch ─► snapshot driver
//!  extsync.watermark  low ─► open the table's window
//!                     high ─► the chunk's rows the stream has not overtaken ─► producer
//! ```

use bytes::Bytes;

use super::Stream;
use crate::capture::envelope::{self, Envelope, Op, SnapshotMark, Source};
use crate::capture::error::CaptureError;
use crate::capture::heartbeat;
use crate::capture::metrics as m;
use crate::capture::snapshot;

impl Stream {
    /// Follows one logical message of the stream.
    pub(super) async fn message(
        &mut self,
        transactional: bool,
        lsn: u64,
        prefix: &str,
        content: Bytes,
    ) -> Result<(), CaptureError> {
        match prefix {
            heartbeat::PREFIX if self.tx.is_none() => self.producer.acks().mark(lsn),
            snapshot::WATERMARK_PREFIX if transactional => {
                let text = String::from_utf8_lossy(&content);
                let Some((high, id, table)) = snapshot::parse_watermark(&self.settings.slot, &text)
                else {
                    return Ok(());
                };
                if high {
                    self.emit_chunk(id, lsn).await?;
                } else {
                    // Open since the request or since a resumed stream began.
                    self.windows.open(table);
                }
            }
            snapshot::REQUEST_PREFIX => {
                let tables: Vec<String> = String::from_utf8_lossy(&content)
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect();
                for t in &tables {
                    self.windows.open(t);
                }
                let hold = self.tx.as_ref().map(|t| t.batch);
                if let Some(b) = hold {
                    self.producer.acks().hold(b);
                }
                tracing::info!(tables = tables.len(), "snapshot requested");
                if self.requests.send((tables, hold)).is_err()
                    && let Some(b) = hold
                {
                    self.producer.acks().release(b);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Emits the rows of chunk `id` that are not older than what the stream
    /// already carried.
    async fn emit_chunk(&mut self, id: u64, lsn: u64) -> Result<(), CaptureError> {
        while let Ok(c) = self.chunks.try_recv() {
            self.ready_chunks.insert(c.id, c);
        }
        let (Some(chunk), Some(tx)) = (self.ready_chunks.remove(&id), self.tx.as_ref()) else {
            return Ok(());
        };
        let now = envelope::now_ms();
        let lsn_text = envelope::lsn_text(lsn);
        let mut emitted = 0u64;
        for (key, row) in &chunk.rows {
            if self.windows.stale(&chunk.table, &chunk.visibility, key) {
                continue;
            }
            let s = &mut self.scratch;
            s.payload.clear();
            Envelope {
                op: Op::Read,
                before: None,
                after: Some(row),
                source: Source {
                    name: &self.settings.pipeline,
                    db: &self.database,
                    schema: &chunk.schema,
                    table: &chunk.name,
                    ts_us: now * 1000,
                    tx_id: None,
                    lsn,
                    snapshot: SnapshotMark::Incremental,
                    origin: None,
                },
                unavailable: &[],
                transaction: None,
                ts_ms: now,
            }
            .write(&mut s.payload);
            s.idem.clear();
            s.idem.push_str("r/");
            s.idem.push_str(&lsn_text);
            s.idem.push('/');
            s.idem.push_str(&chunk.table);
            s.idem.push('/');
            s.idem.push_str(&String::from_utf8_lossy(key));
            let event = tx.outgoing(&chunk.topic, Some(key), &s.payload, &s.idem);
            self.producer.send(tx.batch, event).await?;
            emitted += 1;
        }
        metrics::counter!(m::EVENTS_TOTAL, "op" => "r").increment(emitted);
        self.windows
            .settle(&chunk.table, &chunk.visibility, chunk.last);
        let _ = chunk.done.send(tx.batch);
        Ok(())
    }
}
