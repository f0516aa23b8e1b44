//! Retries of records that failed waiting for their parent. A
//! `parent_not_linked` failure keeps the parent it waits for and the change
//! that failed. An `already_exists` failure (a create the system refused
//! because the record exists; extsync linked it) waits the same way for its
//! own link, so its change is re-queued as soon as that link is saved.
//! After a save that linked a parent or recorded such a failure, the
//! failed records whose parent is linked now have that change
//! re-queued onto the repartition topic, on the record's partition (see
//! [`crate::kafka::record_partition`]): the record's owner, which reads
//! that partition beside the record's change topic, processes the retry.
//! A record deferred because its parent's change was queued behind it
//! (`awaiting_parent`, see [`super::queued`]) is re-queued at once, so its
//! retry comes after the parent's change; the retry waits for the parent
//! like any change, and is never deferred again.
//!
//! ```text
//!  child change ──wait (bounded)──► parent_not_linked ──► failed_records (parent, change)
//!               ──parent queued behind──► awaiting_parent ─┘
//!  save: a parent linked, or a child failed ──► failed children whose parent is linked, deferred children
//!        ──► <prefix>.processor.changes (the child's partition, origin RETRY_ORIGIN) ──► the child's owner
//! ```
//!
//! Both saves query after they write, so whichever of "parent linked" and
//! "child failed" is saved second finds the pair. A retry is marked
//! re-queued only once Kafka has it; one that was not is found again by the
//! next pass. The two topics are not ordered with each other: a retry that
//! comes after a later change of its record was processed is a no-op
//! (`superseded`), so the newer row is never written over.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio_postgres::Client;

use crate::store::Db;

use super::batch::AWAITING_PARENT;
use super::change::{BillingChange, Change, RETRY_ORIGIN};
use super::route::{self, CHANGES_TOPIC};
use super::state::RecordKey;
use crate::kafka::Topics;

/// Most failed records re-queued in one pass; more wait for the next one.
pub const REQUEUE_LIMIT: i64 = 1_000;
/// How long one retry may take to reach Kafka.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Metric: failed records re-queued after their parent was linked.
pub const REQUEUED_TOTAL: &str = "extsync_processor_requeued_total";

/// Registers the retries' metric description.
pub fn describe_metrics() {
    metrics::describe_counter!(
        REQUEUED_TOTAL,
        "Failed records re-queued once the parent they waited for was linked"
    );
}

#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("reading records waiting for their parent: {0}")]
    State(#[from] tokio_postgres::Error),
    #[error("re-queueing a record: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} does not exist yet")]
    NoTopic(String),
}

/// Re-queues failed records once the link they wait for is saved.
pub struct Requeue {
    producer: FutureProducer,
    kafka: ClientConfig,
    topic: String,
    /// Partitions of the repartition topic, read from the broker once.
    partitions: OnceLock<i32>,
    /// A pass is due: something was saved that may have readied a retry,
    /// or the last pass did not finish. True at start, for retries a
    /// previous process left.
    due: AtomicBool,
    /// The integrations whose failed records this processor retries.
    integrations: Vec<String>,
}

impl Requeue {
    /// A requeue onto the repartition topic of `topics`.
    pub fn new(
        kafka: ClientConfig,
        topics: &Topics,
        integrations: Vec<String>,
    ) -> Result<Self, RequeueError> {
        let producer: FutureProducer = crate::kafka::durable_producer(kafka.clone()).create()?;
        Ok(Self {
            producer,
            kafka,
            topic: format!("{}.{CHANGES_TOPIC}", topics.prefix()),
            partitions: OnceLock::new(),
            due: AtomicBool::new(true),
            integrations,
        })
    }

    /// Marks a pass as due.
    pub fn wake(&self) {
        self.due.store(true, Ordering::Release);
    }

