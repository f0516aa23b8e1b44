//! The property checks every write to the store passes first: known
//! properties, read-only system properties, value types, contact email
//! syntax, the per-type rules and required properties configured through
//! `/__admin/schema`. Failures are listed per property, as HubSpot's
//! `VALIDATION_ERROR` responses do.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::table::Table;
use super::{ObjectType, WriteError};

/// A property-level validation failure, as HubSpot lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyError {
    pub name: String,
    /// HubSpot's code: `PROPERTY_DOESNT_EXIST`, `INVALID_EMAIL`, `READ_ONLY_VALUE`, …
    pub code: String,
    pub message: String,
}

/// A custom validation rule, configured through `/__admin/schema`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub property: String,
    /// Longest accepted value, in characters.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Accepted values (enumeration properties).
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
    /// The value must be a number.
    #[serde(default)]
    pub numeric: bool,
    /// Message shown instead of the default one.
    #[serde(default)]
    pub message: Option<String>,
}

/// Per-type schema: extra (custom) properties, required ones and rules.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub custom_properties: HashSet<String>,
    pub required: Vec<String>,
    pub rules: Vec<Rule>,
}

/// A JSON property value as HubSpot stores it (always a string).
fn value_string(name: &str, v: &Value) -> Result<String, PropertyError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(PropertyError {
            name: name.to_string(),
            code: "INVALID_PROPERTY_VALUE".into(),
            message: format!("Property \"{name}\" has an invalid value type"),
        }),
    }
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
}

impl Table {
    pub(super) fn known(&self, ty: ObjectType, name: &str) -> bool {
        ty.standard_properties().contains(&name)
            || ty.system_properties().contains(&name)
            || self.schema.custom_properties.contains(name)
    }

    /// Checks and normalizes `input`; `creating` enforces required properties.
    pub(super) fn validate(
        &self,
        ty: ObjectType,
        input: &Map<String, Value>,
        creating: bool,
    ) -> Result<BTreeMap<String, String>, WriteError> {
        let mut errors = Vec::new();
        let mut out = BTreeMap::new();
        for (name, v) in input {
            if !self.known(ty, name) {
                errors.push(PropertyError {
                    name: name.clone(),
                    code: "PROPERTY_DOESNT_EXIST".into(),
                    message: format!("Property \"{name}\" does not exist"),
                });
                continue;
            }
            if matches!(
                name.as_str(),
                "hs_object_id" | "hs_lastmodifieddate" | "lastmodifieddate"
            ) {
                errors.push(PropertyError {
                    name: name.clone(),
                    code: "READ_ONLY_VALUE".into(),
                    message: format!(
                        "\"{name}\" is a read only property; its value cannot be set."
                    ),
                });
                continue;
            }
            let value = match value_string(name, v) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if ty == ObjectType::Contacts
                && name == "email"
                && !value.is_empty()
                && !valid_email(&value)
            {
                errors.push(PropertyError {
                    name: name.clone(),
                    code: "INVALID_EMAIL".into(),
                    message: format!("Email address {value} is invalid"),
                });
                continue;
            }
            for rule in self.schema.rules.iter().filter(|r| &r.property == name) {
                if value.is_empty() {
                    continue;
                }
                let broken = rule.max_length.is_some_and(|m| value.chars().count() > m)
                    || rule.allowed.as_ref().is_some_and(|a| !a.contains(&value))
                    || (rule.numeric && value.parse::<f64>().is_err());
                if broken {
                    let code = if rule.allowed.is_some() {
                        "INVALID_OPTION"
                    } else {
                        "INVALID_PROPERTY_VALUE"
                    };
                    errors.push(PropertyError {
                        name: name.clone(),
                        code: code.into(),
                        message: rule.message.clone().unwrap_or_else(|| {
                            format!("{value} was not a valid value for property \"{name}\"")
                        }),
                    });
                }
            }
            out.insert(name.clone(), value);
        }
        if creating {
            for req in &self.schema.required {
                if out.get(req).is_none_or(|v| v.is_empty()) {
                    errors.push(PropertyError {
                        name: req.clone(),
                        code: "MISSING_REQUIRED_PROPERTY".into(),
                        message: format!("Property \"{req}\" is required"),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(WriteError::Validation(errors))
        }
    }
}
