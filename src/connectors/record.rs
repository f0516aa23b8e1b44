//! The values that cross the connector boundary: records read or polled,
//! webhook requests and events, write operations and their outcomes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One record as the external system returned it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalRecord {
    pub object: String,
    pub id: String,
    /// The record's fields as the system names them.
    pub fields: Map<String, Value>,
    /// The system's version marker (SystemModstamp, hs_lastmodifieddate, SyncToken, …).
    pub version: String,
    pub modified_at: DateTime<Utc>,
    #[serde(default)]
    pub deleted: bool,
}

/// A `(modified_at, id)` polling watermark: the next page holds records with
/// a later timestamp, or the same timestamp and a greater id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    pub modified_at: DateTime<Utc>,
    pub id: String,
}

impl Cursor {
    /// A cursor before every record.
    pub fn start() -> Self {
        Cursor {
            modified_at: DateTime::<Utc>::UNIX_EPOCH,
            id: String::new(),
        }
    }

    pub fn of(record: &ExternalRecord) -> Self {
        Cursor {
            modified_at: record.modified_at,
            id: record.id.clone(),
        }
    }
}

/// One page of polled changes.
#[derive(Debug, Clone, Default)]
pub struct ChangePage {
    pub records: Vec<ExternalRecord>,
    /// Token for the next page of the same listing; `None` at the end.
    pub next_page: Option<String>,
}

/// A webhook request as the receiver got it. `url` is the full public URL the
/// vendor called (signatures such as HubSpot v3 cover it).
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub method: String,
    pub url: String,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
    pub received_at: DateTime<Utc>,
}

/// What a webhook or change event says happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    #[serde(rename = "c")]
    Create,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
}

/// One change announced by a webhook or change stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// The vendor's event id, for idempotent redelivery.
    pub event_id: String,
    pub object: String,
    pub id: String,
    pub op: ChangeOp,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub changed_fields: Vec<String>,
    /// Who made the change, as the system reports it (changeOrigin, changeSource, sourceId).
    #[serde(default)]
    pub origin: Option<String>,
    /// Made by extsync's own writes, as the system tells: Salesforce
    /// `changeOrigin` names extsync's `Sforce-Call-Options` client; HubSpot
    /// `changeSource` is `INTEGRATION` with the receiving app as `sourceId`.
    /// Ingest drops these echoes before reading or emitting anything.
    #[serde(default)]
    pub own: bool,
    /// Field values carried by the event; `None` when it carries only the id.
    #[serde(default)]
    pub fields: Option<Map<String, Value>>,
}

/// One write to an external system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    Create {
        fields: Map<String, Value>,
    },
    Update {
        id: String,
        fields: Map<String, Value>,
    },
    /// Create or update by a unique (external-id) field.
    Upsert {
        id_field: String,
        id_value: String,
        fields: Map<String, Value>,
    },
    Delete {
        id: String,
    },
}

/// The result of one successful write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteOutcome {
    pub id: String,
    /// True when the write created the record.
    pub created: bool,
    /// The record's version after the write, when the system returns it.
    pub version: Option<String>,
}
