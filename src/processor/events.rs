//! Sync events users consume on `<prefix>.sync-events`: one per record
//! outcome (created, updated, deleted, skipped with a reason, failed with
//! the error), one per conflict, one per error, and a `sync.completed`
//! summary per processed batch. JSON Schema: `schemas/sync-event.schema.json`
//! (`extsync schema sync-event` prints it).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which way a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    ToExternal,
    ToAlguna,
}

/// Outcome of one record in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    Deleted,
    Skipped,
    Failed,
}

/// Why a change that was considered wrote nothing (`outcome: skipped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A billing change extsync made itself (its replication origin).
    OwnWrite,
    /// An external change echoing extsync's own write (origin or content hash).
    Echo,
    /// An external version that was processed already.
    VersionSeen,
    /// An external image older than one processed already.
    OlderVersion,
    /// An external change that changed no mapped field.
    NoMappedChange,
    /// Both sides already hold the same values.
    InSync,
    /// No mapped field flows in this change's direction.
    NoMappedFields,
    /// The record was deleted; it is never written again.
    Deleted,
    /// The external record was deleted: the link ends, the billing row stays.
    DeletedExternally,
    /// The billing row was deleted before it was ever linked.
    DeletedBeforeLinked,
    /// The external record is not linked to a billing row (yet).
    NotLinked,
    /// No external record matches and `createIfNotFound` is off.
    NoMatch,
    /// The external record to update or delete no longer exists, and the
    /// integration skips such writes.
    NotFound,
    /// The create was made by an earlier attempt; it is not made again.
    AlreadyCreated,
    /// The billing row changed after the external change being written.
    RowIsNewer,
    /// The child row references no parent.
    NoParentReference,
    /// A billing change without a row image.
    NoRowImage,
    /// A retried change that a later change of the record already superseded.
    Superseded,
    /// A `latest_wins` conflict with a billing edit whose change is still on
    /// its way: that change settles it, with both change times.
    AwaitsBillingChange,
    /// The parent's change is queued behind this one on its processor: the
    /// change is retried once the parent's change is processed.
    AwaitsParent,
}

/// The reason as it appears in events (`in_sync`, `echo`, …).
impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(Value::String(s)) => f.write_str(&s),
            _ => write!(f, "{self:?}"),
        }
    }
}

/// Counts of one processed batch, per integration and entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Counts {
    pub synced: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub failed: u64,
    pub conflicts: u64,
}

/// One sync event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum SyncEvent {
    /// What happened to one record: one event per change considered.
    #[serde(rename = "sync.record")]
    Record {
        integration: String,
        entity: String,
        billing_id: String,
        external_id: Option<String>,
        flow: Flow,
        outcome: Outcome,
        /// Fields written (target side names); for `failed`, the fields the
        /// write would have set.
        fields: Vec<String>,
        /// For `skipped`: why nothing was written.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<SkipReason>,
        /// For `failed`: the error class, as in `sync.error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_type: Option<String>,
        /// For `failed`: the vendor's or the transform's message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        at: DateTime<Utc>,
    },
    /// A field changed on both sides since the last sync.
    #[serde(rename = "sync.conflict")]
    Conflict {
        integration: String,
        entity: String,
        billing_id: String,
        external_id: Option<String>,
        field: String,
        strategy: String,
        /// `alguna`, `external`, or `manual` (waiting for review).
        winner: String,
        alguna_value: Value,
        external_value: Value,
        base_alguna: Option<Value>,
        base_external: Option<Value>,
        at: DateTime<Utc>,
    },
    /// A record could not be synced.
    #[serde(rename = "sync.error")]
    Error {
        integration: String,
        entity: String,
        /// `None` for an external record linked to no billing row: one
        /// whose match rules fit several rows (`match_review`).
        billing_id: Option<String>,
        external_id: Option<String>,
        /// `field_validation`, `rate_limit`, `auth_expired`, `not_found`, `transient`, …
        error_type: String,
        /// The vendor's or the transform's message.
        message: String,
        at: DateTime<Utc>,
    },
    /// Summary of one processed batch.
    #[serde(rename = "sync.completed")]
    Completed {
        integration: String,
        entity: String,
        counts: Counts,
        at: DateTime<Utc>,
    },
}

impl SyncEvent {
    /// Kafka key: the record (or the integration for summaries).
    pub fn key(&self) -> String {
        match self {
            SyncEvent::Record {
                integration,
                entity,
                billing_id,
                ..
            }
            | SyncEvent::Conflict {
                integration,
                entity,
                billing_id,
                ..
            } => format!("{integration}/{entity}/{billing_id}"),
            SyncEvent::Error {
                integration,
                entity,
                billing_id,
                external_id,
                ..
            } => match (billing_id, external_id) {
                (Some(id), _) => format!("{integration}/{entity}/{id}"),
                (None, Some(x)) => format!("{integration}/{entity}/external/{x}"),
                (None, None) => format!("{integration}/{entity}"),
            },
            SyncEvent::Completed {
                integration,
                entity,
                ..
            } => format!("{integration}/{entity}"),
        }
    }
}

impl SyncEvent {
    /// A `sync.record` event marked `skipped` for `why`; other events are
    /// returned unchanged.
    pub fn skipped(mut self, why: SkipReason) -> Self {
        if let SyncEvent::Record {
            outcome, reason, ..
        } = &mut self
        {
            *outcome = Outcome::Skipped;
            *reason = Some(why);
        }
        self
    }

    /// A `sync.record` event marked `failed` with the error; other events
    /// are returned unchanged.
    pub fn failed(mut self, class: &str, text: &str) -> Self {
        if let SyncEvent::Record {
            outcome,
            error_type,
            message,
            ..
        } = &mut self
        {
            *outcome = Outcome::Failed;
            *error_type = Some(class.to_string());
            *message = Some(text.to_string());
        }
        self
    }
}

/// The JSON Schema committed as `schemas/sync-event.schema.json`.
pub fn schema_json() -> String {
    let mut s =
        serde_json::to_string_pretty(&schemars::schema_for!(SyncEvent)).expect("schema serializes");
    s.push('\n');
    s
}
