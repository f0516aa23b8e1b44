//! Bookkeeping: what a processed batch leaves in Postgres for the control
//! plane and for the next owner of its records — record states, conflicts,
//! failed records and counters. It is saved while the next batch is
//! processed, and always before the batch's Kafka transaction commits.
//!
//! ```text
//!  batch ──decide, deliver──► Bookkeeping ──save──► extsync.records, conflicts,
//!                                                   failed_records, sync_counters
//!                                          ──then──► Kafka transaction (events, offsets)
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use serde_json::Value;
use tokio_postgres::Client;

use super::batch::{AWAITING_PARENT, PARENT_NOT_LINKED};
use super::change::BillingChange;
use super::events::{Counts, Flow};
use super::merge::{Parked, Resolution, Winner};
use super::state::{RecordKey, StateStore, Unsaved};

/// A conflict settled for a record (with its external id, if linked).
pub type Resolved = (RecordKey, Option<String>, Resolution);
/// A record that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub key: RecordKey,
    pub external_id: Option<String>,
    /// `field_validation`, `parent_not_linked`, `match_review`, …, or
    /// `awaiting_parent` for a record deferred behind its parent (no error).
    pub error_type: String,
    /// The vendor's or the transform's message.
    pub message: String,
    pub flow: Flow,
    /// Fields the failed write would have set (target side names).
    pub fields: Vec<String>,
    /// For `parent_not_linked`: what to re-queue once the parent is linked;
    /// for `awaiting_parent`: at once; for `already_exists`: once the
    /// record's own link is saved.
    pub waiting: Option<ParentWait>,
}

/// A record waiting for a record to be linked (its parent, or itself once
/// a create found it existing) and the change to re-queue then.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentWait {
    /// Entity and billing id of the record waited for, in the record's
    /// integration.
    pub entity: String,
    pub billing_id: String,
    pub change: BillingChange,
}
/// A field whose open `manual` conflict changed: the values it is parked
/// with now, or `None` once it is settled.
pub type Settled = (RecordKey, String, Option<Parked>);

pub fn winner_name(w: Winner) -> &'static str {
    match w {
        Winner::Alguna => "alguna",
        Winner::External => "external",
        Winner::Manual => "manual",
    }
}

/// The configured name of a strategy (`alguna_wins`, …).
pub fn strategy_name(s: crate::config::Strategy) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The fields of `key` whose open `manual` conflict is no longer the one
/// parked before: settled, or parked again with other values.
pub fn parked_changes(
    key: &RecordKey,
    before: &BTreeMap<String, Parked>,
    after: &BTreeMap<String, Parked>,
) -> Vec<Settled> {
    let fields = before
        .keys()
        .chain(after.keys().filter(|f| !before.contains_key(*f)));
    fields
        .filter(|f| before.get(*f) != after.get(*f))
        .map(|f| (key.clone(), f.clone(), after.get(f).cloned()))
        .collect()
}

/// A processed batch's records, not yet saved.
pub struct Bookkeeping {
    /// Record states, already visible to later batches through the cache.
    pub states: Unsaved,
    pub resolutions: Vec<Resolved>,
    pub failures: Vec<Failure>,
    /// Records that synced, so are no longer failed.
    pub synced: Vec<RecordKey>,
    pub counts: BTreeMap<(String, String), Counts>,
    /// Retries that wrote nothing (superseded, deleted meanwhile): the
    /// record's `parent_not_linked` failure ends unless a change newer than
    /// the retried one (committed at the time given) failed since.
    pub waits_ended: Vec<(RecordKey, DateTime<Utc>)>,
    /// A record that children may wait for was linked.
    pub parents_linked: bool,
    /// Open `manual` conflicts that were settled or replaced by a new one.
    pub settled: Vec<Settled>,
}

impl Bookkeeping {
    /// Saves everything in one round of pipelined statements.
    pub async fn save(&self, state: &StateStore, db: &Client) -> Result<(), tokio_postgres::Error> {
        tokio::try_join!(state.save(&self.states), self.record(db))?;
        Ok(())
    }

