//! What to do about one change of one record for one integration entity:
//! suppress echoes, link, merge against the base, and plan the writes. Pure:
//! the engine loads what this needs and applies what it plans.
//!
//! ```text
//!  change + state ──► echo? ──► linked? ──► merge ──► Plan (writes, resolutions) + next state
//!                                  └─ no ─► externalIdField / match rules / createIfNotFound
//! ```
//!
//! [`billing_change`] plans a billing-side change, [`external_change`] an
//! external one; this module holds what they share: the plan, the decision
//! and the hash that recognises extsync's own writes.

mod billing;
mod external;

pub use billing::billing_change;
pub use external::{external_change, with_external};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::events::SkipReason;
use super::mapping::{EntityMap, FieldMap};
use super::merge::Resolution;
use super::record;
use super::state::RecordState;
use crate::delivery::ExternalWrite;

/// What the engine should do.
///
/// One plan exists per change and is moved once into the batch's writes, so
/// the size of `Write` costs nothing worth a box.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Plan {
    /// Nothing to write, and why (reported in the record's `skipped` event).
    Nothing(SkipReason),
    Write {
        external: Option<ExternalWrite>,
        /// Billing columns to set (column name → value).
        billing: Option<Map<String, Value>>,
        resolutions: Vec<Resolution>,
    },
    /// Several candidates could be the counterpart: a person decides.
    Review(Vec<(String, f64)>),
    /// The record must wait until its parent is linked.
    NeedsParent { entity: String, billing_id: String },
    /// The change cannot be synced (e.g. a transform failed).
    Failed {
        error_type: &'static str,
        message: String,
    },
}

impl Plan {
    /// One line for logs: what will be written, or why nothing is.
    pub fn summary(&self) -> String {
        match self {
            Plan::Nothing(why) => format!("nothing: {why}"),
            Plan::Write {
                external,
                billing,
                resolutions,
            } => format!(
                "write external [{}] billing [{}] resolutions {}",
                external
                    .as_ref()
                    .map(|w| w.fields.keys().cloned().collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                billing
                    .as_ref()
                    .map(|b| b.keys().cloned().collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                resolutions.len()
            ),
            Plan::Review(c) => format!("review: {} candidates", c.len()),
            Plan::NeedsParent { entity, billing_id } => format!("waits for {entity} {billing_id}"),
            Plan::Failed {
                error_type,
                message,
            } => format!("failed: {error_type}: {message}"),
        }
    }
}

/// A plan and the state to keep once it is carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub plan: Plan,
    pub state: RecordState,
}

impl Decision {
    /// Nothing to write, for `why`.
    fn nothing(why: SkipReason, state: RecordState) -> Decision {
        Decision {
            plan: Plan::Nothing(why),
            state,
        }
    }

    /// The writes of a merge, or nothing when it leaves both sides as they
    /// are and resolved no conflict.
    fn write(
        external: Option<ExternalWrite>,
        billing: Option<Map<String, Value>>,
        resolutions: Vec<Resolution>,
        state: RecordState,
    ) -> Decision {
        let plan = if external.is_none() && billing.is_none() && resolutions.is_empty() {
            Plan::Nothing(SkipReason::InSync)
        } else {
            Plan::Write {
                external,
                billing,
                resolutions,
            }
        };
        Decision { plan, state }
    }
}

/// Marker in a change's origin that says extsync made it (Salesforce
/// `changeOrigin` carries the client id `extsync`).
pub const ORIGIN_MARKER: &str = "extsync";

/// Hash of the external fields extsync writes, to recognise echoes.
pub fn external_hash(entity: &EntityMap, fields: &Map<String, Value>) -> String {
    hash_fields(entity.fields.iter().filter(|f| f.to_external), fields)
}

/// Whether two external images agree on every mapped field, whatever its direction.
fn same_mapped_fields(entity: &EntityMap, a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    entity
        .fields
        .iter()
        .all(|f| record::get(a, &f.external) == record::get(b, &f.external))
}

fn hash_fields<'a>(
    mapped: impl Iterator<Item = &'a FieldMap>,
    fields: &Map<String, Value>,
) -> String {
    // The hash of the JSON object of the fields, sorted by name (the last
    // of a repeated name wins), written straight into the hash.
    let mut picked: Vec<(&str, &Value)> = mapped
        .filter_map(|f| record::get(fields, &f.external).map(|v| (f.external.as_str(), v)))
        .collect();
    picked.sort_by_key(|(name, _)| *name);
    let mut out = HashWriter(Sha256::new());
    out.0.update(b"{");
    let mut first = true;
    for (i, (name, value)) in picked.iter().enumerate() {
        if picked.get(i + 1).is_some_and(|(next, _)| next == name) {
            continue;
        }
        if !first {
            out.0.update(b",");
        }
        first = false;
        serde_json::to_writer(&mut out, name).expect("names serialize");
        out.0.update(b":");
        serde_json::to_writer(&mut out, value).expect("JSON values serialize");
    }
    out.0.update(b"}");
    hex::encode(&out.0.finalize()[..16])
}

/// Feeds what is written to a hash.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Billing columns for merged view paths: nested paths rewrite their whole
/// JSON column with the one value changed.
fn billing_columns(
    view: &Map<String, Value>,
    to_alguna: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    if to_alguna.is_empty() {
        return None;
    }
    let mut updated = view.clone();
    let mut columns = Map::new();
    for (path, value) in to_alguna {
        let p: crate::config::FieldPath = path.parse().expect("mapping paths are valid");
        record::set(&mut updated, &p, value.clone());
        let top = p
            .segments()
            .next()
            .expect("a path has a segment")
            .to_string();
        columns.insert(record::snake_case(&top), updated[&top].clone());
    }
    Some(columns)
}

/// A `field_validation` failure: a transform or a mapped value the change
/// cannot be synced with.
fn failed(message: String, state: RecordState) -> Decision {
    Decision {
        plan: Plan::Failed {
            error_type: "field_validation",
            message,
        },
        state,
    }
}

fn value_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
