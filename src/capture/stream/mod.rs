//! The streaming loop: replication events in, Kafka events out, acknowledged
//! LSN back to PostgreSQL.
//!
//! ```text
//!  ReplicationClient ─► Begin ─► [Origin] ─► Relation/Insert/Update/Delete/Truncate ─► Commit
//!        │                drop/tag own writes        │ envelope + key + headers    │ seal batch
//!        │                                           ▼                             ▼
//!        └◄── update_applied_lsn(acked) ◄── Acks ◄── CaptureProducer ──► <prefix>.cdc.<schema>.<table>
//! ```
//!
//! Events are produced as they are decoded, so a huge transaction never sits
//! in memory; its LSN is acknowledged once Kafka has every event of it.
//!
//! `transaction` frames a transaction's events, `row` turns each row change
//! into events, `messages` follows the logical messages (heartbeats,
//! snapshot requests, watermarks).

mod messages;
mod row;
mod transaction;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::envelope::{self, Op};
use super::error::CaptureError;
use super::metrics as m;
use super::pgoutput::{self, Message};
use super::producer::CaptureProducer;
use super::relations::{Relations, Table};
use super::setup::Settings;
use super::snapshot::Chunk;
use super::toast::ToastCache;
use super::walsender::WalEvent;
use super::window::Windows;
use crate::config::OwnWrites;
use transaction::Tx;

/// A snapshot request seen in the stream: tables, and the batch held until
/// the request is recorded.
pub type SnapshotRequest = (Vec<String>, Option<u64>);

/// Reusable encoding buffers.
#[derive(Default)]
struct Scratch {
    key: Vec<u8>,
    old_key: Vec<u8>,
    before: Vec<u8>,
    after: Vec<u8>,
    payload: Vec<u8>,
    idem: String,
    unavailable: Vec<usize>,
    filled: Vec<(usize, Arc<[u8]>)>,
}

/// Wall-clock milliseconds for `ts_ms`, read from the system every 256
/// events instead of every event (the hot path is a few µs per event).
#[derive(Default)]
struct Clock {
    ms: i64,
    uses: u32,
}

impl Clock {
    fn now_ms(&mut self) -> i64 {
        if self.uses.is_multiple_of(256) {
            self.ms = envelope::now_ms();
        }
        self.uses = self.uses.wrapping_add(1);
        self.ms
    }
}

/// State of one replication session.
pub struct Stream {
    settings: Arc<Settings>,
    database: Arc<str>,
    sql: Client,
    producer: Arc<CaptureProducer>,
    relations: Relations,
    toast: ToastCache,
    tx: Option<Tx>,
    windows: Windows,
    chunks: mpsc::Receiver<Chunk>,
    ready_chunks: HashMap<u64, Chunk>,
    requests: mpsc::UnboundedSender<SnapshotRequest>,
    scratch: Scratch,
    tx_topic: String,
    counted: u64,
    clock: Clock,
    emitted_txs: u64,
    dropped_txs: u64,
}

impl Stream {
    pub fn new(
        settings: Arc<Settings>,
        database: Arc<str>,
        sql: Client,
        producer: Arc<CaptureProducer>,
        toast: ToastCache,
        chunks: mpsc::Receiver<Chunk>,
        requests: mpsc::UnboundedSender<SnapshotRequest>,
    ) -> Self {
        Self {
            relations: Relations::new(settings.topics.clone()),
            tx_topic: settings.topics.cdc_transactions(),
            settings,
            database,
            sql,
            producer,
            toast,
            tx: None,
            windows: Windows::default(),
            chunks,
            ready_chunks: HashMap::new(),
            requests,
            scratch: Scratch::default(),
            counted: 0,
            clock: Clock::default(),
            emitted_txs: 0,
            dropped_txs: 0,
        }
    }

    /// Tracks changes to `table` (`schema.table`) for its incremental snapshot.
    pub fn track_snapshot(&mut self, table: &str) {
        self.windows.open(table);
    }

    /// Handles one replication event.
    pub async fn handle(&mut self, ev: WalEvent) -> Result<(), CaptureError> {
        match ev {
            WalEvent::XLogData { wal_start, data } => self.data(wal_start, data).await,
            WalEvent::KeepAlive { wal_end } => {
                if self.tx.is_none() {
                    self.producer.acks().mark(wal_end);
                }
                Ok(())
            }
        }
    }

    /// Flushes the local event counter into the metric.
    pub fn flush_metrics(&mut self) {
        if self.counted > 0 {
            metrics::counter!(m::EVENTS_TOTAL).increment(self.counted);
            self.counted = 0;
        }
        if self.emitted_txs > 0 {
            metrics::counter!(m::TRANSACTIONS_TOTAL, "outcome" => "emitted")
                .increment(self.emitted_txs);
            self.emitted_txs = 0;
        }
        if self.dropped_txs > 0 {
            metrics::counter!(m::TRANSACTIONS_TOTAL, "outcome" => "dropped_own_write")
                .increment(self.dropped_txs);
            self.dropped_txs = 0;
        }
    }

    async fn data(&mut self, lsn: u64, data: Bytes) -> Result<(), CaptureError> {
        match pgoutput::decode(data)? {
            Message::Origin { name, .. } => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.skip =
                        name == self.settings.origin && self.settings.own_writes == OwnWrites::Drop;
                    tx.origin = Some(name);
                }
            }
            Message::Relation(body) => {
                self.relations.apply(&self.sql, body).await?;
            }
            Message::Insert { rel, new } => {
                let t = self.table(rel, "Insert")?;
                self.change(lsn, &t, Op::Create, None, Some(&new)).await?;
            }
            Message::Update { rel, old, new } => {
                let t = self.table(rel, "Update")?;
                self.change(
                    lsn,
                    &t,
                    Op::Update,
                    old.as_ref().map(|(k, t)| (*k, t)),
                    Some(&new),
                )
                .await?;
            }
            Message::Delete { rel, old } => {
                let t = self.table(rel, "Delete")?;
                self.change(lsn, &t, Op::Delete, Some((old.0, &old.1)), None)
                    .await?;
            }
            Message::Truncate { rels, .. } => {
                for rel in rels {
                    let t = self.table(rel, "Truncate")?;
                    self.change(lsn, &t, Op::Truncate, None, None).await?;
                }
            }
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content,
            } => self.message(transactional, lsn, &prefix, content).await?,
            Message::Begin {
                final_lsn,
                commit_time_us,
                xid,
            } => self.begin(final_lsn, xid, commit_time_us),
            Message::Commit { end_lsn, .. } => self.commit(end_lsn).await?,
            Message::Type { .. } => {}
            Message::Unknown(tag) => {
                tracing::debug!(tag = %(tag as char), "ignoring pgoutput message")
            }
        }
        Ok(())
    }

    fn table(&self, rel: u32, kind: &'static str) -> Result<Arc<Table>, CaptureError> {
        self.relations
            .get(rel)
            .cloned()
            .ok_or(CaptureError::UnknownRelation(kind, rel))
    }
}
