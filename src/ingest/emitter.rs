//! The last step of ingest: collapse changes already emitted (same record,
//! same or older version — from any path), write the rest to Kafka, and only
//! then record them as emitted.
//!
//! ```text
//!  webhook / stream / poll ──► Emitter ──claim (moka, then extsync.external_versions)
//!                                      ──produce, await acks──► <prefix>.external.<system>
//!                                      ──record version──────► extsync.external_versions
//! ```
//!
//! Claims are taken atomically in the in-memory cache, so two paths racing on
//! the same version produce it once per process. Across processes (or after a
//! crash between produce and record) a duplicate can occur; it carries the
//! same idempotency key header, which the processor collapses.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use moka::future::Cache;
use moka::ops::compute::Op;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::Client;

use super::event::ExternalChange;
use crate::kafka::Topics;

/// Kafka header carrying [`ExternalChange::idempotency_key`].
pub const IDEMPOTENCY_HEADER: &str = "extsync-idempotency-key";
/// Kafka header naming the path that saw the change.
pub const SOURCE_HEADER: &str = "extsync-source";

/// Metric: external changes written to Kafka.
pub const EMITTED_TOTAL: &str = "extsync_ingest_changes_emitted_total";
/// Metric: changes dropped because that version was already emitted.
pub const COLLAPSED_TOTAL: &str = "extsync_ingest_changes_collapsed_total";

/// Why a batch could not be emitted. Nothing of the batch is recorded as
/// emitted, so the caller (vendor retry, next poll) brings it again.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("Kafka did not acknowledge external change events: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error("reading or recording emitted versions: {0}")]
    State(#[from] tokio_postgres::Error),
}

type RecordKey = (String, String, String);

#[derive(Clone, PartialEq, Eq)]
struct Emitted {
    version: String,
    modified_at: DateTime<Utc>,
}

impl Emitted {
    /// True when `change` adds nothing: the same version, or an older one.
    fn covers(&self, change: &ExternalChange) -> bool {
        self.version == change.version || self.modified_at > change.modified_at
    }
}

/// Writes external changes to Kafka exactly once per record version.
pub struct Emitter {
    producer: FutureProducer,
    topics: Topics,
    state: Arc<Client>,
    recent: Cache<RecordKey, Emitted>,
}

/// How many record versions the in-memory front of the emitted-version table holds.
pub const RECENT_CAPACITY: u64 = 1_000_000;

/// Counts of one [`Emitter::emit`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitStats {
    pub emitted: usize,
    pub collapsed: usize,
}

impl Emitter {
    pub fn new(producer: FutureProducer, topics: Topics, state: Arc<Client>) -> Self {
        Self {
            producer,
            topics,
            state,
            recent: Cache::new(RECENT_CAPACITY),
        }
    }

    /// Emits the changes that are new; returns once Kafka acknowledged them all.
    pub async fn emit(&self, changes: Vec<ExternalChange>) -> Result<EmitStats, EmitError> {
        let total = changes.len();
        let known = self.load_emitted(&changes).await?;
        let mut claimed = Vec::with_capacity(changes.len());
        for (change, stored) in changes.into_iter().zip(known) {
            if self.claim(&change, stored).await {
                claimed.push(change);
            }
        }
        let stats = EmitStats {
            emitted: claimed.len(),
            collapsed: total - claimed.len(),
        };
        if claimed.is_empty() {
            metrics::counter!(COLLAPSED_TOTAL).increment(stats.collapsed as u64);
            return Ok(stats);
        }
        if let Err(e) = self.produce(&claimed).await {
            for c in &claimed {
                self.recent.invalidate(&key(c)).await;
            }
            return Err(e);
        }
        self.record(&claimed).await?;
        let system = claimed[0].system.clone();
        metrics::counter!(EMITTED_TOTAL, "system" => system.clone())
            .increment(stats.emitted as u64);
        metrics::counter!(COLLAPSED_TOTAL, "system" => system).increment(stats.collapsed as u64);
        Ok(stats)
    }

