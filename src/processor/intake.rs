//! Intake: how the processor's loops take messages from Kafka. A loop
//! waits for one message, then takes what the consumer has fetched behind
//! it at once, so batches grow with the load while a lone change is never
//! held back; after processing, it commits the batch's next offsets.
//!
//! ```text
//!  consumer ──next_message (waits)──► with_ready (takes what is fetched) ──► batch ──► next_offsets
//! ```
//!
//! Taking a batch may race other work (in `tokio::select!`): a message is
//! taken only when it is answered, and the messages behind it are taken
//! without yielding, so a batch is never dropped half taken.

use std::collections::BTreeMap;

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::runner::{OwnerConsumer, RunError};

/// Most messages taken at once, and processed in one part (see
/// [`super::lanes`]).
pub const MAX_BATCH: usize = 500;

/// Waits for the first message (or `stop`), then takes what else is ready.
pub async fn next_batch(
    consumer: &OwnerConsumer,
    stop: &CancellationToken,
) -> Option<Result<Vec<OwnedMessage>, RunError>> {
    loop {
        let first = match next_message(consumer, stop).await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let batch = with_ready(consumer, first);
        if !batch.is_empty() {
            return Some(Ok(batch));
        }
    }
}

/// Waits for the next message; `None` once `stop` is cancelled. Cancel
/// safe: a message is taken only when it is answered.
async fn next_message(
    consumer: &OwnerConsumer,
    stop: &CancellationToken,
) -> Option<Result<OwnedMessage, RunError>> {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return None,
            m = consumer.recv() => m,
        };
        match next {
            Ok(m) => return Some(Ok(m.detach())),
            // A subscribed topic or pattern with nothing to match yet (no
            // external system has sent a change): it is read once created.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                tracing::debug!(error = %e, "waiting for a subscribed topic");
            }
            Err(e) => return Some(Err(e.into())),
        }
    }
}

/// `first` and what else the consumer has fetched already, up to
/// [`MAX_BATCH`] messages, without waiting for more: while the previous
/// batch was processed, the next one queued up, so batches grow with the
/// load and a lone change is never held back. A revoke while taking (see
/// [`super::handover`]) drops what was taken before it: the partitions'
/// next owners read it again from the committed offsets. The batch is
/// empty when the revoke came with the last look.
fn with_ready(consumer: &OwnerConsumer, first: OwnedMessage) -> Vec<OwnedMessage> {
    let handover = &consumer.context().handover;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let revokes = handover.revokes();
        let next = consumer.recv().now_or_never();
        if handover.revokes() != revokes {
            batch.clear();
        }
        match next {
            Some(Ok(m)) => batch.push(m.detach()),
            _ => break,
        }
    }
    batch
}

/// Offsets to commit after `batch`: next offset per partition, once each
/// (a list holding a partition twice would commit its later entry).
pub fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList, RunError> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let at = next.entry((m.topic(), m.partition())).or_default();
        *at = (*at).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(topic: &str, partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            topic.into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_batch_commits_the_offset_after_its_last_message_of_each_partition() {
        let batch = vec![
            message("a", 0, 5),
            message("a", 1, 9),
            message("a", 0, 6),
            message("b", 0, 2),
            message("a", 0, 7),
        ];
        let tpl = next_offsets(&batch).unwrap();
        let got: Vec<(String, i32, Offset)> = (tpl.elements().iter())
            .map(|e| (e.topic().to_string(), e.partition(), e.offset()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 0, Offset::Offset(8)),
                ("a".into(), 1, Offset::Offset(10)),
                ("b".into(), 0, Offset::Offset(3)),
            ]
        );
    }
}