    /// Records conflicts, failures and counters, statement by statement:
    /// a record's failure is written before a wait of it can end.
    async fn record(&self, db: &Client) -> Result<(), tokio_postgres::Error> {
        record_conflicts(db, &self.resolutions).await?;
        close_settled(db, &self.settled).await?;
        record_failures(db, &self.failures).await?;
        clear_synced(db, &self.synced).await?;
        end_waits(db, &self.waits_ended).await?;
        add_counts(db, &self.counts).await
    }
}

/// Every conflict settled: a row in `extsync.conflicts`.
async fn record_conflicts(
    db: &Client,
    resolutions: &[Resolved],
) -> Result<(), tokio_postgres::Error> {
    if resolutions.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&Resolved) -> Option<String>| {
        resolutions.iter().map(f).collect::<Vec<Option<String>>>()
    };
    let json = |f: &dyn Fn(&Resolution) -> Option<Value>| {
        resolutions
            .iter()
            .map(|r| f(&r.2))
            .collect::<Vec<Option<Value>>>()
    };
    let times = |f: &dyn Fn(&Resolution) -> Option<DateTime<Utc>>| {
        resolutions.iter().map(|r| f(&r.2)).collect::<Vec<_>>()
    };
    db
        .execute(
            "INSERT INTO extsync.conflicts (integration, entity, billing_id, external_id, field, strategy, winner,
                                           alguna_value, external_value, base_alguna, base_external,
                                           external_field, alguna_changed_at, external_changed_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::jsonb[],
                                  $12::text[], $13::timestamptz[], $14::timestamptz[])",
            &[
                &col(&|r| Some(r.0.integration.clone())),
                &col(&|r| Some(r.0.entity.clone())),
                &col(&|r| Some(r.0.billing_id.clone())),
                &col(&|r| r.1.clone()),
                &col(&|r| Some(r.2.field.clone())),
                &col(&|r| Some(strategy_name(r.2.strategy))),
                &col(&|r| Some(winner_name(r.2.winner).to_string())),
                &json(&|r| Some(r.alguna_value.clone())),
                &json(&|r| Some(r.external_value.clone())),
                &json(&|r| r.base_alguna.clone()),
                &json(&|r| r.base_external.clone()),
                &col(&|r| Some(r.2.external_field.clone())),
                &times(&|r| r.alguna_changed_at),
                &times(&|r| r.external_changed_at),
            ],
        )
        .await?;
    Ok(())
}

/// An open conflict whose field settled, or was parked again with other
/// values (recorded as a new conflict), is closed.
async fn close_settled(db: &Client, settled: &[Settled]) -> Result<(), tokio_postgres::Error> {
    if settled.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&Settled) -> &str| settled.iter().map(f).collect::<Vec<&str>>();
    let parked = |f: &dyn Fn(&Parked) -> &Value| {
        settled
            .iter()
            .map(|s| s.2.as_ref().map(f))
            .collect::<Vec<Option<&Value>>>()
    };
    let open: Vec<bool> = settled.iter().map(|s| s.2.is_some()).collect();
    db.execute(
        "UPDATE extsync.conflicts c
            SET resolved_at = now(), resolution = CASE WHEN u.open THEN 'superseded' ELSE 'settled' END
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $7::bool[])
                AS u(i, e, b, f, a, x, open)
          WHERE c.integration = u.i AND c.entity = u.e AND c.billing_id = u.b AND c.field = u.f
            AND c.winner = 'manual' AND c.resolved_at IS NULL
            AND NOT (u.open AND c.alguna_value = u.a AND c.external_value = u.x)",
        &[
            &col(&|s| &s.0.integration),
            &col(&|s| &s.0.entity),
            &col(&|s| &s.0.billing_id),
            &col(&|s| &s.1),
            &parked(&|p| &p.alguna),
            &parked(&|p| &p.external),
            &open,
        ],
    )
    .await?;
    Ok(())
}

