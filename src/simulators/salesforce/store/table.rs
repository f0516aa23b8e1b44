//! One sObject's records and its value indexes (external ids, unique
//! fields, references, duplicate-rule fields), keyed by lowercased value;
//! the store's lookups and validation read them, and every write keeps
//! them current.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::super::schema::ObjectSchema;

#[derive(Clone)]
pub(super) struct Table {
    pub(super) schema: Arc<ObjectSchema>,
    pub(super) records: HashMap<String, Map<String, Value>>,
    /// field → lowercased value → ids of live records.
    pub(super) index: HashMap<String, HashMap<String, BTreeSet<String>>>,
}

impl Table {
    fn index_key(v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.to_lowercase()),
            other => Some(other.to_string()),
        }
    }

    pub(super) fn unindex(&mut self, id: &str, rec: &Map<String, Value>) {
        for (field, values) in self.index.iter_mut() {
            if let Some(k) = rec.get(field).and_then(Self::index_key)
                && let Some(ids) = values.get_mut(&k)
            {
                ids.remove(id);
                if ids.is_empty() {
                    values.remove(&k);
                }
            }
        }
    }

    pub(super) fn reindex(&mut self, id: &str, rec: &Map<String, Value>) {
        if rec.get("IsDeleted") == Some(&Value::Bool(true)) {
            return;
        }
        for (field, values) in self.index.iter_mut() {
            if let Some(k) = rec.get(field).and_then(Self::index_key) {
                values.entry(k).or_default().insert(id.to_string());
            }
        }
    }

    pub(super) fn lookup(&self, field: &str, value: &Value) -> Vec<String> {
        let Some(k) = Self::index_key(value) else {
            return Vec::new();
        };
        match self.index.get(field) {
            Some(values) => values
                .get(&k)
                .map(|ids| ids.iter().cloned().collect())
                .unwrap_or_default(),
            None => self
                .records
                .iter()
                .filter(|(_, r)| {
                    r.get("IsDeleted") != Some(&Value::Bool(true))
                        && r.get(field).and_then(Self::index_key).as_deref() == Some(k.as_str())
                })
                .map(|(id, _)| id.clone())
                .collect(),
        }
    }
}
