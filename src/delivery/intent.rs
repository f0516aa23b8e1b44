//! The writes the processor hands to delivery, and what became of them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::connectors::ErrorClass;

/// What to do to one external record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalWriteOp {
    /// Create the record. Guarded: when the entity has a `billingIdField`,
    /// the writer upserts by it, so a retry or replay finds the first create.
    Create,
    /// Update the linked record `external_id`.
    Update { external_id: String },
    /// Delete the linked record `external_id`.
    Delete { external_id: String },
}

/// One write to an external system, for one billing record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalWrite {
    pub integration: String,
    pub entity: String,
    /// External object, e.g. `Account`.
    pub object: String,
    /// The canonical (billing) record id, as a string.
    pub billing_id: String,
    pub op: ExternalWriteOp,
    /// External fields to set (external names, external representation).
    pub fields: Map<String, Value>,
    /// External field that stores the billing id (`Alguna_Id__c`), used for
    /// idempotent creates by upsert.
    pub billing_id_field: Option<String>,
    /// Stable across retries and replays of the same change.
    pub idempotency_key: String,
}

/// One write to the billing database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillingWrite {
    /// `schema.table`.
    pub table: String,
    /// Primary key columns and values.
    pub key: Map<String, Value>,
    /// Columns to set (billing column names; nested view paths already folded
    /// into their JSON columns).
    pub columns: Map<String, Value>,
    /// The external change time this write carries; a row changed after it
    /// is not overwritten.
    pub as_of: DateTime<Utc>,
}

/// The result of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Created,
    Updated,
    Deleted,
    /// Nothing to do (not found with `skip`, or a newer version present).
    Skipped,
    Failed,
}

/// What became of one [`ExternalWrite`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    pub billing_id: String,
    pub kind: OutcomeKind,
    /// The external id after the write (new for creates).
    pub external_id: Option<String>,
    /// The external version after the write, when the system returns it.
    pub version: Option<String>,
    /// For failures: the class and the vendor's message.
    pub error: Option<(ErrorClass, String)>,
}