/// One row per failed record: the last failure of the batch wins. A new
/// failure is not re-queued yet, whatever the last one was.
async fn record_failures(db: &Client, failures: &[Failure]) -> Result<(), tokio_postgres::Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&Failure) -> Option<String>| {
        failures.iter().map(f).collect::<Vec<Option<String>>>()
    };
    let changes: Vec<Option<Value>> = failures
        .iter()
        .map(|f| {
            f.waiting
                .as_ref()
                .map(|w| serde_json::to_value(&w.change).expect("changes serialize"))
        })
        .collect();
    db
        .execute(
            "INSERT INTO extsync.failed_records AS f (integration, entity, billing_id, external_id, error_type, message,
                                                 parent_entity, parent_billing_id, change)
             SELECT DISTINCT ON (i, e, b) i, e, b, x, t, m, pe, pb, c
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::jsonb[])
                    WITH ORDINALITY AS u(i, e, b, x, t, m, pe, pb, c, n)
              ORDER BY i, e, b, n DESC
             ON CONFLICT (integration, entity, billing_id) DO UPDATE
                SET external_id = excluded.external_id, error_type = excluded.error_type, message = excluded.message,
                    parent_entity = excluded.parent_entity, parent_billing_id = excluded.parent_billing_id,
                    change = excluded.change, requeued_at = NULL,
                    attempts = f.attempts + 1, last_failed_at = now()",
            &[
                &col(&|f| Some(f.key.integration.clone())),
                &col(&|f| Some(f.key.entity.clone())),
                &col(&|f| Some(f.key.billing_id.clone())),
                &col(&|f| f.external_id.clone()),
                &col(&|f| Some(f.error_type.clone())),
                &col(&|f| Some(f.message.clone())),
                &col(&|f| f.waiting.as_ref().map(|w| w.entity.clone())),
                &col(&|f| f.waiting.as_ref().map(|w| w.billing_id.clone())),
                &changes,
            ],
        )
        .await?;
    Ok(())
}

/// A record that synced is no longer failed.
async fn clear_synced(db: &Client, synced: &[RecordKey]) -> Result<(), tokio_postgres::Error> {
    if synced.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&RecordKey) -> &str| synced.iter().map(f).collect::<Vec<&str>>();
    db.execute(
        "DELETE FROM extsync.failed_records f
              USING unnest($1::text[], $2::text[], $3::text[]) AS u(i, e, b)
              WHERE f.integration = u.i AND f.entity = u.e AND f.billing_id = u.b",
        &[
            &col(&|k| &k.integration),
            &col(&|k| &k.entity),
            &col(&|k| &k.billing_id),
        ],
    )
    .await?;
    Ok(())
}

/// A retry that wrote nothing ends its record's wait (`parent_not_linked`
/// or `awaiting_parent`), unless a newer change failed or was deferred since.
async fn end_waits(
    db: &Client,
    waits_ended: &[(RecordKey, DateTime<Utc>)],
) -> Result<(), tokio_postgres::Error> {
    if waits_ended.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&RecordKey) -> &str| {
        waits_ended.iter().map(|(k, _)| f(k)).collect::<Vec<&str>>()
    };
    let at: Vec<DateTime<Utc>> = waits_ended.iter().map(|(_, t)| *t).collect();
    db.execute(
        "DELETE FROM extsync.failed_records f
              USING unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS u(i, e, b, t)
              WHERE f.integration = u.i AND f.entity = u.e AND f.billing_id = u.b
                AND f.error_type = ANY($5) AND (f.change->>'committed_at')::timestamptz <= u.t",
        &[
            &col(&|k| &k.integration),
            &col(&|k| &k.entity),
            &col(&|k| &k.billing_id),
            &at,
            &[PARENT_NOT_LINKED, AWAITING_PARENT].as_slice(),
        ],
    )
    .await?;
    Ok(())
}

/// Adds the batch's counts to `extsync.sync_counters`.
async fn add_counts(
    db: &Client,
    counts: &BTreeMap<(String, String), Counts>,
) -> Result<(), tokio_postgres::Error> {
    for ((integration, entity), c) in counts {
        db
            .execute(
                "INSERT INTO extsync.sync_counters AS s (integration, entity, synced, created, updated, conflicts, errors)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (integration, entity) DO UPDATE SET
                    synced = s.synced + excluded.synced, created = s.created + excluded.created,
                    updated = s.updated + excluded.updated, conflicts = s.conflicts + excluded.conflicts,
                    errors = s.errors + excluded.errors, updated_at = now()",
                &[integration, entity, &(c.synced as i64), &(c.created as i64), &(c.updated as i64), &(c.conflicts as i64), &(c.failed as i64)],
            )
            .await?;
    }
    Ok(())
}
