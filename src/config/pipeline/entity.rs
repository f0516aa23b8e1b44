//! One entity of an integration: how a billing table maps to an external
//! object — field mappings and transforms, conflict strategies, matching
//! rules and parent links.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::{Direction, Name, TableName};
use crate::config::scalar::parse_scalar;

/// How one billing entity maps to one external object.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Entity {
    /// External object, e.g. `Account`, `companies`.
    pub external_object: String,
    /// Billing table, `schema.table`.
    pub table: TableName,
    /// Field on the billing row holding the external id, e.g. `external_id`.
    #[serde(default)]
    pub external_id_field: Option<String>,
    /// Field on the external record holding the billing id (for upserts).
    #[serde(default)]
    pub billing_id_field: Option<String>,
    /// Parent entity that must be linked before this one is written.
    #[serde(default)]
    pub parent: Option<ParentRef>,
    pub mappings: Vec<FieldMapping>,
    #[serde(default)]
    pub conflict_resolution: ConflictResolution,
    #[serde(default)]
    pub matching: Option<Matching>,
    /// What a write does when the linked external record no longer exists
    /// (the vendor answers `not_found`).
    #[serde(default)]
    pub on_not_found: OnNotFound,
}

/// What a write to a linked external record that no longer exists does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnNotFound {
    /// Write nothing: the record's outcome is `skipped` and it stays linked
    /// to the missing record.
    #[default]
    Skip,
    /// Create the record again (by upsert on `billingIdField` when set) and
    /// link the billing record to the new one.
    Create,
}

/// A reference from a child entity to its parent, e.g. contacts → accounts.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// Entity name of the parent in the same integration.
    pub entity: Name,
    /// Billing column holding the parent's billing id.
    pub alguna: String,
    /// External field holding the parent's external id.
    pub external: String,
}

/// One field mapping. Paths may be nested: `billingAddress.line1`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FieldMapping {
    pub alguna: FieldPath,
    pub external: FieldPath,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub transform: Transform,
    /// JavaScript function body for `transform: custom`, e.g. `return value.toUpperCase();`.
    #[serde(default)]
    pub function: Option<String>,
}

/// A dotted path into a JSON object.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct FieldPath(
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"))] String,
);

impl FieldPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for FieldPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.split('.').all(|seg| {
                let mut c = seg.chars();
                c.next()
                    .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
                    && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
            });
        if ok {
            Ok(FieldPath(s.into()))
        } else {
            Err(format!(
                "invalid field path {s:?}: expected names joined by '.', e.g. billingAddress.line1"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, str::parse)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    #[default]
    None,
    NumberToCurrency,
    DateToIso,
    BooleanToString,
    Custom,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    AlgunaWins,
    ExternalWins,
    #[default]
    LatestWins,
    Manual,
}

/// Conflict strategies: a default and per-field overrides keyed by the
/// billing-side field path.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConflictResolution {
    #[serde(default)]
    pub default: Strategy,
    #[serde(default)]
    pub per_field: BTreeMap<FieldPath, Strategy>,
}

impl ConflictResolution {
    pub fn strategy_for(&self, alguna_field: &FieldPath) -> Strategy {
        self.per_field
            .get(alguna_field)
            .copied()
            .unwrap_or(self.default)
    }
}

/// How unlinked records find their counterpart.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Matching {
    /// Billing-side fields compared with their mapped external fields.
    pub fields: Vec<FieldPath>,
    #[serde(default)]
    pub mode: MatchMode,
    /// Similarity required for a fuzzy match (0–1).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Create the record on the other side when nothing matches.
    #[serde(default)]
    pub create_if_not_found: bool,
}

fn default_threshold() -> f64 {
    0.9
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    #[default]
    Exact,
    Fuzzy,
}
