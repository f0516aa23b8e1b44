//! The Kafka side of capture: an idempotent, acks=all producer whose delivery
//! reports drive the LSN that is acknowledged to PostgreSQL.
//!
//! ```text
//!  stream ──send(batch id)──► librdkafka ──delivery reports──► poll (capture thread) ──► Acks
//!     ▲                                                                   │ batch done, in order
//!     └──────────── acked_lsn ◄───────────────────────────────────────────┘
//! ```
//!
//! A *batch* is one source transaction (or one snapshot table). Events are
//! produced as soon as they are decoded; a batch's LSN becomes acknowledged
//! only once it is sealed (its commit was seen) and every earlier batch and
//! every one of its own events were acknowledged by Kafka. In-flight bytes are
//! bounded: `send` waits for deliveries instead of buffering without limit.
//!
//! Delivery reports are served on the capture thread ([`CaptureProducer::poll`],
//! driven by [`CaptureProducer::serve_deliveries`] and by `send`), and applied
//! to [`Acks`] once per poll rather than once per event.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::error::CaptureError;

/// Header carrying the commit LSN (`X/Y`) of the source transaction.
pub const HEADER_COMMIT_LSN: &str = "extsync.commit_lsn";
/// Header carrying the source transaction id.
pub const HEADER_XID: &str = "extsync.xid";
/// Header carrying a key that is the same every time this change is produced.
pub const HEADER_IDEMPOTENCY_KEY: &str = "extsync.idempotency_key";

#[derive(Debug)]
struct Batch {
    id: u64,
    sealed: bool,
    lsn: Option<u64>,
    outstanding: u64,
    opened: Instant,
}

#[derive(Debug, Default)]
struct AckState {
    batches: VecDeque<Batch>,
    next_id: u64,
    acked_lsn: u64,
    in_flight_bytes: u64,
    failure: Option<KafkaError>,
}

impl AckState {
    fn find(&mut self, id: u64) -> Option<&mut Batch> {
        let front = self.batches.front()?.id;
        let idx = id.checked_sub(front)? as usize;
        self.batches.get_mut(idx).filter(|b| b.id == id)
    }

    /// Drops the finished batches at the front; true when that moved the
    /// acknowledged LSN.
    fn pop_done(&mut self) -> bool {
        let before = self.acked_lsn;
        while let Some(b) = self.batches.front() {
            if !(b.sealed && b.outstanding == 0) {
                break;
            }
            if let Some(lsn) = b.lsn {
                self.acked_lsn = self.acked_lsn.max(lsn);
            }
            self.batches.pop_front();
        }
        self.acked_lsn > before
    }
}

/// Shared acknowledgement state between the capture task and librdkafka's
/// delivery thread.
#[derive(Default)]
pub struct Acks {
    state: Mutex<AckState>,
    changed: Notify,
    progressed: Notify,
}

impl Acks {
    /// Opens a batch; events sent with its id count against it.
    pub fn open(&self) -> u64 {
        let mut s = self.state.lock().expect("ack state");
        let id = s.next_id;
        s.next_id += 1;
        s.batches.push_back(Batch {
            id,
            sealed: false,
            lsn: None,
            outstanding: 0,
            opened: Instant::now(),
        });
        id
    }

    /// Marks a batch complete at the source; `lsn` is acknowledged once all
    /// its events and all earlier batches are in Kafka.
    pub fn seal(&self, id: u64, lsn: Option<u64>) {
        let mut s = self.state.lock().expect("ack state");
        if let Some(b) = s.find(id) {
            b.sealed = true;
            b.lsn = lsn;
        }
        let progressed = s.pop_done();
        drop(s);
        self.changed.notify_one();
        if progressed {
            self.progressed.notify_one();
        }
    }

    /// A position with nothing to deliver (a keepalive, a skipped
    /// transaction): acknowledged as soon as everything before it is.
    pub fn mark(&self, lsn: u64) {
        let mut s = self.state.lock().expect("ack state");
        if s.batches.is_empty() {
            s.acked_lsn = s.acked_lsn.max(lsn);
            return;
        }
        let id = s.next_id;
        s.next_id += 1;
        s.batches.push_back(Batch {
            id,
            sealed: true,
            lsn: Some(lsn),
            outstanding: 0,
            opened: Instant::now(),
        });
    }

    /// Holds a batch open for work outside Kafka (e.g. recording a snapshot
    /// request); [`Acks::release`] ends the hold.
    pub fn hold(&self, id: u64) {
        if let Some(b) = self.state.lock().expect("ack state").find(id) {
            b.outstanding += 1;
        }
    }

