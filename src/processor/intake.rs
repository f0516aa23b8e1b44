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

use futures::FutureExt;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::runner::RunError;

/// Most messages taken at once, and processed in one part (see
/// [`super::lanes`]).
pub const MAX_BATCH: usize = 500;

/// Waits for the first message (or `stop`), then takes what else is ready.
pub async fn next_batch<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    stop: &CancellationToken,
) -> Option<Result<Vec<OwnedMessage>, RunError>> {
    Some(
        next_message(consumer, stop)
            .await?
            .map(|m| with_ready(consumer, m)),
    )
}

/// Waits for the next message; `None` once `stop` is cancelled. Cancel
/// safe: a message is taken only when it is answered.
async fn next_message<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
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
/// load and a lone change is never held back.
fn with_ready<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    first: OwnedMessage,
) -> Vec<OwnedMessage> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(m.detach()),
            _ => break,
        }
    }
    batch
}

/// Offsets to commit after `batch`: next offset per partition.
pub fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList, RunError> {
    let mut tpl = TopicPartitionList::new();
    for m in batch {
        tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
    }
    Ok(tpl)
}
