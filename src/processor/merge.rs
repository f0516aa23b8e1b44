//! Three-way conflict resolution. For every mapped field, the billing value
//! and the external value are each compared with the base — the values both
//! sides had when they were last in sync. A field changed on one side flows
//! to the other; a field changed on both sides to different values is a
//! conflict, settled by the field's strategy and always recorded.
//!
//! A `manual` conflict parks the field: neither side is written and its
//! base is held back, so the base also keeps the values the conflict was
//! recorded with. The same conflict is then recorded once, however many
//! later changes the record sees; a new value on either side is a new
//! conflict, and the two sides coming to agree settles it.
//!
//! ```text
//!            base (last synced)
//!           /                  \
//!   billing now            external now
//!           \                  /
//!            merge ──► writes to each side, resolutions, parked manual conflicts, new base
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::mapping::{EntityMap, FieldMap, Mappings};
use super::record;
use super::transform::TransformError;
use crate::config::{Strategy, Transform};

/// The values of every mapped field when both sides were last in sync,
/// keyed by the billing field path; each side in its own representation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Base {
    pub alguna: BTreeMap<String, Value>,
    pub external: BTreeMap<String, Value>,
    /// Open `manual` conflicts, keyed by the billing field path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parked: BTreeMap<String, Parked>,
}

/// The values both sides held when a `manual` conflict was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    pub alguna: Value,
    pub external: Value,
}

/// One side's current state and when it was last changed.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub fields: &'a Map<String, Value>,
    pub changed_at: DateTime<Utc>,
}

/// Who won a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Winner {
    Alguna,
    External,
    /// Parked for a person to decide.
    Manual,
}

/// A recorded conflict and how it was settled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub field: String,
    pub external_field: String,
    pub strategy: Strategy,
    pub winner: Winner,
    pub alguna_value: Value,
    pub external_value: Value,
    pub base_alguna: Option<Value>,
    pub base_external: Option<Value>,
    /// When each side last changed, as `latest_wins` compares them (absent
    /// when unknown).
    pub alguna_changed_at: Option<DateTime<Utc>>,
    pub external_changed_at: Option<DateTime<Utc>>,
}

/// What one merge decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merge {
    /// External fields to write (external paths, external representation).
    pub to_external: Map<String, Value>,
    /// Billing fields to write (billing view paths, billing representation).
    pub to_alguna: Map<String, Value>,
    /// Every new conflict, with its settlement (a conflict already parked
    /// with the same values is not repeated).
    pub resolutions: Vec<Resolution>,
    /// The base once the writes are applied (parked fields keep their old
    /// base, and the base records them as parked).
    pub base: Base,
}

impl Merge {
    pub fn conflicts(&self) -> usize {
        self.resolutions.len()
    }

    pub fn manual(&self) -> impl Iterator<Item = &Resolution> {
        self.resolutions
            .iter()
            .filter(|r| r.winner == Winner::Manual)
    }
}

/// Merges the current billing and external states of one linked record.
/// Takes the base by value and returns the next one in [`Merge::base`].
pub fn merge(
    mappings: &Mappings,
    entity: &EntityMap,
    base: Base,
    alguna: Side<'_>,
    external: Side<'_>,
) -> Result<Merge, TransformError> {
    let mut out = Merge {
        base,
        ..Merge::default()
    };
    for f in &entity.fields {
        merge_field(mappings, f, &alguna, &external, &mut out)?;
    }
    Ok(out)
}

