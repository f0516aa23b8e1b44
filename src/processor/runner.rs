//! The processor's Kafka loops: the router re-keys external changes onto
//! the repartition topic; each integration's processor (a consumer group of
//! its own) consumes it beside the change topics, partition by partition, by
//! record (see [`super::route`]); its partitions are processed side by side
//! ([`super::lanes`]). Each loop commits its outputs and its
//! consumer offsets in one Kafka transaction, with a producer fenced by its
//! transactional id and the group's generation.
//!
//! ```text
//!  external.* (+ cdc.* not placed by record) ──router (txn)──► processor.changes ─┐
//!  cdc.* ─────────────────────────────────────────────────────────────────────────┴─processor (txn)──► sync-events
//!                                                                                    └─ delivery, state (Postgres)
//! ```

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::batch::Processor;
use super::change::Change;
use super::commit::Committer;
use super::handover::Ownership;
use super::intake::{next_batch, next_offsets};
use super::lanes::{LaneContext, Lanes};
use super::route::{self, CHANGES_TOPIC};
use crate::kafka::Topics;

/// How long a loop's transaction may stay open before the broker aborts it.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Metric: messages routed, by kind.
pub const ROUTED_TOTAL: &str = "extsync_router_changes_total";
/// Metric: messages that are not change events.
pub const MALFORMED_TOTAL: &str = "extsync_router_malformed_total";
/// Metric: how long the oldest message of a batch waited in Kafka before
/// its loop took it, by stage (`router`, `processor`).
pub const QUEUED_SECONDS: &str = "extsync_processor_queued_seconds";

/// Registers the loops' metric descriptions.
pub fn describe_metrics() {
    metrics::describe_counter!(
        ROUTED_TOTAL,
        "Changes re-keyed onto the repartition topic, by side"
    );
    metrics::describe_counter!(
        MALFORMED_TOTAL,
        "Messages skipped because they are not change events"
    );
    metrics::describe_histogram!(
        QUEUED_SECONDS,
        metrics::Unit::Seconds,
        "Time the oldest message of a batch spent in Kafka before its stage took it, by stage"
    );
}

