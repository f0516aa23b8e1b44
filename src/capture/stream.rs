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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::envelope::{self, Envelope, Op, SnapshotMark, Source, TxRef};
use super::error::CaptureError;
use super::heartbeat;
use super::metrics as m;
use super::pgoutput::{self, Cell, Message, OldKind, Tuple};
use super::producer::{CaptureProducer, Outgoing};
use super::relations::{self, Relations, Table};
use super::setup::Settings;
use super::snapshot::{self, Chunk};
use super::toast::ToastCache;
use super::walsender::WalEvent;
use super::window::Windows;
use crate::config::{NumericEncoding, OwnWrites};

/// A snapshot request seen in the stream: tables, and the batch held until
/// the request is recorded.
pub type SnapshotRequest = (Vec<String>, Option<u64>);

struct Tx {
    batch: u64,
    xid: u32,
    /// Commit time, µs since the Unix epoch.
    commit_us: i64,
    origin: Option<String>,
    skip: bool,
    seq: u64,
    lsn_text: String,
    id: String,
    /// `{"id":"<xid>:<lsn>"}`: the key of transaction markers.
    key: String,
    begun: bool,
    counts: Vec<(String, u64)>,
}

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

    fn begin(&mut self, final_lsn: u64, xid: u32, commit_time_us: i64) {
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

    async fn commit(&mut self, end_lsn: u64) -> Result<(), CaptureError> {
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

    async fn message(
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

    /// Encodes and produces one change.
    async fn change(
        &mut self,
        lsn: u64,
        table: &Table,
        op: Op,
        old: Option<(OldKind, &Tuple)>,
        new: Option<&Tuple>,
    ) -> Result<(), CaptureError> {
        let change = RowChange {
            table,
            op,
            old,
            new,
        };
        let numeric = self.settings.numeric;
        let keys = self.scratch.write_keys(&change, numeric);
        self.track_in_windows(&change, keys);
        let Some(tx) = self.tx.as_mut() else {
            return Ok(());
        };
        if tx.skip {
            return Ok(());
        }
        let s = &mut self.scratch;
        let images = s.write_images(&change, keys, numeric, &self.toast);
        s.update_toast_cache(&change, keys, numeric, &self.toast);
        let transaction_events = self.settings.transaction_events;
        if transaction_events && !tx.begun {
            tx.begun = true;
            send_tx_marker(&self.producer, &self.tx_topic, s, tx, true).await?;
        }

        let unavailable: Vec<&str> = s
            .unavailable
            .iter()
            .map(|&i| table.columns[i].name.as_str())
            .collect();
        let events: &[(Op, bool)] = if keys.key_changed {
            &[(Op::Delete, true), (Op::Create, false)]
        } else {
            &[(op, false)]
        };
        for &(op, old_side) in events {
            tx.count_event(table, transaction_events);
            s.payload.clear();
            let (before, after) = images.of_event(&s.before, &s.after, keys, old_side);
            Envelope {
                op,
                before,
                after,
                source: tx.source(&self.settings.pipeline, &self.database, table, lsn),
                unavailable: &unavailable,
                transaction: transaction_events.then_some(TxRef {
                    id: &tx.id,
                    total_order: tx.seq,
                }),
                ts_ms: self.clock.now_ms(),
            }
            .write(&mut s.payload);
            write_event_idempotency_key(&mut s.idem, &tx.lsn_text, tx.seq);
            let key = keys.of_event(&s.key, &s.old_key, old_side);
            let event = tx.outgoing(&table.topic, key, &s.payload, &s.idem);
            self.producer.send(tx.batch, event).await?;
            self.counted += 1;
        }
        Ok(())
    }

    /// Tells the incremental-snapshot windows which key the transaction
    /// changed (both keys of a key change), or that it truncated the table.
    fn track_in_windows(&mut self, change: &RowChange<'_>, keys: Keys) {
        if self.windows.is_empty() {
            return;
        }
        let Some(xid) = self.tx.as_ref().map(|t| t.xid) else {
            return;
        };
        let (schema, name) = (&change.table.schema, &change.table.name);
        if keys.has_key {
            self.windows.changed(schema, name, &self.scratch.key, xid);
            if keys.key_changed {
                self.windows
                    .changed(schema, name, &self.scratch.old_key, xid);
            }
        } else if change.op == Op::Truncate {
            self.windows.truncated(schema, name, xid);
        }
    }
}

/// One decoded row change of a table.
struct RowChange<'a> {
    table: &'a Table,
    op: Op,
    old: Option<(OldKind, &'a Tuple)>,
    new: Option<&'a Tuple>,
}

/// The keys of a row change written into [`Scratch`].
#[derive(Clone, Copy)]
struct Keys {
    /// `Scratch::key` holds the row's key (of the new image, else the old).
    has_key: bool,
    /// An update changed the key; `Scratch::old_key` holds the old one. It
    /// goes out as a delete of the old key and a create of the new one, so
    /// that each key's partition sees its own history.
    key_changed: bool,
}

impl Keys {
    /// The Kafka key of one event of the change: the old key for the delete
    /// of a key change, else the row's key.
    fn of_event<'a>(self, key: &'a [u8], old_key: &'a [u8], old_side: bool) -> Option<&'a [u8]> {
        if old_side {
            Some(old_key)
        } else if self.has_key {
            Some(key)
        } else {
            None
        }
    }
}

/// Which row images of a change [`Scratch`] holds.
#[derive(Clone, Copy)]
struct Images {
    before: bool,
    after: bool,
}

impl Images {
    /// The `(before, after)` of one event of the change: the delete of a key
    /// change carries only the before image, its create only the after image.
    fn of_event<'a>(
        self,
        before: &'a [u8],
        after: &'a [u8],
        keys: Keys,
        old_side: bool,
    ) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        if keys.key_changed {
            if old_side {
                (Some(before), None)
            } else {
                (None, Some(after))
            }
        } else {
            (self.before.then_some(before), self.after.then_some(after))
        }
    }
}

