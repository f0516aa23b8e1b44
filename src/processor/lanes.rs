//! Partition lanes: an integration's processor works on the partitions it
//! owns side by side. The consumer loop sorts what it takes by partition;
//! a partition whose last part is still running collects its messages
//! until that part is done, then they start as its next part. Batches thus
//! grow per partition with the load, while a busy partition never holds
//! back another. Ready messages of several partitions start together as
//! one part while they are few, and as one part per partition once they
//! are many. Each part is processed in a task of its own and queued for
//! the committer.
//!
//! ```text
//!  consumer ──batch──► waiting, by partition ──(partition idle)──► part ──► process ─┐
//!                                                                   part ──► process ─┴─► committer
//! ```
//!
//! Partition `n` of the repartition topic and of every change topic read
//! directly carries the same records (see [`super::route`]), so parts
//! running together never share a record: they are the in-process form of
//! the many processes the partitions allow, each record's changes still
//! handled by one owner, in order. While one part waits on a vendor's API,
//! another decides. A few ready messages are not split: their calls and
//! queries cost about as much for half the records, and they would contend.
//! The records of the waiting messages are kept in [`super::queued`], where
//! a child waiting for its parent looks.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::OwnedMessage;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::batch::{BatchError, Processor};
use super::change::Change;
use super::commit::Committable;
use super::handover::{Handover, InFlight};
use super::intake::{MAX_BATCH, next_offsets};
use super::queued::Queued;
use super::runner::{Record, RunError, announce, decode};

/// Ready messages of several partitions start as one part per partition
/// once there are at least this many, and as one part below that.
pub const SPLIT_AT: usize = 100;

/// Messages a busy partition collects before the loop takes no more: the
/// consumer hands a partition's messages over in runs, so a partition must
/// be able to collect a few batches' worth for the other partitions' to
/// come into view.
pub const MAX_WAITING: usize = 4 * MAX_BATCH;

/// The consumer group's generation when messages were taken. A
/// transaction commits with the generation of its oldest messages, so a
/// rebalance since any of them was taken fences it.
#[derive(Clone)]
pub struct Generation {
    pub metadata: Arc<ConsumerGroupMetadata>,
    /// Batches the session had taken before these messages.
    pub since: u64,
}

impl Generation {
    /// The generation of the oldest messages among `all`.
    pub fn oldest<'a>(all: impl IntoIterator<Item = &'a Generation>) -> Option<&'a Generation> {
        all.into_iter().min_by_key(|g| g.since)
    }
}

/// Messages of one or more partitions, processed and committed together.
pub struct Part {
    pub messages: Vec<OwnedMessage>,
    pub group: Generation,
}

/// One partition's messages that have not started yet.
struct Waiting {
    messages: Vec<OwnedMessage>,
    /// Each message's record, as [`Queued`] counts it.
    keys: Vec<Option<String>>,
    /// When the oldest of them was taken.
    group: Generation,
}

/// What every part of a session shares.
pub struct LaneContext {
    pub processor: Arc<Processor>,
    pub commits: mpsc::Sender<Committable>,
    /// Cancelled when the processor stops or a part fails: the session ends.
    pub session: CancellationToken,
    /// Counts the parts started until their batch commits, and the revokes.
    pub handover: Arc<Handover>,
    pub cdc_prefix: String,
    pub external_prefix: String,
}

/// Messages taken but not started, by partition, and the partitions whose
/// part is running.
struct Queue {
    waiting: BTreeMap<i32, Waiting>,
    busy: HashSet<i32>,
    /// Batches taken so far.
    taken: u64,
    /// The records of the waiting messages, for children waiting for a
    /// parent to look at.
    queued: Arc<Queued>,
    cdc_prefix: String,
}

impl Queue {
    fn new(queued: Arc<Queued>, cdc_prefix: String) -> Self {
        queued.clear();
        Queue {
            waiting: BTreeMap::new(),
            busy: HashSet::new(),
            taken: 0,
            queued,
            cdc_prefix,
        }
    }