/// Records how long the oldest message of `batch` waited in Kafka.
fn observe_queued(stage: &'static str, batch: &[OwnedMessage]) {
    let now = chrono::Utc::now().timestamp_millis();
    if let Some(oldest) = batch.iter().filter_map(|m| m.timestamp().to_millis()).min() {
        let waited = (now - oldest).max(0) as f64 / 1000.0;
        metrics::histogram!(QUEUED_SECONDS, "stage" => stage).record(waited);
        tracing::debug!(
            stage,
            messages = batch.len(),
            queued_ms = now - oldest,
            "batch taken"
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("processor state: {0}")]
    State(#[from] tokio_postgres::Error),
}

pub(super) type OwnerConsumer = StreamConsumer<Ownership>;

/// Names and client settings of one pipeline's processor.
#[derive(Clone)]
pub struct RunnerConfig {
    pub topics: Topics,
    /// Base client config (brokers, pass-through options).
    pub kafka: ClientConfig,
    /// Distinguishes this process's transactional ids.
    pub instance: String,
    /// Change topics of the mapped tables.
    pub cdc_topics: Vec<String>,
    /// External change topics of the enabled integrations, created here so
    /// that the router's subscription matches them from the start.
    pub external_topics: Vec<String>,
    /// Partitions of the topics created here (`kafka.partitions`): the
    /// most processors that share work.
    pub partitions: i32,
    /// Which of them the processor reads directly, and which the router
    /// re-keys; set by [`RunnerConfig::ensure_topics`].
    pub layout: Layout,
}

/// How the change topics reach the processor.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Partitions of the repartition topic.
    pub changes_partitions: i32,
    /// Change topics placed by record with as many partitions as the
    /// repartition topic: read by the processor itself.
    pub direct: Vec<String>,
    /// Other change topics: re-keyed by the router.
    pub routed: Vec<String>,
}

impl RunnerConfig {
    fn consumer(
        &self,
        group: &str,
        state: Option<&super::state::StateStore>,
    ) -> Result<OwnerConsumer, RunError> {
        let mut cc = self.kafka.clone();
        // No static membership (`group.instance.id`): the router subscribes
        // by pattern, and a static member's new subscription does not
        // trigger a rebalance, so topics created later would never be read.
        // A short session instead hands a dead process's partitions over
        // within seconds.
        cc.set("group.id", group)
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("topic.metadata.refresh.interval.ms", "2000")
            .set("fetch.wait.max.ms", "100")
            // Range assignment gives one member partition `n` of every
            // topic with the same count: both sides of a record.
            .set("partition.assignment.strategy", "range");
        Ok(cc.create_with_context(Ownership {
            state: state.cloned(),
            handover: Arc::default(),
        })?)
    }

    fn producer(&self, role: &str) -> Result<FutureProducer, RunError> {
        let mut cc = self.kafka.clone();
        cc.set(
            "transactional.id",
            format!("{}-{role}-{}", self.topics.prefix(), self.instance),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Records wait for [`crate::kafka::deliver_queued`], which sends them in one request.
        .set("linger.ms", "100")
        .set("transaction.timeout.ms", "60000");
        let p: FutureProducer = cc.create()?;
        p.init_transactions(TXN_TIMEOUT)?;
        Ok(p)
    }

    fn changes_topic(&self) -> String {
        format!("{}.{CHANGES_TOPIC}", self.topics.prefix())
    }

    /// Creates the processor's topics and the change topics of the mapped
    /// tables when missing, and decides the [`Layout`].
    pub async fn ensure_topics(&mut self) -> Result<(), RunError> {
        let admin: AdminClient<DefaultClientContext> = self.kafka.create()?;
        let changes = self.changes_topic();
        let events = self.topics.sync_events();
        let mut topics = vec![
            NewTopic::new(&changes, self.partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&events, self.partitions, TopicReplication::Fixed(1)),
        ];
        topics.extend(
            self.cdc_topics
                .iter()
                .chain(&self.external_topics)
                .map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(-1))),
        );
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.create_topics(&topics, &opts).await? {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => tracing::warn!(topic = t, error = %e, "creating topic"),
            }
        }
        let (cc, mut names) = (self.kafka.clone(), self.cdc_topics.clone());
        names.push(changes.clone());
        let counts =
            tokio::task::spawn_blocking(move || crate::kafka::partition_counts(&cc, &names))
                .await
                .map_err(|_| rdkafka::error::KafkaError::Canceled)??;
        let changes_partitions = counts.get(&changes).copied().unwrap_or(self.partitions);
        let (direct, routed): (Vec<String>, Vec<String>) = self
            .cdc_topics
            .iter()
            .cloned()
            .partition(|t| counts.get(t) == Some(&changes_partitions));
        if !routed.is_empty() {
            tracing::info!(topics = ?routed, changes_partitions, "change topics with another partition count go through the router");
        }
        self.layout = Layout {
            changes_partitions,
            direct,
            routed,
        };
        Ok(())
    }
}

/// A keyed record to publish, on a chosen partition or by key hash.
pub struct Record {
    pub key: String,
    pub partition: Option<i32>,
    pub payload: Vec<u8>,
}

/// Records to publish in one transaction.
type Records = Vec<Record>;

/// Publishes `records` to `topic` and the consumer offsets after the
/// batch in one Kafka transaction; aborts it on any error. The broker
/// round trips run on a blocking thread, not on an async worker.
pub(super) async fn transact(
    producer: FutureProducer,
    group: Arc<rdkafka::consumer::ConsumerGroupMetadata>,
    offsets: TopicPartitionList,
    topic: String,
    records: Records,
) -> Result<(), RunError> {
    producer.begin_transaction()?;
    let sent = async {
        let mut deliveries = Vec::with_capacity(records.len());
        for r in &records {
            let mut record = FutureRecord::to(&topic).key(&r.key).payload(&r.payload);
            if let Some(p) = r.partition {
                record = record.partition(p);
            }
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        let p = producer.clone();
        let n = records.len();
        tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            // The records leave in one request per broker, at once; their
            // delivery is awaited first to keep the commit's own flush short.
            crate::kafka::deliver_queued(p.client(), TXN_TIMEOUT)?;
            let t_sent = t0.elapsed();
            p.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
            let t_offsets = t0.elapsed();
            let r = p.commit_transaction(TXN_TIMEOUT);
            tracing::debug!(records = n, ?t_sent, ?t_offsets, total = ?t0.elapsed(), "transaction committed");
            r
        })
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)??;
        for d in deliveries {
            d.await
                .map_err(|_| rdkafka::error::KafkaError::Canceled)?
                .map_err(|(e, _)| e)?;
        }
        Ok::<(), rdkafka::error::KafkaError>(())
    }
    .await;
    if sent.is_err() {
        let p = producer.clone();
        let _ = tokio::task::spawn_blocking(move || p.abort_transaction(TXN_TIMEOUT)).await;
    }
    Ok(sent?)
}

