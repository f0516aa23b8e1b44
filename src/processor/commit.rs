//! Group commit: the processor loop hands each processed batch (its
//! bookkeeping, sync events and next offsets) to one committer task and goes
//! on with the next batch. The committer saves the batches' bookkeeping in
//! order, then publishes their events and the latest offsets in one Kafka
//! transaction — one transaction for every batch that queued up while the
//! previous one committed. The loop's pace is then its own, not the
//! broker's round trips, and a busy broker gets fewer, larger transactions.
//!
//! ```text
//!  processor loop ──batch──► (bounded queue) ──► committer: save each ──► one transaction
//! ```
//!
//! A batch's states are visible to the next batches at once (unsaved states,
//! see [`super::state`]). If a save or a transaction fails, the committer
//! stops, the session restarts from the committed offsets and every batch
//! not committed runs again: their writes are idempotent.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::batch::{Processed, Processor};
use super::handover::InFlight;
use super::lanes::Generation;
use super::runner::{Record, RunError, transact};

/// Processed batches that may wait for their commit; the loop waits for
/// room beyond that.
pub const MAX_QUEUED_BATCHES: usize = 4;

/// A processed batch, ready to commit.
pub struct Committable {
    pub processed: Processed,
    pub records: Vec<Record>,
    pub offsets: TopicPartitionList,
    /// The consumer group's generation when the batch's oldest messages
    /// were taken.
    pub group: Generation,
    /// Held until the batch is committed (see [`super::handover`]).
    pub in_flight: InFlight,
}

/// The processor loop's side of the committer.
pub struct Committer {
    queue: mpsc::Sender<Committable>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Committer {
    /// Starts committing to `topic` with `producer`.
    pub fn start(processor: Arc<Processor>, producer: FutureProducer, topic: String) -> Self {
        let (queue, rx) = mpsc::channel(MAX_QUEUED_BATCHES);
        let task = tokio::spawn(commit_batches(processor, producer, topic, rx));
        Self { queue, task }
    }

    /// A handle to queue batches with; sending fails once the committer has
    /// stopped (its error comes from [`Committer::finish`]). Every handle
    /// must be dropped before [`Committer::finish`] returns.
    pub fn sender(&self) -> mpsc::Sender<Committable> {
        self.queue.clone()
    }

    /// Commits what is queued and answers the first error, if any.
    pub async fn finish(self) -> Result<(), RunError> {
        drop(self.queue);
        self.task
            .await
            .map_err(|_| RunError::from(rdkafka::error::KafkaError::Canceled))?
    }
}

async fn commit_batches(
    processor: Arc<Processor>,
    producer: FutureProducer,
    topic: String,
    mut rx: mpsc::Receiver<Committable>,
) -> Result<(), RunError> {
    while let Some(first) = rx.recv().await {
        let mut batches = vec![first];
        while let Ok(next) = rx.try_recv() {
            batches.push(next);
        }
        // In order: a later batch's state of a record saves over an earlier one.
        for b in &batches {
            processor.save(&b.processed.bookkeeping).await?;
        }
        let offsets = latest_offsets(batches.iter().map(|b| &b.offsets))?;
        let mut records = Vec::new();
        let group = Generation::oldest(batches.iter().map(|b| &b.group))
            .expect("at least one batch")
            .metadata
            .clone();
        let mut in_flight = Vec::with_capacity(batches.len());
        for b in batches {
            records.extend(b.records);
            in_flight.push(b.in_flight);
        }
        metrics::histogram!(GROUPED_RECORDS).record(records.len() as f64);
        transact(producer.clone(), group, offsets, topic.clone(), records).await?;
        drop(in_flight);
    }
    Ok(())
}

/// Metric: sync events published per processor transaction.
pub const GROUPED_RECORDS: &str = "extsync_processor_transaction_records";

/// Registers the committer's metric description.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        GROUPED_RECORDS,
        "Sync events published in one processor transaction (every batch queued while the previous one committed)"
    );
}

/// Per partition, the offset of the last list that has it.
fn latest_offsets<'a>(
    lists: impl Iterator<Item = &'a TopicPartitionList>,
) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
    let mut latest: BTreeMap<(String, i32), Offset> = BTreeMap::new();
    for list in lists {
        for e in list.elements() {
            latest.insert((e.topic().to_string(), e.partition()), e.offset());
        }
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in latest {
        tpl.add_partition_offset(&topic, partition, offset)?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_batches_offsets_win_and_partitions_add_up() {
        let mut a = TopicPartitionList::new();
        a.add_partition_offset("t", 0, Offset::Offset(5)).unwrap();
        a.add_partition_offset("t", 1, Offset::Offset(7)).unwrap();
        let mut b = TopicPartitionList::new();
        b.add_partition_offset("t", 0, Offset::Offset(9)).unwrap();
        b.add_partition_offset("u", 0, Offset::Offset(1)).unwrap();
        let merged = latest_offsets([a, b].iter()).unwrap();
        let got: Vec<(String, i32, Offset)> = merged
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition(), e.offset()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("t".into(), 0, Offset::Offset(9)),
                ("t".into(), 1, Offset::Offset(7)),
                ("u".into(), 0, Offset::Offset(1)),
            ]
        );
    }
}