    /// Sorts a taken batch by partition, behind the messages already waiting.
    fn push(&mut self, batch: Vec<OwnedMessage>, group: Arc<ConsumerGroupMetadata>) {
        let group = Generation {
            metadata: group,
            since: self.taken,
        };
        for (partition, messages) in by_partition(batch) {
            let keys: Vec<Option<String>> = (messages.iter())
                .map(|m| self.queued.key_of(m, &self.cdc_prefix))
                .collect();
            self.queued.add(partition, keys.iter().flatten());
            let w = self.waiting.entry(partition).or_insert_with(|| Waiting {
                messages: Vec::new(),
                keys: Vec::new(),
                group: group.clone(),
            });
            w.messages.extend(messages);
            w.keys.extend(keys);
        }
        self.taken += 1;
    }

    fn is_full(&self) -> bool {
        self.waiting
            .values()
            .any(|w| w.messages.len() >= MAX_WAITING)
    }

    /// The parts that can start now, with their partitions, which become
    /// busy: the waiting messages of idle partitions, together while they
    /// are fewer than [`SPLIT_AT`], else one part per partition; at most
    /// [`MAX_BATCH`] messages a part.
    fn ready(&mut self) -> Vec<(Vec<i32>, Part)> {
        let idle: Vec<i32> = (self.waiting.keys().copied())
            .filter(|p| !self.busy.contains(p))
            .collect();
        let count: usize = idle.iter().map(|p| self.waiting[p].messages.len()).sum();
        let groups = match count {
            0 => Vec::new(),
            n if n < SPLIT_AT => vec![idle],
            _ => idle.into_iter().map(|p| vec![p]).collect(),
        };
        groups
            .into_iter()
            .map(|partitions| {
                let part = self.part_of(&partitions);
                (partitions, part)
            })
            .collect()
    }

    /// Takes up to [`MAX_BATCH`] waiting messages of each of `partitions`
    /// (all idle, each with messages waiting) as one part.
    fn part_of(&mut self, partitions: &[i32]) -> Part {
        let mut messages = Vec::new();
        let mut groups = Vec::new();
        for &p in partitions {
            let mut w = self.waiting.remove(&p).expect("a waiting partition");
            if w.messages.len() > MAX_BATCH {
                let left = Waiting {
                    messages: w.messages.split_off(MAX_BATCH),
                    keys: w.keys.split_off(MAX_BATCH),
                    group: w.group.clone(),
                };
                self.waiting.insert(p, left);
            }
            self.queued.remove(w.keys.iter().flatten());
            messages.append(&mut w.messages);
            groups.push(w.group);
            self.busy.insert(p);
        }
        let group = Generation::oldest(&groups)
            .expect("at least one partition")
            .clone();
        Part { messages, group }
    }

    fn drop_waiting(&mut self) {
        self.waiting.clear();
        self.queued.clear();
    }

    fn release(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.busy.remove(p);
        }
    }
}

/// The parts of one processor session: those running, and the messages
/// waiting for their partition.
pub struct Lanes {
    context: Arc<LaneContext>,
    /// Each running part answers its partitions with its result.
    running: JoinSet<(Vec<i32>, Result<(), RunError>)>,
    queue: Queue,
    /// Revokes when the waiting messages were taken.
    revokes: u64,
}

impl Lanes {
    pub fn new(context: LaneContext) -> Self {
        let queue = Queue::new(context.processor.queued.clone(), context.cdc_prefix.clone());
        Lanes {
            revokes: context.handover.revokes(),
            context: Arc::new(context),
            running: JoinSet::new(),
            queue,
        }
    }

    /// Queues a taken batch by partition and starts the parts that can start.
    pub fn take(&mut self, batch: Vec<OwnedMessage>, group: ConsumerGroupMetadata) {
        self.drop_stale();
        self.queue.push(batch, Arc::new(group));
        self.start_ready();
    }