    pub fn release(&self, id: u64) {
        self.complete(id, 0, None);
    }

    #[cfg(test)]
    fn sending(&self, id: u64, bytes: u64) {
        let mut s = self.state.lock().expect("ack state");
        s.in_flight_bytes += bytes;
        if let Some(b) = s.find(id) {
            b.outstanding += 1;
        }
    }

    /// Reserves room for one event of `bytes`: `Ok(true)` when it fits the
    /// in-flight bound (and is now counted against batch `id`), `Ok(false)`
    /// when the caller must wait for deliveries.
    fn reserve(&self, id: u64, bytes: u64, max: u64) -> Result<bool, KafkaError> {
        let mut s = self.state.lock().expect("ack state");
        if let Some(e) = &s.failure {
            return Err(e.clone());
        }
        if s.in_flight_bytes + bytes > max && s.in_flight_bytes > 0 {
            return Ok(false);
        }
        s.in_flight_bytes += bytes;
        if let Some(b) = s.find(id) {
            b.outstanding += 1;
        }
        Ok(true)
    }

    fn complete(&self, id: u64, bytes: u64, error: Option<KafkaError>) {
        self.complete_many(&[(id, 1)], bytes, error);
    }

    /// Applies deliveries: `(batch id, events)` pairs and their bytes.
    fn complete_many(&self, batches: &[(u64, u64)], bytes: u64, error: Option<KafkaError>) {
        let mut s = self.state.lock().expect("ack state");
        s.in_flight_bytes = s.in_flight_bytes.saturating_sub(bytes);
        if let Some(e) = error {
            s.failure.get_or_insert(e);
        }
        for &(id, n) in batches {
            if let Some(b) = s.find(id) {
                b.outstanding = b.outstanding.saturating_sub(n);
            }
        }
        let progressed = s.pop_done();
        let failed = s.failure.is_some();
        drop(s);
        self.changed.notify_one();
        if progressed || failed {
            self.progressed.notify_one();
        }
    }

    /// The highest LSN whose events are all in Kafka.
    pub fn acked_lsn(&self) -> u64 {
        self.state.lock().expect("ack state").acked_lsn
    }

    /// Sets the acknowledged LSN at start (the slot's confirmed position).
    pub fn start_at(&self, lsn: u64) {
        let mut s = self.state.lock().expect("ack state");
        s.acked_lsn = s.acked_lsn.max(lsn);
    }

    fn in_flight_bytes(&self) -> u64 {
        self.state.lock().expect("ack state").in_flight_bytes
    }

    /// True when batch `id` is complete (or was never opened).
    pub fn is_done(&self, id: u64) -> bool {
        let mut s = self.state.lock().expect("ack state");
        s.find(id).is_none()
    }

    /// Age of the oldest batch not yet acknowledged.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.state
            .lock()
            .expect("ack state")
            .batches
            .front()
            .map(|b| b.opened.elapsed())
    }

    /// The first delivery failure, if any: capture stops on it.
    pub fn failure(&self) -> Option<KafkaError> {
        self.state.lock().expect("ack state").failure.clone()
    }

    /// Completes when the acknowledged LSN moved or a delivery failed since
    /// the last call.
    pub async fn progressed(&self) {
        self.progressed.notified().await
    }

    /// Waits until some delivery report or seal arrives (or `max` passes).
    pub async fn changed(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.changed.notified()).await;
    }
}

/// Deliveries reported since the last poll.
#[derive(Default)]
struct Delivered {
    /// `(batch id, events)`, in report order.
    batches: Vec<(u64, u64)>,
    bytes: u64,
    events: u64,
    error: Option<KafkaError>,
}

/// The librdkafka context: collects delivery reports for [`CaptureProducer::poll`].
#[derive(Default)]
pub struct CaptureContext {
    delivered: Mutex<Delivered>,
}

impl ClientContext for CaptureContext {}

impl ProducerContext for CaptureContext {
    /// The batch id; the size is recomputed from the message.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (m, error) = match result {
            Ok(m) => (m, None),
            Err((e, m)) => (m, Some(e.clone())),
        };
        let bytes = event_bytes(m.payload_len(), m.key().map_or(0, <[u8]>::len));
        let id = opaque as u64;
        let mut d = self.delivered.lock().expect("deliveries");
        d.bytes += bytes;
        d.events += 1;
        if let Some(e) = error {
            d.error.get_or_insert(e);
        }
        match d.batches.last_mut() {
            Some((b, n)) if *b == id => *n += 1,
            _ => d.batches.push((id, 1)),
        }
    }
}

