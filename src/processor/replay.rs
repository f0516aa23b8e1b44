//! Backfill by replay: re-processes the retained change topics of one
//! integration from the start or from a point in time, through the same
//! link → map → resolve → deliver steps as live processing. The merge base
//! and upserts by billing id make it idempotent: replaying a history twice
//! writes nothing the second time. An initial full sync is capture's
//! snapshot followed by a replay.
//!
//! ```text
//!  <prefix>.cdc.*, <prefix>.external.<system> ──(from earliest | time)──► Processor ──► both sides
//!                                               └── until the end offsets seen at start
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::batch::{BatchError, Processor};
use super::change::Change;
use super::events::{Counts, SyncEvent};
use super::intake::MAX_BATCH;
use super::runner::decode;
use crate::kafka::Topics;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    Earliest,
    Time(DateTime<Utc>),
}

impl std::str::FromStr for ReplayFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "earliest" {
            return Ok(ReplayFrom::Earliest);
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| ReplayFrom::Time(t.with_timezone(&Utc)))
            .map_err(|e| {
                format!("expected `earliest` or an RFC 3339 time such as 2026-11-01T00:00:00Z: {e}")
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// Totals of one replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub messages: u64,
    pub counts: Counts,
}

/// Members of consumer group `group` now (0 when it has none or does not
/// exist).
pub async fn group_members(
    kafka: &rdkafka::ClientConfig,
    group: &str,
) -> Result<usize, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = kafka.create()?;
    let group = group.to_string();
    tokio::task::spawn_blocking(move || {
        let list = consumer.fetch_group_list(Some(&group), Duration::from_secs(10))?;
        Ok(list
            .groups()
            .iter()
            .filter(|g| g.name() == group)
            .map(|g| g.members().len())
            .sum())
    })
    .await
    .map_err(|_| rdkafka::error::KafkaError::Canceled)?
}

/// Replays the change topics `topics` (all partitions) from `from` up to
/// their end offsets at the start. `progress` is told (done, total).
pub async fn replay(
    processor: Arc<Processor>,
    kafka: rdkafka::ClientConfig,
    prefix: &Topics,
    topics: Vec<String>,
    from: ReplayFrom,
    progress: impl Fn(u64, u64),
) -> Result<ReplaySummary, ReplayError> {
    let mut cc = kafka.clone();
    cc.set("group.id", format!("{}-replay", prefix.prefix()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = cc.create()?;
    let Span {
        start,
        mut ends,
        total,
    } = span(&consumer, &topics, from)?;
    consumer.assign(&start)?;

    let publisher = Publisher {
        producer: crate::kafka::durable_producer(kafka).create()?,
        topic: prefix.sync_events(),
    };
    let cdc_prefix = format!("{}.cdc.", prefix.prefix());
    let external_prefix = format!("{}.external.", prefix.prefix());
    let mut summary = ReplaySummary::default();
    let mut batch: Vec<Change> = Vec::with_capacity(MAX_BATCH);
    let mut done = 0u64;
    progress(0, total);
    while !ends.is_empty() {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg?;
        done += 1;
        let key = (msg.topic().to_string(), msg.partition());
        if ends.get(&key).is_some_and(|end| msg.offset() + 1 >= *end) {
            ends.remove(&key);
        }
        batch.extend(decode(&msg, &cdc_prefix, &external_prefix));
        if batch.len() >= MAX_BATCH || ends.is_empty() {
            summary.messages += batch.len() as u64;
            let events = processor.process(&batch).await?;
            publisher.publish(&events, &mut summary.counts).await?;
            batch.clear();
            progress(done, total);
        }
    }
    progress(total, total);
    Ok(summary)
}

/// What a replay reads: where each partition starts, where it ends (its
/// end offset when the replay started; only partitions with something to
/// read), and the number of messages in between.
struct Span {
    start: TopicPartitionList,
    ends: HashMap<(String, i32), i64>,
    total: u64,
}

/// The [`Span`] of `topics` from `from`.
fn span(
    consumer: &BaseConsumer,
    topics: &[String],
    from: ReplayFrom,
) -> Result<Span, rdkafka::error::KafkaError> {
    let timeout = Duration::from_secs(10);
    let mut start = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let metadata = consumer.fetch_metadata(None, timeout)?;
    for t in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(t.name(), p.id(), timeout)?;
            if high > low {
                ends.insert((t.name().to_string(), p.id()), high);
                let offset = match from {
                    ReplayFrom::Earliest => Offset::Offset(low),
                    ReplayFrom::Time(ts) => Offset::Offset(ts.timestamp_millis()),
                };
                start.add_partition_offset(t.name(), p.id(), offset)?;
            }
        }
    }
    if let ReplayFrom::Time(_) = from {
        start = consumer.offsets_for_times(start, timeout)?;
    }
    let mut total = 0u64;
    for e in start.elements() {
        let end = ends[&(e.topic().to_string(), e.partition())];
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => end,
        };
        total += (end - from).max(0) as u64;
    }
    ends.retain(|k, end| {
        start
            .find_partition(&k.0, k.1)
            .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o < *end))
    });
    Ok(Span { start, ends, total })
}

/// Sends a replay's sync events to `<prefix>.sync-events`, as live
/// processing does.
struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    /// Sends `events` in order and adds their completed counts to `counts`.
    async fn publish(
        &self,
        events: &[SyncEvent],
        counts: &mut Counts,
    ) -> Result<(), rdkafka::error::KafkaError> {
        for ev in events {
            if let SyncEvent::Completed { counts: c, .. } = ev {
                add(counts, c);
            }
            let payload = serde_json::to_vec(ev).expect("event serializes");
            let key = ev.key();
            let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

fn add(sum: &mut Counts, c: &Counts) {
    sum.synced += c.synced;
    sum.created += c.created;
    sum.updated += c.updated;
    sum.deleted += c.deleted;
    sum.skipped += c.skipped;
    sum.failed += c.failed;
    sum.conflicts += c.conflicts;
}
