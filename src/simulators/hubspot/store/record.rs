//! One CRM record as the store keeps it (string properties, created and
//! modified times in epoch milliseconds) and its `SimplePublicObject` JSON,
//! which the object, batch and search handlers return.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::ObjectType;

/// Epoch milliseconds as HubSpot writes datetimes: `2024-05-01T10:00:00.123Z`.
pub fn iso_millis(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A filter value or stored date as epoch milliseconds (`1714557600123` or RFC 3339).
pub fn parse_millis(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_millis())
    })
}

/// One CRM record.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub props: BTreeMap<String, String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub archived: bool,
}

/// Which properties a response carries.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// Everything set, plus the system properties (write responses).
    All,
    /// The type's default properties.
    Default,
    /// Exactly these (missing ones as `null`).
    Only(&'a [String]),
}

impl Record {
    /// A property's value, system properties included.
    pub fn property(&self, ty: ObjectType, name: &str) -> Option<String> {
        match name {
            "hs_object_id" => Some(self.id.to_string()),
            "createdate" => Some(iso_millis(self.created_ms)),
            "hs_lastmodifieddate" => Some(iso_millis(self.updated_ms)),
            "lastmodifieddate" if ty == ObjectType::Contacts => Some(iso_millis(self.updated_ms)),
            _ => self.props.get(name).cloned(),
        }
    }

    /// A property as a number for comparisons: dates as epoch ms, ids and amounts as numbers.
    pub fn property_millis(&self, ty: ObjectType, name: &str) -> Option<i64> {
        match name {
            "hs_object_id" => Some(self.id as i64),
            "createdate" => Some(self.created_ms),
            "hs_lastmodifieddate" => Some(self.updated_ms),
            "lastmodifieddate" if ty == ObjectType::Contacts => Some(self.updated_ms),
            _ => self.props.get(name).and_then(|v| parse_millis(v)),
        }
    }

    /// The `SimplePublicObject` form.
    pub fn to_json(&self, ty: ObjectType, sel: Selection<'_>) -> Value {
        let mut props = Map::new();
        let mut put = |name: &str| {
            let v = self
                .property(ty, name)
                .map(Value::String)
                .unwrap_or(Value::Null);
            props.insert(name.to_string(), v);
        };
        match sel {
            Selection::All => {
                for name in self.props.keys() {
                    put(name);
                }
                for name in ty.system_properties() {
                    put(name);
                }
            }
            Selection::Default => {
                for name in ty.default_properties() {
                    put(name);
                }
            }
            Selection::Only(names) => {
                for name in names {
                    put(name);
                }
                for name in ["hs_object_id", "createdate", "hs_lastmodifieddate"] {
                    put(name);
                }
            }
        }
        let mut out = json!({
            "id": self.id.to_string(),
            "properties": props,
            "createdAt": iso_millis(self.created_ms),
            "updatedAt": iso_millis(self.updated_ms),
            "archived": self.archived,
        });
        if self.archived {
            out["archivedAt"] = Value::String(iso_millis(self.updated_ms));
        }
        out
    }
}