/// What one event counts against the in-flight bound.
fn event_bytes(payload: usize, key: usize) -> u64 {
    (payload + key + 64) as u64
}

/// Compression of change batches unless `kafka.options` sets `compression.type`.
pub const DEFAULT_COMPRESSION: &str = "none";

/// One event ready for Kafka.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub commit_lsn: &'a str,
    pub xid: Option<u32>,
    pub idempotency_key: &'a str,
}

/// How long events may wait to fill a batch while the stream has a
/// backlog: large batches keep the broker's work per event low. Once the
/// stream is caught up, [`CaptureProducer::send_now`] cuts the wait short.
const LINGER_MS: &str = "50";

/// The capture producer.
pub struct CaptureProducer {
    producer: Arc<BaseProducer<CaptureContext>>,
    acks: Arc<Acks>,
    max_in_flight_bytes: u64,
    /// Events sent; every [`POLL_EVERY_SENDS`] the sender polls itself.
    sends: AtomicU64,
    /// Signalled on every send, so an idle delivery server starts polling.
    sent: Notify,
    /// [`Self::sends`] when lingering events were last sent at once.
    sent_now: AtomicU64,
    /// Partition counts of the topics whose events are placed by record.
    placement: std::sync::OnceLock<HashMap<String, i32>>,
}

/// `send` serves delivery reports itself every this many events.
const POLL_EVERY_SENDS: u64 = 256;

/// How often delivery reports are served while events are in flight.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