    /// Whether a partition has [`MAX_WAITING`] messages waiting: the loop
    /// takes no more until a part is done.
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Waits until a running part is done and starts what waited for its
    /// partitions; never returns while none runs.
    pub async fn settle_one(&mut self) -> Result<(), RunError> {
        let Some(done) = self.running.join_next().await else {
            return std::future::pending().await;
        };
        let (partitions, result) = done.unwrap_or_else(|_| (Vec::new(), Err(canceled())));
        self.queue.release(&partitions);
        result?;
        self.start_ready();
        Ok(())
    }

    fn start_ready(&mut self) {
        self.drop_stale();
        for (partitions, part) in self.queue.ready() {
            let context = self.context.clone();
            let in_flight = context.handover.start();
            self.running.spawn(async move {
                let result = run_part(context, &partitions, part, in_flight).await;
                (partitions, result)
            });
        }
    }

    /// Drops the waiting messages once partitions were revoked since they
    /// were taken: the group reads them again from the committed offsets
    /// (see [`super::handover`]).
    fn drop_stale(&mut self) {
        let revokes = self.context.handover.revokes();
        if revokes != self.revokes {
            self.revokes = revokes;
            self.queue.drop_waiting();
        }
    }

    /// Waits for the running parts and answers the first error, if any.
    /// Messages still waiting are dropped: their offsets are not committed,
    /// so the next session reads them again.
    pub async fn finish(mut self) -> Result<(), RunError> {
        self.queue.queued.clear();
        let mut first = Ok(());
        while let Some(done) = self.running.join_next().await {
            let result = done.map_or_else(|_| Err(canceled()), |(_, r)| r);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

fn canceled() -> RunError {
    rdkafka::error::KafkaError::Canceled.into()
}

/// Splits `batch` by partition number, each part in the batch's order.
pub fn by_partition(batch: Vec<OwnedMessage>) -> Vec<(i32, Vec<OwnedMessage>)> {
    let mut parts: Vec<(i32, Vec<OwnedMessage>)> = Vec::new();
    for m in batch {
        match parts.iter_mut().find(|(p, _)| *p == m.partition()) {
            Some((_, part)) => part.push(m),
            None => parts.push((m.partition(), vec![m])),
        }
    }
    parts
}

async fn run_part(
    context: Arc<LaneContext>,
    partitions: &[i32],
    part: Part,
    in_flight: InFlight,
) -> Result<(), RunError> {
    let result = process_part(&context, partitions, part, in_flight).await;
    if result.is_err() {
        context.session.cancel();
    }
    result
}

async fn process_part(
    context: &LaneContext,
    partitions: &[i32],
    part: Part,
    in_flight: InFlight,
) -> Result<(), RunError> {
    let changes: Vec<Change> = part
        .messages
        .iter()
        .filter_map(|m| decode(m, &context.cdc_prefix, &context.external_prefix))
        .collect();
    let Some(processed) = process_retrying(context, partitions, &changes).await? else {
        return Ok(());
    };
    announce(&processed.events);
    let records = processed
        .events
        .iter()
        .map(|ev| Record {
            key: ev.key(),
            partition: None,
            payload: serde_json::to_vec(ev).expect("event serializes"),
        })
        .collect();
    let batch = Committable {
        records,
        offsets: next_offsets(&part.messages)?,
        group: part.group,
        processed,
        in_flight,
    };
    if context.commits.send(batch).await.is_err() {
        // The committer stopped; its error ends the session.
        context.session.cancel();
    }
    Ok(())
}

/// Processes `changes`, retrying with backoff while delivery is paused
/// (the offsets stay uncommitted meanwhile); `None` if the session ends
/// first.
async fn process_retrying(
    context: &LaneContext,
    partitions: &[i32],
    changes: &[Change],
) -> Result<Option<super::batch::Processed>, RunError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match context.processor.process_unsaved(changes, partitions).await {
            Ok(done) => return Ok(Some(done)),
            Err(BatchError::State(e)) => return Err(e.into()),
            Err(e @ BatchError::Sink(_)) => {
                tracing::warn!(error = %e, wait_ms = backoff.as_millis() as u64, "batch not delivered; retrying");
                tokio::select! {
                    _ = context.session.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    fn generation() -> Arc<ConsumerGroupMetadata> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("group.id", "lanes-test")
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .unwrap();
        Arc::new(consumer.group_metadata().unwrap())
    }

    fn batch(partitions: &[i32], count: usize, first: i64) -> Vec<OwnedMessage> {
        (0..count)
            .map(|i| message(partitions[i % partitions.len()], first + i as i64))
            .collect()
    }

    fn queue() -> Queue {
        Queue::new(Arc::default(), "x.cdc.".into())
    }

    fn started(queue: &mut Queue) -> Vec<(Vec<i32>, usize)> {
        (queue.ready().into_iter())
            .map(|(partitions, part)| (partitions, part.messages.len()))
            .collect()
    }

    #[test]
    fn few_ready_messages_start_together_and_many_by_partition() {
        let mut queue = queue();
        queue.push(batch(&[0, 1], 4, 0), generation());
        assert_eq!(started(&mut queue), vec![(vec![0, 1], 4)]);
        queue.release(&[0, 1]);
        queue.push(batch(&[0, 1], SPLIT_AT, 10), generation());
        let half = SPLIT_AT / 2;
        assert_eq!(started(&mut queue), vec![(vec![0], half), (vec![1], half)]);
    }

    #[test]
    fn a_busy_partition_collects_while_another_starts() {
        let mut queue = queue();
        queue.push(batch(&[0], 3, 0), generation());
        assert_eq!(started(&mut queue), vec![(vec![0], 3)]);
        queue.push(batch(&[0, 1], 10, 3), generation());
        queue.push(batch(&[0], 7, 13), generation());
        assert_eq!(started(&mut queue), vec![(vec![1], 5)]);
        assert!(started(&mut queue).is_empty(), "partition 0 is busy");
        queue.release(&[0]);
        let parts = queue.ready();
        assert_eq!(parts.len(), 1);
        let offsets: Vec<i64> = parts[0].1.messages.iter().map(Message::offset).collect();
        assert_eq!(offsets, vec![3, 5, 7, 9, 11, 13, 14, 15, 16, 17, 18, 19]);
    }

    #[test]
    fn a_part_commits_with_the_generation_of_its_oldest_messages() {
        let mut queue = queue();
        queue.push(batch(&[0, 1], 2, 0), generation());
        assert_eq!(started(&mut queue), vec![(vec![0, 1], 2)]);
        queue.push(batch(&[1], 1, 2), generation());
        queue.push(batch(&[0], 1, 3), generation());
        queue.push(batch(&[1], 1, 4), generation());
        queue.release(&[0, 1]);
        let parts = queue.ready();
        assert_eq!(parts.len(), 1, "few messages start together");
        assert_eq!(parts[0].1.group.since, 1, "taken with the second batch");
    }

    #[test]
    fn a_part_takes_at_most_a_batch_and_a_full_partition_holds_the_loop() {
        let mut queue = queue();
        queue.push(batch(&[0], 1, 0), generation());
        assert_eq!(started(&mut queue), vec![(vec![0], 1)]);
        queue.push(batch(&[0], MAX_WAITING - 1, 1), generation());
        assert!(!queue.is_full());
        queue.push(batch(&[0], 2, MAX_WAITING as i64), generation());
        assert!(queue.is_full());
        queue.release(&[0]);
        assert_eq!(started(&mut queue), vec![(vec![0], MAX_BATCH)]);
        assert!(!queue.is_full());
        for _ in 1..MAX_WAITING / MAX_BATCH {
            queue.release(&[0]);
            assert_eq!(started(&mut queue), vec![(vec![0], MAX_BATCH)]);
        }
        queue.release(&[0]);
        assert_eq!(started(&mut queue), vec![(vec![0], 1)]);
    }

    #[test]
    fn parts_keep_each_partitions_order() {
        let batch = vec![message(1, 5), message(0, 9), message(1, 6), message(0, 10)];
        let parts: Vec<(i32, Vec<i64>)> = by_partition(batch)
            .into_iter()
            .map(|(p, ms)| (p, ms.iter().map(|m| m.offset()).collect()))
            .collect();
        assert_eq!(parts, vec![(1, vec![5, 6]), (0, vec![9, 10])]);
    }
}
