//! Sync events users consume on `<prefix>.sync-events`: one per record
//! outcome, one per conflict, one per error, and a `sync.completed` summary
//! per processed batch. JSON Schema: `schemas/sync-event.schema.json`.

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
    /// What happened to one record.
    #[serde(rename = "sync.record")]
    Record {
        integration: String,
        entity: String,
        billing_id: String,
        external_id: Option<String>,
        flow: Flow,
        outcome: Outcome,
        /// Fields written (target side names).
        fields: Vec<String>,
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
        billing_id: String,
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
            }
            | SyncEvent::Error {
                integration,
                entity,
                billing_id,
                ..
            } => {
                format!("{integration}/{entity}/{billing_id}")
            }
            SyncEvent::Completed {
                integration,
                entity,
                ..
            } => format!("{integration}/{entity}"),
        }
    }
}

/// The JSON Schema committed as `schemas/sync-event.schema.json`.
pub fn schema_json() -> String {
    let mut s =
        serde_json::to_string_pretty(&schemars::schema_for!(SyncEvent)).expect("schema serializes");
    s.push('\n');
    s
}