    /// Runs a pass if one is due; a pass that fails is due again. Returns
    /// how many records were re-queued.
    pub async fn run_if_due(&self, db: &Db) -> usize {
        if !self.due.swap(false, Ordering::AcqRel) {
            return 0;
        }
        match self.pass(db).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "re-queueing records whose awaited link is saved; trying again after the next batch");
                self.wake();
                0
            }
        }
    }

    /// Partitions of the repartition topic.
    async fn partitions(&self) -> Result<i32, RequeueError> {
        if let Some(n) = self.partitions.get() {
            return Ok(*n);
        }
        let (cc, topic) = (self.kafka.clone(), self.topic.clone());
        let counts = tokio::task::spawn_blocking(move || {
            crate::kafka::partition_counts(&cc, std::slice::from_ref(&topic))
        })
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)??;
        let n = counts
            .get(&self.topic)
            .copied()
            .ok_or_else(|| RequeueError::NoTopic(self.topic.clone()))?;
        Ok(*self.partitions.get_or_init(|| n))
    }

    /// Re-queues the failed records whose awaited link (parent or own) is saved now.
    async fn pass(&self, db: &Db) -> Result<usize, RequeueError> {
        let db = db.client().await?;
        let rows = db
            .query(
                "SELECT f.integration, f.entity, f.billing_id, f.change, f.last_failed_at
                   FROM extsync.failed_records f
                   LEFT JOIN extsync.records r ON r.integration = f.integration AND r.entity = f.parent_entity
                                              AND r.billing_id = f.parent_billing_id
                  WHERE f.parent_entity IS NOT NULL AND f.requeued_at IS NULL AND f.change IS NOT NULL
                    AND (r.external_id IS NOT NULL OR f.error_type = $3) AND f.integration = ANY($2)
                  LIMIT $1",
                &[&REQUEUE_LIMIT, &self.integrations, &AWAITING_PARENT],
            )
            .await?;
        if rows.len() as i64 >= REQUEUE_LIMIT {
            self.wake();
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let partitions = self.partitions().await?;
        let (read, messages) = retries_of(&rows, partitions);
        self.send(&messages).await?;
        if read.is_empty() {
            return Ok(0);
        }
        mark_requeued(&db, &read).await?;
        let requeued = messages.len();
        metrics::counter!(REQUEUED_TOTAL).increment(requeued as u64);
        tracing::debug!(
            records = requeued,
            "re-queued records whose awaited link is saved"
        );
        Ok(requeued)
    }

    /// Sends the retries and waits until Kafka has every one.
    async fn send(&self, messages: &[Retry]) -> Result<(), RequeueError> {
        let deliveries = messages.iter().map(|(key, partition, payload)| {
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .key(key)
                    .partition(*partition)
                    .payload(payload),
                SEND_TIMEOUT,
            )
        });
        for d in futures::future::join_all(deliveries).await {
            d.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

/// A retry message: its key, partition and payload.
type Retry = (String, i32, Vec<u8>);

/// Each failure read, with the time it was recorded, and the retry
/// messages of those whose change this version can read (one it cannot
/// read is marked too: it never could be).
fn retries_of(
    rows: &[tokio_postgres::Row],
    partitions: i32,
) -> (Vec<(RecordKey, DateTime<Utc>)>, Vec<Retry>) {
    let mut read = Vec::with_capacity(rows.len());
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let key = RecordKey {
            integration: row.get(0),
            entity: row.get(1),
            billing_id: row.get(2),
        };
        read.push((key, row.get(4)));
        let mut change = match serde_json::from_value::<BillingChange>(row.get::<_, Value>(3)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "a failed record's change cannot be read; not retried");
                continue;
            }
        };
        change.origin = Some(RETRY_ORIGIN.to_string());
        let id = change.billing_id();
        let key = route::billing_key(&change.schema, &change.table, &id);
        let partition = crate::kafka::record_partition(&id, partitions);
        let payload = serde_json::to_vec(&Change::Billing(change)).expect("changes serialize");
        messages.push((key, partition, payload));
    }
    (read, messages)
}

/// Marks the failures read as re-queued: only those, so one recorded since
/// is re-queued anew.
async fn mark_requeued(
    db: &Client,
    read: &[(RecordKey, DateTime<Utc>)],
) -> Result<(), tokio_postgres::Error> {
    let col = |f: fn(&RecordKey) -> &str| read.iter().map(|(k, _)| f(k)).collect::<Vec<&str>>();
    let at: Vec<DateTime<Utc>> = read.iter().map(|(_, t)| *t).collect();
    db.execute(
        "UPDATE extsync.failed_records f SET requeued_at = now()
           FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS u(i, e, b, t)
          WHERE f.integration = u.i AND f.entity = u.e AND f.billing_id = u.b AND f.last_failed_at = u.t",
        &[
            &col(|k| &k.integration),
            &col(|k| &k.entity),
            &col(|k| &k.billing_id),
            &at,
        ],
    )
    .await?;
    Ok(())
}
