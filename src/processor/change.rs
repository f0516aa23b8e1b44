//! The changes the processor consumes, whichever side they come from, after
//! routing has keyed them by the canonical record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ingest::ExternalChange;

/// A billing-side change, from a captured row event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillingChange {
    pub schema: String,
    pub table: String,
    /// Primary key as captured (`{"id": 1}`).
    pub key: Map<String, Value>,
    /// `c`, `u`, `d` or `r` (snapshot).
    pub op: String,
    /// Row after the change (`None` for deletes).
    pub after: Option<Map<String, Value>>,
    pub committed_at: DateTime<Utc>,
    /// Replication origin of the transaction, when capture tags own writes.
    #[serde(default)]
    pub origin: Option<String>,
}

/// Origin of a billing change that extsync re-queued after the parent its
/// record waited for was linked (see [`super::retry`]). Such a change is
/// processed only when no later change of its record was.
pub const RETRY_ORIGIN: &str = "retry:parent-linked";

impl BillingChange {
    /// The canonical billing id: the single key value, or the key as JSON.
    pub fn billing_id(&self) -> String {
        billing_id(&self.key)
    }

    /// Whether extsync re-queued this change after its parent was linked.
    pub fn is_retry(&self) -> bool {
        self.origin.as_deref() == Some(RETRY_ORIGIN)
    }

    pub fn is_delete(&self) -> bool {
        self.op == "d"
    }

    /// Whether extsync wrote this change itself (its replication origin).
    pub fn is_own_write(&self) -> bool {
        self.origin
            .as_deref()
            .is_some_and(|o| o.contains(super::decide::ORIGIN_MARKER))
    }
}

/// The canonical id of a primary key object.
pub fn billing_id(key: &Map<String, Value>) -> String {
    if key.len() == 1 {
        match key.values().next().expect("one value") {
            Value::String(s) => return s.clone(),
            Value::Number(n) => return n.to_string(),
            _ => {}
        }
    }
    Value::Object(key.clone()).to_string()
}

/// One message on the processor's input topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "side", rename_all = "snake_case")]
pub enum Change {
    Billing(BillingChange),
    External(ExternalChange),
}

impl Change {
    /// One line for logs: which side, which operation, which version.
    pub fn describe(&self) -> String {
        match self {
            Change::Billing(b) => format!(
                "billing {} at {}{}",
                b.op,
                b.committed_at.to_rfc3339(),
                if b.is_retry() { " (retry)" } else { "" }
            ),
            Change::External(x) => format!(
                "external {:?} {} version {} at {} via {}{}",
                x.op,
                x.external_id,
                x.version,
                x.modified_at.to_rfc3339(),
                x.source.as_str(),
                x.origin
                    .as_deref()
                    .map(|o| format!(" origin {o}"))
                    .unwrap_or_default()
            ),
        }
    }
}