fn group(consumer: &OwnerConsumer) -> rdkafka::consumer::ConsumerGroupMetadata {
    consumer.group_metadata().expect("group consumer")
}

/// Logs why a loop restarts; a fenced producer means another process took
/// over this process's transactional id.
fn warn_restart(role: &'static str, e: &RunError) {
    use rdkafka::types::RDKafkaErrorCode::{Fenced, InvalidProducerEpoch, ProducerFenced};
    let fenced = matches!(e, RunError::Kafka(k)
        if matches!(k.rdkafka_error_code(), Some(Fenced | ProducerFenced | InvalidProducerEpoch)));
    if fenced {
        tracing::error!(role, error = %e, "fenced by another process with the same transactional id: give each process its own EXTSYNC_INSTANCE; restarting from committed offsets");
    } else {
        tracing::warn!(role, error = %e, "restarting from committed offsets");
    }
}

/// Runs the router until `stop`. Errors restart its clients from the last
/// committed offsets.
pub async fn run_router(
    cfg: RunnerConfig,
    mappings: Arc<super::mapping::Mappings>,
    state: super::state::StateStore,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        if let Err(e) = router_session(&cfg, &mappings, &state, &stop).await {
            warn_restart("router", &e);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A consumed message as a change: CDC topics carry change events, external
/// topics external change events, the repartition topic [`Change`]s. `None`
/// for a tombstone, a truncate, or a malformed message (counted and logged).
pub(super) fn decode(m: &impl Message, cdc_prefix: &str, external_prefix: &str) -> Option<Change> {
    if m.topic().starts_with(cdc_prefix) {
        return match route::parse_cdc(m.topic(), m.key(), m.payload()) {
            Ok(b) => b.map(Change::Billing),
            Err(e) => {
                metrics::counter!(MALFORMED_TOTAL).increment(1);
                tracing::warn!(error = %e, "skipping message");
                None
            }
        };
    }
    let payload = m.payload()?;
    let decoded = if m.topic().starts_with(external_prefix) {
        serde_json::from_slice(payload).map(Change::External)
    } else {
        serde_json::from_slice::<Change>(payload)
    };
    if decoded.is_err() {
        metrics::counter!(MALFORMED_TOTAL).increment(1);
        tracing::warn!(
            topic = m.topic(),
            "skipping message that is not a change event"
        );
    }
    decoded.ok()
}

async fn router_session(
    cfg: &RunnerConfig,
    mappings: &super::mapping::Mappings,
    state: &super::state::StateStore,
    stop: &CancellationToken,
) -> Result<(), RunError> {
    let prefix = cfg.topics.prefix().replace('.', "\\.");
    let consumer = cfg.consumer(&format!("{}-router", cfg.topics.prefix()), None)?;
    let external = format!("^{prefix}\\.external\\.[^.]+$");
    let mut subscription = vec![external.as_str()];
    subscription.extend(cfg.layout.routed.iter().map(String::as_str));
    consumer.subscribe(&subscription)?;
    let producer = cfg.producer("router")?;
    let out_topic = cfg.changes_topic();
    let cdc_prefix = format!("{}.cdc.", cfg.topics.prefix());
    let external_prefix = format!("{}.external.", cfg.topics.prefix());
    let partitions = cfg.layout.changes_partitions.max(1);
    while let Some(batch) = next_batch(&consumer, stop).await {
        let batch = batch?;
        observe_queued("router", &batch);
        let mut records = Records::new();
        for m in &batch {
            let Some(change) = decode(m, &cdc_prefix, &external_prefix) else {
                continue;
            };
            let Some(to) = route::route(mappings, state, &change, partitions).await? else {
                continue;
            };
            let side = match change {
                Change::Billing(_) => "billing",
                Change::External(_) => "external",
            };
            metrics::counter!(ROUTED_TOTAL, "side" => side).increment(1);
            records.push(Record {
                key: to.key,
                partition: Some(to.partition),
                payload: serde_json::to_vec(&change).expect("change serializes"),
            });
        }
        transact(
            producer.clone(),
            Arc::new(group(&consumer)),
            next_offsets(&batch)?,
            out_topic.clone(),
            records,
        )
        .await?;
    }
    Ok(())
}

/// The consumer group of `integration`'s processor.
pub fn processor_group(topics: &Topics, integration: &str) -> String {
    format!("{}-processor-{integration}", topics.prefix())
}

/// Runs the processor of `integration` until `stop`. A batch whose delivery
/// is paused is retried with backoff (its offsets stay uncommitted), which
/// holds back this integration only: each integration's processor is a
/// consumer group of its own, reading the change topics at its own pace.
/// Kafka errors restart the clients from the last committed offsets.
pub async fn run_processor(
    cfg: RunnerConfig,
    integration: String,
    processor: Arc<Processor>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        if let Err(e) = processor_session(&cfg, &integration, &processor, &stop).await {
            warn_restart("processor", &e);
            processor.state.clear_cache();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn processor_session(
    cfg: &RunnerConfig,
    integration: &str,
    processor: &Arc<Processor>,
    stop: &CancellationToken,
) -> Result<(), RunError> {
    let consumer = cfg.consumer(
        &processor_group(&cfg.topics, integration),
        Some(&processor.state),
    )?;
    let changes_topic = cfg.changes_topic();
    let mut subscription = vec![changes_topic.as_str()];
    subscription.extend(cfg.layout.direct.iter().map(String::as_str));
    consumer.subscribe(&subscription)?;
    let committer = Committer::start(
        processor.clone(),
        cfg.producer(&format!("processor-{integration}"))?,
        cfg.topics.sync_events(),
    );
    let session = stop.child_token();
    let mut lanes = Lanes::new(LaneContext {
        processor: processor.clone(),
        commits: committer.sender(),
        session: session.clone(),
        handover: consumer.context().handover.clone(),
        cdc_prefix: format!("{}.cdc.", cfg.topics.prefix()),
        external_prefix: format!("{}.external.", cfg.topics.prefix()),
    });
    let taken = take_batches(&consumer, &session, &mut lanes).await;
    session.cancel();
    // However the session ends, the queued batches' saves land before a new
    // session reads state, so an old save never overwrites a newer one; the
    // consumer stays in its group until their transaction is done.
    let lanes_done = lanes.finish().await;
    let last = committer.finish().await;
    taken.and(lanes_done).and(last)
}

/// Takes batches until `session` ends and hands them to the lanes (see
/// [`super::lanes`]), which start parts as their partitions become idle.
/// While a partition has [`super::lanes::MAX_WAITING`] messages waiting, the loop
/// only waits for parts to finish.
async fn take_batches(
    consumer: &OwnerConsumer,
    session: &CancellationToken,
    lanes: &mut Lanes,
) -> Result<(), RunError> {
    loop {
        // Taking a batch is cancel safe (see [`super::intake`]).
        tokio::select! {
            taken = next_batch(consumer, session), if !lanes.is_full() => {
                let Some(batch) = taken else { return Ok(()) };
                let batch = batch?;
                observe_queued("processor", &batch);
                lanes.take(batch, group(consumer));
            }
            done = lanes.settle_one() => done?,
            _ = session.cancelled() => return Ok(()),
        }
    }
}

/// One log line per record written, conflict or error: what the sync did
/// (skipped records only at debug).
pub(super) fn announce(events: &[super::events::SyncEvent]) {
    use super::events::{Outcome, SyncEvent};
    for ev in events {
        match ev {
            SyncEvent::Record {
                integration,
                entity,
                billing_id,
                external_id,
                flow,
                outcome,
                fields,
                reason,
                ..
            } => match outcome {
                // A failure is announced by its `sync.error`.
                Outcome::Failed => {}
                Outcome::Skipped => {
                    tracing::debug!(integration, entity, billing_id, ?flow, ?reason, "skipped");
                }
                _ => {
                    tracing::info!(integration, entity, billing_id, external_id = external_id.as_deref().unwrap_or("-"), ?flow, ?outcome, fields = %fields.join(","), "synced");
                }
            },
            SyncEvent::Conflict {
                integration,
                entity,
                billing_id,
                field,
                strategy,
                winner,
                ..
            } => {
                tracing::info!(
                    integration,
                    entity,
                    billing_id,
                    field,
                    strategy,
                    winner,
                    "conflict"
                );
            }
            SyncEvent::Error {
                integration,
                entity,
                billing_id,
                external_id,
                error_type,
                message,
                ..
            } => {
                tracing::warn!(
                    integration,
                    entity,
                    billing_id = billing_id.as_deref().unwrap_or("-"),
                    external_id = external_id.as_deref().unwrap_or("-"),
                    error_type,
                    message,
                    "sync failed"
                );
            }
            SyncEvent::Completed { .. } => {}
        }
    }
}
