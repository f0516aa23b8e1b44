//! Search filters: the request's `filterGroups` entries, their operators
//! (`EQ` … `NOT_HAS_PROPERTY`), and the comparable [`Key`] both sides of a
//! filter reduce to before the handler tests records against them.

use std::cmp::Ordering;

use serde::Deserialize;
use serde_json::Value;

use super::super::errors::ApiError;
use super::super::store::{ObjectType, Record, parse_millis};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Filter {
    pub(super) property_name: String,
    pub(super) operator: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    high_value: Option<Value>,
    #[serde(default)]
    values: Option<Vec<Value>>,
    /// `value`, `highValue` and `values` parsed once per request.
    #[serde(skip)]
    pub(super) want: Option<Key>,
    #[serde(skip)]
    pub(super) high: Option<Key>,
    #[serde(skip)]
    keys: Vec<Key>,
    /// The candidate range already enforces this filter.
    #[serde(skip)]
    pub(super) covered: bool,
}

#[derive(Deserialize)]
pub(super) struct FilterGroup {
    #[serde(default)]
    pub(super) filters: Vec<Filter>,
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A comparable form of a property value.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub(super) enum Key {
    Num(f64),
    Str(String),
}

fn key_of(name: &str, raw: &str) -> Key {
    if ObjectType::is_date_property(name)
        && let Some(ms) = parse_millis(raw)
    {
        return Key::Num(ms as f64);
    }
    match raw.parse::<f64>() {
        Ok(n) if n.is_finite() => Key::Num(n),
        _ => Key::Str(raw.to_lowercase()),
    }
}

pub(super) fn record_key(ty: ObjectType, rec: &Record, name: &str) -> Option<Key> {
    if let Some(ms) = rec.property_millis(ty, name)
        && (ObjectType::is_date_property(name) || name == "hs_object_id")
    {
        return Some(Key::Num(ms as f64));
    }
    rec.property(ty, name).map(|v| key_of(name, &v))
}

pub(super) fn compare(a: &Key, b: &Key) -> Option<Ordering> {
    match (a, b) {
        (Key::Num(x), Key::Num(y)) => x.partial_cmp(y),
        (Key::Str(x), Key::Str(y)) => Some(x.cmp(y)),
        (Key::Num(x), Key::Str(y)) => Some(x.to_string().cmp(y)),
        (Key::Str(x), Key::Num(y)) => Some(x.cmp(&y.to_string())),
    }
}

impl Filter {
    pub(super) fn check(&self) -> Result<(), ApiError> {
        let needs_value = matches!(
            self.operator.as_str(),
            "EQ" | "NEQ" | "GT" | "GTE" | "LT" | "LTE" | "CONTAINS_TOKEN" | "NOT_CONTAINS_TOKEN"
        );
        let known = needs_value
            || matches!(
                self.operator.as_str(),
                "BETWEEN" | "IN" | "NOT_IN" | "HAS_PROPERTY" | "NOT_HAS_PROPERTY"
            );
        if !known {
            return Err(ApiError::validation(format!(
                "Invalid operator: {}",
                self.operator
            )));
        }
        if needs_value && self.value.is_none() {
            return Err(ApiError::validation(format!(
                "Filter on {} with operator {} needs a value",
                self.property_name, self.operator
            )));
        }
        if self.operator == "BETWEEN" && (self.value.is_none() || self.high_value.is_none()) {
            return Err(ApiError::validation("BETWEEN needs value and highValue"));
        }
        if matches!(self.operator.as_str(), "IN" | "NOT_IN") && self.values.is_none() {
            return Err(ApiError::validation(format!(
                "{} needs values",
                self.operator
            )));
        }
        Ok(())
    }

    /// Parses the filter's values once, before the scan.
    pub(super) fn prepare(&mut self) {
        let name = self.property_name.as_str();
        self.want = self.value.as_ref().map(|v| key_of(name, &text(v)));
        self.high = self.high_value.as_ref().map(|v| key_of(name, &text(v)));
        self.keys = self
            .values
            .iter()
            .flatten()
            .map(|v| key_of(name, &text(v)))
            .collect();
    }

    pub(super) fn matches(&self, ty: ObjectType, rec: &Record) -> bool {
        let name = self.property_name.as_str();
        let actual = record_key(ty, rec, name);
        let cmp =
            |want: &Option<Key>| -> Option<Ordering> { compare(actual.as_ref()?, want.as_ref()?) };
        let in_values = || {
            let Some(a) = actual.as_ref() else {
                return false;
            };
            self.keys
                .iter()
                .any(|k| compare(a, k) == Some(Ordering::Equal))
        };
        match self.operator.as_str() {
            "EQ" => cmp(&self.want) == Some(Ordering::Equal),
            "NEQ" => cmp(&self.want) != Some(Ordering::Equal),
            "GT" => cmp(&self.want) == Some(Ordering::Greater),
            "GTE" => matches!(cmp(&self.want), Some(Ordering::Greater | Ordering::Equal)),
            "LT" => cmp(&self.want) == Some(Ordering::Less),
            "LTE" => matches!(cmp(&self.want), Some(Ordering::Less | Ordering::Equal)),
            "BETWEEN" => {
                matches!(cmp(&self.want), Some(Ordering::Greater | Ordering::Equal))
                    && matches!(cmp(&self.high), Some(Ordering::Less | Ordering::Equal))
            }
            "IN" => in_values(),
            "NOT_IN" => !in_values(),
            "HAS_PROPERTY" => actual.is_some(),
            "NOT_HAS_PROPERTY" => actual.is_none(),
            "CONTAINS_TOKEN" | "NOT_CONTAINS_TOKEN" => {
                let token = text(self.value.as_ref().unwrap_or(&Value::Null))
                    .trim_matches('*')
                    .to_lowercase();
                let found = rec
                    .property(ty, name)
                    .is_some_and(|v| v.to_lowercase().contains(&token));
                found == (self.operator == "CONTAINS_TOKEN")
            }
            _ => false,
        }
    }
}