/// Merges one mapped field into `out`.
fn merge_field(
    mappings: &Mappings,
    f: &FieldMap,
    alguna: &Side<'_>,
    external: &Side<'_>,
    out: &mut Merge,
) -> Result<(), TransformError> {
    let key = f.alguna.as_str();
    let a = record::get(alguna.fields, &f.alguna).unwrap_or(&Value::Null);
    let e = record::get(external.fields, &f.external).unwrap_or(&Value::Null);
    // The billing value as the external system would hold it; a plain
    // mapping needs no copy.
    let converted;
    let a_as_ext = if f.transform == Transform::None && f.custom.is_none() {
        a
    } else {
        converted = mappings
            .to_external(f, alguna.fields)?
            .unwrap_or(Value::Null);
        &converted
    };
    if same(a_as_ext, e) {
        agree(&mut out.base, key, a, e);
        return Ok(());
    }
    let base_a = out.base.alguna.get(key);
    let base_e = out.base.external.get(key);
    // One-way fields ignore changes on the side that does not flow.
    let a_changed = f.to_external && base_a != Some(a);
    let e_changed = f.to_alguna && base_e != Some(e);
    let winner = match (a_changed, e_changed) {
        (false, false) => return Ok(()),
        (true, false) => Winner::Alguna,
        (false, true) => Winner::External,
        (true, true) => {
            let w = strategy_winner(f.strategy, alguna, external);
            let parked = out.base.parked.get(key);
            if w == Winner::Manual && parked.is_some_and(|p| p.alguna == *a && p.external == *e) {
                // Still the conflict recorded before: nothing new.
                return Ok(());
            }
            let known = |t: DateTime<Utc>| (t > DateTime::<Utc>::UNIX_EPOCH).then_some(t);
            out.resolutions.push(Resolution {
                field: key.to_string(),
                external_field: f.external.as_str().to_string(),
                strategy: f.strategy,
                winner: w,
                alguna_value: a.clone(),
                external_value: e.clone(),
                base_alguna: base_a.cloned(),
                base_external: base_e.cloned(),
                alguna_changed_at: known(alguna.changed_at),
                external_changed_at: known(external.changed_at),
            });
            w
        }
    };
    match winner {
        Winner::Manual => {
            let parked = Parked {
                alguna: a.clone(),
                external: e.clone(),
            };
            out.base.parked.insert(key.to_string(), parked);
        }
        Winner::Alguna => {
            out.base.parked.remove(key);
            let v = a_as_ext.clone();
            out.to_external
                .insert(f.external.as_str().to_string(), v.clone());
            out.base.alguna.insert(key.to_string(), a.clone());
            out.base.external.insert(key.to_string(), v);
        }
        Winner::External => {
            out.base.parked.remove(key);
            let e_as_alg = mappings
                .to_alguna(f, external.fields)?
                .unwrap_or(Value::Null);
            out.to_alguna.insert(key.to_string(), e_as_alg.clone());
            out.base.alguna.insert(key.to_string(), e_as_alg);
            out.base.external.insert(key.to_string(), e.clone());
        }
    }
    Ok(())
}

/// Both sides hold the same value: the base moves to it (no copy when it
/// already holds it), and an open conflict on the field is settled.
fn agree(base: &mut Base, key: &str, a: &Value, e: &Value) {
    if base.alguna.get(key) != Some(a) {
        base.alguna.insert(key.to_string(), a.clone());
    }
    if base.external.get(key) != Some(e) {
        base.external.insert(key.to_string(), e.clone());
    }
    base.parked.remove(key);
}

/// Who wins a field changed on both sides, by the field's strategy.
fn strategy_winner(strategy: Strategy, alguna: &Side<'_>, external: &Side<'_>) -> Winner {
    match strategy {
        Strategy::AlgunaWins => Winner::Alguna,
        Strategy::ExternalWins => Winner::External,
        // Ties go to the billing side, the system of record.
        Strategy::LatestWins if external.changed_at > alguna.changed_at => Winner::External,
        Strategy::LatestWins => Winner::Alguna,
        Strategy::Manual => Winner::Manual,
    }
}

/// Equality that treats `1` and `1.0` (and numeric strings from `numeric`
/// columns) as the same amount.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Number(x), Value::String(y)) | (Value::String(y), Value::Number(x)) => {
            y.trim().parse::<f64>().ok() == x.as_f64()
        }
        _ => a == b,
    }
}