    /// Takes the claim to emit `change` unless that version (or a newer one)
    /// was already emitted or claimed.
    async fn claim(&self, change: &ExternalChange, stored: Option<Emitted>) -> bool {
        if stored.as_ref().is_some_and(|s| s.covers(change)) {
            return false;
        }
        let next = Emitted {
            version: change.version.clone(),
            modified_at: change.modified_at,
        };
        let result = self
            .recent
            .entry(key(change))
            .and_compute_with(|current| {
                let op = match current {
                    Some(e) if e.value().covers(change) => Op::Nop,
                    _ => Op::Put(next),
                };
                std::future::ready(op)
            })
            .await;
        matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        )
    }

    async fn load_emitted(
        &self,
        changes: &[ExternalChange],
    ) -> Result<Vec<Option<Emitted>>, EmitError> {
        let mut out = Vec::with_capacity(changes.len());
        let mut misses = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            let cached = self.recent.get(&key(c)).await;
            if cached.is_none() {
                misses.push(i);
            }
            out.push(cached);
        }
        if misses.is_empty() {
            return Ok(out);
        }
        let integrations: Vec<&str> = misses
            .iter()
            .map(|&i| changes[i].integration.as_str())
            .collect();
        let objects: Vec<&str> = misses.iter().map(|&i| changes[i].object.as_str()).collect();
        let ids: Vec<&str> = misses
            .iter()
            .map(|&i| changes[i].external_id.as_str())
            .collect();
        let rows = self
            .state
            .query(
                "SELECT v.integration, v.object, v.record_id, v.version, v.modified_at
                   FROM extsync.external_versions v
                   JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(integration, object, record_id)
                     USING (integration, object, record_id)",
                &[&integrations, &objects, &ids],
            )
            .await?;
        let stored: std::collections::HashMap<RecordKey, Emitted> = rows
            .into_iter()
            .map(|row| {
                (
                    (row.get(0), row.get(1), row.get(2)),
                    Emitted {
                        version: row.get(3),
                        modified_at: row.get(4),
                    },
                )
            })
            .collect();
        for i in misses {
            out[i] = stored.get(&key(&changes[i])).cloned();
        }
        Ok(out)
    }

    async fn produce(&self, changes: &[ExternalChange]) -> Result<(), EmitError> {
        let sends = changes.iter().map(|c| {
            let topic = self.topics.external(&c.system);
            let payload = serde_json::to_vec(c).expect("external change serializes");
            let idem = c.idempotency_key();
            async move {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: IDEMPOTENCY_HEADER,
                        value: Some(idem.as_bytes()),
                    })
                    .insert(Header {
                        key: SOURCE_HEADER,
                        value: Some(c.source.as_str().as_bytes()),
                    });
                let record = FutureRecord::to(&topic)
                    .key(&c.external_id)
                    .payload(&payload)
                    .headers(headers);
                self.producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }
        });
        for result in join_all(sends).await {
            result.map_err(EmitError::Kafka)?;
        }
        Ok(())
    }

    async fn record(&self, changes: &[ExternalChange]) -> Result<(), EmitError> {
        let integrations: Vec<&str> = changes.iter().map(|c| c.integration.as_str()).collect();
        let objects: Vec<&str> = changes.iter().map(|c| c.object.as_str()).collect();
        let ids: Vec<&str> = changes.iter().map(|c| c.external_id.as_str()).collect();
        let versions: Vec<&str> = changes.iter().map(|c| c.version.as_str()).collect();
        let times: Vec<DateTime<Utc>> = changes.iter().map(|c| c.modified_at).collect();
        self.state
            .execute(
                "INSERT INTO extsync.external_versions AS v (integration, object, record_id, version, modified_at)
                 SELECT DISTINCT ON (integration, object, record_id) *
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                        AS n(integration, object, record_id, version, modified_at)
                  ORDER BY integration, object, record_id, modified_at DESC
                 ON CONFLICT (integration, object, record_id) DO UPDATE
                    SET version = excluded.version, modified_at = excluded.modified_at, emitted_at = now()
                  WHERE v.modified_at <= excluded.modified_at",
                &[&integrations, &objects, &ids, &versions, &times],
            )
            .await?;
        Ok(())
    }
}

fn key(c: &ExternalChange) -> RecordKey {
    (
        c.integration.clone(),
        c.object.clone(),
        c.external_id.clone(),
    )
}
