//! Partition lanes: an integration's processor works on the partitions it
//! owns side by side once the load makes it pay. The consumer loop hands a
//! large batch over split by partition, a small one whole; each part is
//! processed in a task of its own and queued for the committer. A part
//! starts once no part still running shares a partition with it.
//!
//! ```text
//!  consumer ──batch──► ≥ SPLIT_AT messages: one part per partition ─┬─► process ─┐
//!                      fewer: one part                           ───┴─► process ─┴─► committer
//! ```
//!
//! Partition `n` of the repartition topic and of every change topic read
//! directly carries the same records (see [`super::route`]), so parts
//! running together never share a record: they are the in-process form of
//! the many processes the partitions allow, each record's changes still
//! handled by one owner, in order. While one part waits on a vendor's API,
//! another decides. A small batch is not split: its calls and queries cost
//! about as much for half the records, and they would contend.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::OwnedMessage;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batch::{BatchError, Processor};
use super::change::Change;
use super::commit::Committable;
use super::runner::{Record, RunError, announce, decode, next_offsets};

/// Batches of at least this many messages are split by partition.
pub const SPLIT_AT: usize = 100;

/// Some of a taken batch: one partition's share, or all of it.
pub struct Part {
    pub messages: Vec<OwnedMessage>,
    /// The consumer group's generation when the batch was taken.
    pub group: ConsumerGroupMetadata,
}

impl Part {
    fn partitions(&self) -> HashSet<i32> {
        self.messages.iter().map(Message::partition).collect()
    }
}

/// What every part of a session shares.
pub struct LaneContext {
    pub processor: Arc<Processor>,
    pub commits: mpsc::Sender<Committable>,
    /// Cancelled when the processor stops or a part fails: the session ends.
    pub session: CancellationToken,
    pub cdc_prefix: String,
    pub external_prefix: String,
}

type PartTask = JoinHandle<Result<(), RunError>>;

/// The parts of one processor session that are running.
pub struct Lanes {
    context: Arc<LaneContext>,
    /// Each running part's partitions and task.
    running: Vec<(HashSet<i32>, PartTask)>,
}

impl Lanes {
    pub fn new(context: LaneContext) -> Self {
        Lanes {
            context: Arc::new(context),
            running: Vec::new(),
        }
    }

    /// Starts `part` once no running part shares a partition with it, so
    /// each partition's parts run, and queue for the committer, in order.
    pub async fn start(&mut self, part: Part) -> Result<(), RunError> {
        let partitions = part.partitions();
        let mut i = 0;
        while i < self.running.len() {
            let (held, task) = &self.running[i];
            if task.is_finished() || !held.is_disjoint(&partitions) {
                let (_, task) = self.running.swap_remove(i);
                joined(task.await)?;
            } else {
                i += 1;
            }
        }
        let task = tokio::spawn(run_part(self.context.clone(), part));
        self.running.push((partitions, task));
        Ok(())
    }

    /// Waits for the running parts and answers the first error, if any.
    pub async fn finish(self) -> Result<(), RunError> {
        let mut first = Ok(());
        for (_, task) in self.running {
            let result = joined(task.await);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

fn joined(done: Result<Result<(), RunError>, tokio::task::JoinError>) -> Result<(), RunError> {
    done.unwrap_or_else(|_| Err(rdkafka::error::KafkaError::Canceled.into()))
}

/// A taken batch as parts: split by partition when it has at least
/// [`SPLIT_AT`] messages, else whole.
pub fn parts_of(batch: Vec<OwnedMessage>) -> Vec<Vec<OwnedMessage>> {
    if batch.len() < SPLIT_AT {
        return vec![batch];
    }
    by_partition(batch).into_iter().map(|(_, ms)| ms).collect()
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

async fn run_part(context: Arc<LaneContext>, part: Part) -> Result<(), RunError> {
    let result = process_part(&context, part).await;
    if result.is_err() {
        context.session.cancel();
    }
    result
}

async fn process_part(context: &LaneContext, part: Part) -> Result<(), RunError> {
    let changes: Vec<Change> = part
        .messages
        .iter()
        .filter_map(|m| decode(m, &context.cdc_prefix, &context.external_prefix))
        .collect();
    let Some(processed) = process_retrying(context, &changes).await? else {
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
    changes: &[Change],
) -> Result<Option<super::batch::Processed>, RunError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match context.processor.process_unsaved(changes).await {
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

    #[test]
    fn small_batches_stay_whole_and_large_ones_split() {
        let small: Vec<OwnedMessage> = (0..4).map(|i| message(i % 2, i.into())).collect();
        assert_eq!(parts_of(small).len(), 1);
        let large: Vec<OwnedMessage> = (0..SPLIT_AT as i64)
            .map(|i| message((i % 2) as i32, i))
            .collect();
        let parts = parts_of(large);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() == SPLIT_AT / 2));
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
