//! Transactions in the stream: `Begin` opens an acknowledgement batch that
//! every event of the transaction goes into, `Commit` seals it with the
//! commit's end LSN, acknowledged to PostgreSQL once Kafka has the batch.
//!
//! ```text
//!  Begin ─► Tx (batch, xid, commit time) ─► [BEGIN marker] ─► row events ─► [END marker + counts] ─► Commit: seal batch
//! ```
//!
//! The markers go to the transaction topic when transaction events are on;
//! a transaction the origin filter drops still seals its batch.

use super::Scratch;
use super::Stream;
use crate::capture::envelope::{self, SnapshotMark, Source};
use crate::capture::error::CaptureError;
use crate::capture::producer::{CaptureProducer, Outgoing};
use crate::capture::relations::Table;

/// The transaction being streamed.
pub(super) struct Tx {
    pub(super) batch: u64,
    pub(super) xid: u32,
    /// Commit time, µs since the Unix epoch.
    pub(super) commit_us: i64,
    pub(super) origin: Option<String>,
    pub(super) skip: bool,
    pub(super) seq: u64,
    pub(super) lsn_text: String,
    pub(super) id: String,
    /// `{"id":"<xid>:<lsn>"}`: the key of transaction markers.
    pub(super) key: String,
    pub(super) begun: bool,
    pub(super) counts: Vec<(String, u64)>,
}

impl Stream {
    /// Opens transaction `xid`, which commits at `final_lsn`.
    pub(super) fn begin(&mut self, final_lsn: u64, xid: u32, commit_time_us: i64) {
        // A new transaction reads the clock again.
        self.clock.uses = 0;
        self.tx = Some(Tx {
            batch: self.producer.acks().open(),
            xid,
            commit_us: commit_time_us + envelope::PG_EPOCH_OFFSET_US,
            origin: None,
            skip: false,
            seq: 0,
            lsn_text: envelope::lsn_text(final_lsn),
            id: format!("{xid}:{final_lsn}"),
            key: format!("{{\"id\":\"{xid}:{final_lsn}\"}}"),
            begun: false,
            counts: Vec::new(),
        });
    }

    /// Ends the transaction: its END marker, and its batch sealed with `end_lsn`.
    pub(super) async fn commit(&mut self, end_lsn: u64) -> Result<(), CaptureError> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        if tx.begun && self.settings.transaction_events {
            send_tx_marker(
                &self.producer,
                &self.tx_topic,
                &mut self.scratch,
                &tx,
                false,
            )
            .await?;
        }
        if tx.skip {
            self.dropped_txs += 1;
        } else {
            self.emitted_txs += 1;
        }
        self.producer.acks().seal(tx.batch, Some(end_lsn));
        if self.counted >= 10_000 {
            self.flush_metrics();
        }
        Ok(())
    }
}

impl Tx {
    /// Numbers the transaction's next event and, with transaction events,
    /// counts it for its table.
    pub(super) fn count_event(&mut self, table: &Table, per_table: bool) {
        self.seq += 1;
        if per_table {
            let q = table.qualified();
            match self.counts.iter_mut().find(|(n, _)| *n == q) {
                Some((_, c)) => *c += 1,
                None => self.counts.push((q, 1)),
            }
        }
    }

    /// The `source` of a change of `table` in this transaction.
    pub(super) fn source<'a>(
        &'a self,
        pipeline: &'a str,
        db: &'a str,
        table: &'a Table,
        lsn: u64,
    ) -> Source<'a> {
        Source {
            name: pipeline,
            db,
            schema: &table.schema,
            table: &table.name,
            ts_us: self.commit_us,
            tx_id: Some(self.xid),
            lsn,
            snapshot: SnapshotMark::False,
            origin: self.origin.as_deref(),
        }
    }

    /// An event of this transaction for the producer.
    pub(super) fn outgoing<'a>(
        &'a self,
        topic: &'a str,
        key: Option<&'a [u8]>,
        payload: &'a [u8],
        idempotency_key: &'a str,
    ) -> Outgoing<'a> {
        Outgoing {
            topic,
            key,
            payload,
            commit_lsn: &self.lsn_text,
            xid: Some(self.xid),
            idempotency_key,
        }
    }
}

/// Sends a transaction's `BEGIN` or `END` marker to the transaction topic.
pub(super) async fn send_tx_marker(
    producer: &CaptureProducer,
    topic: &str,
    s: &mut Scratch,
    tx: &Tx,
    begin: bool,
) -> Result<(), CaptureError> {
    let counts: &[(String, u64)] = if begin { &[] } else { &tx.counts };
    s.payload.clear();
    envelope::write_tx_marker(&mut s.payload, begin, &tx.id, tx.commit_us / 1000, counts);
    s.idem.clear();
    s.idem.push_str(&tx.lsn_text);
    s.idem.push_str(if begin { "/begin" } else { "/end" });
    let event = tx.outgoing(topic, Some(tx.key.as_bytes()), &s.payload, &s.idem);
    producer.send(tx.batch, event).await
}
