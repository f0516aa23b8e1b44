//! The normalized external change event that ingest writes to
//! `<prefix>.external.<system>`, keyed by the external record id, whatever
//! path (webhook, change stream, poll) saw the change.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::connectors::record::ChangeOp;

/// Which path saw the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    Webhook,
    Stream,
    Poll,
}

impl ChangeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Webhook => "webhook",
            ChangeSource::Stream => "stream",
            ChangeSource::Poll => "poll",
        }
    }
}

/// One change of one external record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalChange {
    /// Provider: `salesforce`, `hubspot`, …
    pub system: String,
    /// Integration id from the pipeline file.
    pub integration: String,
    /// Billing entity name the external object maps to.
    pub entity: String,
    /// The system's object name (`Account`, `contacts`).
    pub object: String,
    pub external_id: String,
    #[schemars(with = "OpSchema")]
    pub op: ChangeOp,
    /// The record's fields after the change; `null` for deletions.
    pub after: Option<Map<String, Value>>,
    /// Fields the change touched, when the system says.
    pub changed_fields: Vec<String>,
    /// The system's version marker of the record after the change.
    pub version: String,
    pub modified_at: DateTime<Utc>,
    pub source: ChangeSource,
    /// Who made the change (changeOrigin / changeSource / sourceId).
    pub origin: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// `c` create, `u` update, `d` delete.
#[derive(JsonSchema)]
#[allow(dead_code)]
enum OpSchema {
    #[serde(rename = "c")]
    Create,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
}

impl ExternalChange {
    /// Stable key that is equal for the same version of the same record,
    /// whichever path saw it.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.integration, self.object, self.external_id, self.version
        )
    }
}

/// The JSON Schema committed as `schemas/external-change.schema.json`.
pub fn schema_json() -> String {
    let mut s = serde_json::to_string_pretty(&schemars::schema_for!(ExternalChange))
        .expect("schema serializes");
    s.push('\n');
    s
}