impl CaptureProducer {
    /// `cc` carries brokers and pass-through options; durability settings are
    /// added here.
    pub fn new(cc: ClientConfig, max_in_flight_bytes: u64) -> Result<Self, CaptureError> {
        let user_compression = cc.get("compression.type").map(str::to_string);
        let mut cc = crate::kafka::durable_producer(cc);
        // Compression costs CPU twice (producer and broker validation) and
        // this pipeline is usually CPU-bound; `kafka.options` can turn it on.
        cc.set(
            "compression.type",
            user_compression.as_deref().unwrap_or(DEFAULT_COMPRESSION),
        );
        let kbytes = (max_in_flight_bytes / 1024).clamp(1024, 2 * 1024 * 1024);
        cc.set("queue.buffering.max.kbytes", kbytes.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("batch.size", "1000000")
            .set("linger.ms", LINGER_MS)
            .set("batch.num.messages", "100000")
            .set("message.max.bytes", "10000000");
        let producer = cc
            .create_with_context(CaptureContext::default())
            .map_err(|e| CaptureError::kafka("creating the producer", e))?;
        Ok(Self {
            producer: Arc::new(producer),
            acks: Arc::new(Acks::default()),
            max_in_flight_bytes,
            sends: AtomicU64::new(0),
            sent: Notify::new(),
            sent_now: AtomicU64::new(0),
            placement: std::sync::OnceLock::new(),
        })
    }

    /// Serves the delivery reports librdkafka has ready and applies them to
    /// [`Acks`]; returns the number of events reported.
    pub fn poll(&self) -> u64 {
        let mut served = 0;
        loop {
            self.producer.poll(Duration::ZERO);
            let d = std::mem::take(
                &mut *self
                    .producer
                    .context()
                    .delivered
                    .lock()
                    .expect("deliveries"),
            );
            if d.events == 0 && d.error.is_none() {
                return served;
            }
            served += d.events;
            self.acks.complete_many(&d.batches, d.bytes, d.error);
        }
    }

    /// Serves delivery reports until `stop`: every [`POLL_INTERVAL`] while
    /// events are in flight, otherwise once something is sent.
    pub async fn serve_deliveries(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.poll();
            let idle = self.acks.in_flight_bytes() == 0;
            let wait = if idle {
                Duration::from_millis(100)
            } else {
                POLL_INTERVAL
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.sent.notified(), if idle => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Places the events of `topics` (name → partition count) by record,
    /// with [`crate::kafka::record_partition`]; other topics' events go by
    /// librdkafka's key hash.
    pub fn place_by_record(&self, topics: HashMap<String, i32>) {
        let _ = self.placement.set(topics);
    }

    /// The partition of an event of `topic` with `key`, when placed by record.
    fn partition(&self, topic: &str, key: Option<&[u8]>) -> Option<i32> {
        let n = *self.placement.get()?.get(topic)?;
        let key: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(key?).ok()?;
        Some(crate::kafka::record_partition(
            &crate::processor::change::billing_id(&key),
            n,
        ))
    }

    /// Sends lingering events at once. Called when the stream is caught
    /// up: a lone change then leaves without waiting for `linger.ms`, while
    /// a backlog still fills large batches. Blocks for at most 1 ms, the
    /// time librdkafka's brokers take to notice.
    pub fn send_now(&self) {
        let sends = self.sends.load(Ordering::Relaxed);
        if self.sent_now.swap(sends, Ordering::Relaxed) == sends {
            return;
        }
        // Sends at once; waiting for the delivery is the acks' business.
        let _ = crate::kafka::deliver_queued(self.producer.client(), Duration::from_millis(1));
    }

    pub fn acks(&self) -> &Arc<Acks> {
        &self.acks
    }

    /// Produces one event of batch `batch`; waits while the in-flight bound
    /// is reached. Fails on the first delivery error seen.
    pub async fn send(&self, batch: u64, ev: Outgoing<'_>) -> Result<(), CaptureError> {
        let bytes = event_bytes(ev.payload.len(), ev.key.map_or(0, <[u8]>::len));
        while !self
            .acks
            .reserve(batch, bytes, self.max_in_flight_bytes)
            .map_err(|e| CaptureError::kafka("delivering a change event", e))?
        {
            if self.poll() == 0 {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        let xid_text;
        let mut headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: HEADER_COMMIT_LSN,
                value: Some(ev.commit_lsn),
            })
            .insert(Header {
                key: HEADER_IDEMPOTENCY_KEY,
                value: Some(ev.idempotency_key),
            });
        if let Some(x) = ev.xid {
            xid_text = x.to_string();
            headers = headers.insert(Header {
                key: HEADER_XID,
                value: Some(&xid_text),
            });
        }
        let mut record = BaseRecord::with_opaque_to(ev.topic, batch as usize)
            .payload(ev.payload)
            .headers(headers);
        if let Some(p) = self.partition(ev.topic, ev.key) {
            record = record.partition(p);
        }
        if let Some(k) = ev.key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent.notify_one();
                    if self
                        .sends
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(POLL_EVERY_SENDS)
                    {
                        self.poll();
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if self.poll() == 0 {
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                }
                Err((e, _)) => {
                    self.acks.complete(batch, bytes, None);
                    return Err(CaptureError::kafka("producing a change event", e));
                }
            }
        }
    }

    /// Waits until batch `id` is acknowledged by Kafka.
    pub async fn wait_batch(&self, id: u64) -> Result<(), CaptureError> {
        loop {
            self.poll();
            if let Some(e) = self.acks.failure() {
                return Err(CaptureError::kafka("delivering a change event", e));
            }
            if self.acks.is_done(id) {
                return Ok(());
            }
            self.acks.changed(Duration::from_millis(100)).await;
        }
    }

    /// Flushes everything queued (used at shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), CaptureError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || p.flush(timeout))
            .await
            .expect("flush task")
            .map_err(|e| CaptureError::kafka("flushing", e))?;
        // The flush served the reports on its own thread; apply them.
        self.poll();
        match self.acks.failure() {
            Some(e) => Err(CaptureError::kafka("delivering a change event", e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_advances_only_when_every_earlier_batch_is_delivered() {
        let acks = Acks::default();
        let a = acks.open();
        acks.sending(a, 10);
        let b = acks.open();
        acks.sending(b, 10);
        acks.seal(b, Some(200));
        acks.complete(b, 10, None);
        // b is done but a is still open: nothing acknowledged.
        assert_eq!(acks.acked_lsn(), 0);
        acks.seal(a, Some(100));
        assert_eq!(acks.acked_lsn(), 0);
        acks.complete(a, 10, None);
        assert_eq!(acks.acked_lsn(), 200);
        assert_eq!(acks.in_flight_bytes(), 0);
        acks.mark(300);
        assert_eq!(acks.acked_lsn(), 300);
    }

    #[test]
    fn a_mark_waits_behind_pending_batches() {
        let acks = Acks::default();
        let a = acks.open();
        acks.sending(a, 1);
        acks.seal(a, Some(100));
        acks.mark(150);
        assert_eq!(acks.acked_lsn(), 0);
        acks.complete(a, 1, None);
        assert_eq!(acks.acked_lsn(), 150);
    }

    #[test]
    fn a_hold_keeps_the_batch_open() {
        let acks = Acks::default();
        let a = acks.open();
        acks.hold(a);
        acks.seal(a, Some(10));
        assert_eq!(acks.acked_lsn(), 0);
        acks.release(a);
        assert_eq!(acks.acked_lsn(), 10);
    }
}
