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
//! the same version produce it once per process. Versions are recorded in
//! Postgres by a background task, many emits per statement, so a webhook is
//! answered as soon as Kafka acknowledged its events; [`Emitter::flush`]
//! waits for the recording. Across processes (or after a crash before the
//! recording) a duplicate can occur; it carries the same idempotency key
//! header, which the processor collapses.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use moka::future::Cache;
use moka::ops::compute::Op;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, oneshot};

use super::event::ExternalChange;
use crate::kafka::Topics;
use crate::store::Db;

/// Kafka header carrying [`ExternalChange::idempotency_key`].
pub const IDEMPOTENCY_HEADER: &str = "extsync-idempotency-key";
/// Kafka header naming the path that saw the change.
pub const SOURCE_HEADER: &str = "extsync-source";

/// Metric: external changes written to Kafka.
pub const EMITTED_TOTAL: &str = "extsync_ingest_changes_emitted_total";
/// Metric: changes dropped because that version was already emitted.
pub const COLLAPSED_TOTAL: &str = "extsync_ingest_changes_collapsed_total";
/// Metric: emitted versions that could not be recorded (possible duplicates).
pub const RECORD_FAILED_TOTAL: &str = "extsync_ingest_versions_unrecorded_total";

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
    state: Db,
    recent: Cache<RecordKey, Emitted>,
    recorder: mpsc::UnboundedSender<Recording>,
}

/// Work for the background recorder.
enum Recording {
    /// Emitted versions: (integration, object, record id, version, modified at).
    Versions(Vec<(String, String, String, String, DateTime<Utc>)>),
    /// Answered once everything sent before it is recorded.
    Flush(oneshot::Sender<()>),
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
    /// Creates the emitter and starts its recorder (inside a Tokio runtime).
    pub fn new(producer: FutureProducer, topics: Topics, state: Db) -> Self {
        let (recorder, work) = mpsc::unbounded_channel();
        tokio::spawn(record_versions(state.clone(), work));
        Self {
            producer,
            topics,
            state,
            recent: Cache::new(RECENT_CAPACITY),
            recorder,
        }
    }

    /// Waits until every version emitted so far is recorded in Postgres.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.recorder.send(Recording::Flush(done)).is_ok() {
            let _ = wait.await;
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
        self.record(&claimed);
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
            .client()
            .await?
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

    /// Hands the emitted versions to the recorder.
    fn record(&self, changes: &[ExternalChange]) {
        let rows = changes
            .iter()
            .map(|c| {
                (
                    c.integration.clone(),
                    c.object.clone(),
                    c.external_id.clone(),
                    c.version.clone(),
                    c.modified_at,
                )
            })
            .collect();
        // The recorder lives as long as the emitter's sender.
        let _ = self.recorder.send(Recording::Versions(rows));
    }
}

fn key(c: &ExternalChange) -> RecordKey {
    (
        c.integration.clone(),
        c.object.clone(),
        c.external_id.clone(),
    )
}

/// Records emitted versions: everything queued is written in one statement,
/// then the flushes queued meanwhile are answered. A failed write is logged;
/// it costs at most duplicates, which carry their idempotency key.
async fn record_versions(state: Db, mut work: mpsc::UnboundedReceiver<Recording>) {
    while let Some(first) = work.recv().await {
        let mut rows = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Recording::Versions(v) => rows.extend(v),
                Recording::Flush(f) => flushes.push(f),
            }
            next = work.try_recv().ok();
        }
        if !rows.is_empty()
            && let Err(e) = insert_versions(&state, &rows).await
        {
            metrics::counter!(RECORD_FAILED_TOTAL).increment(rows.len() as u64);
            tracing::warn!(error = %e, versions = rows.len(), "recording emitted versions failed");
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

async fn insert_versions(
    state: &Db,
    rows: &[(String, String, String, String, DateTime<Utc>)],
) -> Result<(), tokio_postgres::Error> {
    let integrations: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let objects: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let versions: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.4).collect();
    state
        .client()
        .await?
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