impl Scratch {
    /// Writes the row's key and, for an update, the key of its old image.
    fn write_keys(&mut self, change: &RowChange<'_>, numeric: NumericEncoding) -> Keys {
        self.key.clear();
        self.old_key.clear();
        let table = change.table;
        let has_key = match (change.new, change.old) {
            (Some(n), _) => relations::write_key(&mut self.key, table, &n.cells, numeric),
            (None, Some((_, o))) => relations::write_key(&mut self.key, table, &o.cells, numeric),
            _ => false,
        };
        let key_changed = match (change.old, change.op) {
            (Some((_, o)), Op::Update) => {
                relations::write_key(&mut self.old_key, table, &o.cells, numeric)
                    && self.old_key != self.key
            }
            _ => false,
        };
        Keys {
            has_key,
            key_changed,
        }
    }

    /// Writes the before and after images of the change.
    fn write_images(
        &mut self,
        change: &RowChange<'_>,
        keys: Keys,
        numeric: NumericEncoding,
        toast: &ToastCache,
    ) -> Images {
        self.before.clear();
        self.after.clear();
        self.unavailable.clear();
        self.filled.clear();
        let before = self.write_before(change, keys, numeric);
        let after = match change.new {
            Some(n) => {
                self.write_after(change.table, n, keys, numeric, toast);
                true
            }
            None => false,
        };
        Images { before, after }
    }

    /// The before image: the whole old row (REPLICA IDENTITY FULL), or its
    /// key for a delete or a key change; `false` when there is none.
    fn write_before(
        &mut self,
        change: &RowChange<'_>,
        keys: Keys,
        numeric: NumericEncoding,
    ) -> bool {
        let Some((kind, o)) = change.old else {
            return false;
        };
        match kind {
            OldKind::Full => {
                relations::write_row(
                    &mut self.before,
                    change.table,
                    &o.cells,
                    numeric,
                    &mut |_| None,
                    &mut Vec::new(),
                );
                true
            }
            OldKind::Key if change.op == Op::Delete || keys.key_changed => {
                self.before.extend_from_slice(if keys.key_changed {
                    &self.old_key
                } else {
                    &self.key
                });
                true
            }
            OldKind::Key => false,
        }
    }

    /// The after image. Unchanged TOAST cells take the value last seen for
    /// the row (kept in `filled`), else their column goes to `unavailable`.
    fn write_after(
        &mut self,
        table: &Table,
        new: &Tuple,
        keys: Keys,
        numeric: NumericEncoding,
        toast: &ToastCache,
    ) {
        let key = &self.key;
        let filled = &mut self.filled;
        relations::write_row(
            &mut self.after,
            table,
            &new.cells,
            numeric,
            &mut |i| {
                let v = if keys.has_key {
                    toast.lookup(table, key, i)
                } else {
                    None
                };
                if let Some(v) = &v {
                    filled.push((i, v.clone()));
                }
                v
            },
            &mut self.unavailable,
        );
    }

    /// Keeps the TOAST cache in step with the row: the large values of a new
    /// image (and those filled in from the cache) are remembered, a deleted
    /// row is forgotten.
    fn update_toast_cache(
        &self,
        change: &RowChange<'_>,
        keys: Keys,
        numeric: NumericEncoding,
        toast: &ToastCache,
    ) {
        if !keys.has_key {
            return;
        }
        match change.new {
            Some(n) => {
                if !self.filled.is_empty()
                    || toast_sized(&n.cells)
                    || (change.op == Op::Update && toast.entry_count() > 0)
                {
                    toast.remember_with(change.table, &self.key, &n.cells, numeric, &self.filled);
                }
            }
            None => {
                if change.op == Op::Delete && toast.entry_count() > 0 {
                    toast.forget(change.table, &self.key);
                }
            }
        }
    }
}

impl Tx {
    /// Numbers the transaction's next event and, with transaction events,
    /// counts it for its table.
    fn count_event(&mut self, table: &Table, per_table: bool) {
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
    fn source<'a>(
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
    fn outgoing<'a>(
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

/// `<commit LSN>/<event number>`: the idempotency key of a row event.
fn write_event_idempotency_key(idem: &mut String, lsn_text: &str, seq: u64) {
    idem.clear();
    idem.push_str(lsn_text);
    idem.push('/');
    let _ = write!(idem, "{seq}");
}

/// Sends a transaction's `BEGIN` or `END` marker to the transaction topic.
async fn send_tx_marker(
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

fn toast_sized(cells: &[Cell]) -> bool {
    cells
        .iter()
        .any(|c| matches!(c, Cell::Text(b) if b.len() >= super::toast::MIN_CACHED_VALUE_BYTES))
}
