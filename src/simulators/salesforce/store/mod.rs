//! The in-memory org: one table per sObject, value indexes for external ids,
//! unique fields, references and duplicate rules, the record of what was
//! written, and the Change Data Capture event log. Every write goes through
//! [`Store::create`], [`Store::update`], [`Store::upsert`] or
//! [`Store::delete`], which validate the way Salesforce does and maintain
//! `LastModifiedDate` and `SystemModstamp`.
//!
//! ```text
//!  sobjects / composite ──► Store::{create,update,upsert,delete} ──► tables + indexes
//!                                 │                                  ├─► written log (/__admin/written)
//!                                 └─ validation (required, types,    └─► change events (cometd)
//!                                    rules, unique, duplicates)
//! ```

mod changes;
mod duplicates;
mod ids;
mod table;
mod validation;
mod values;
mod writes;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::query::{self, Cond};
use super::schema::{FieldDef, ObjectSchema};
use table::Table;
use writes::Undo;

pub use changes::{StoredEvent, Written};
pub use duplicates::DuplicateRule;
pub use ids::{ORG_ID, USER_ID, make_id, normalize_id, to_18};
pub use validation::ValidationRule;
pub use values::{format_datetime, normalize_body, parse_datetime, soql_datetime};
pub use writes::{Upserted, WriteCtx};

/// Limits of the logs the store keeps.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub written: usize,
    pub events: usize,
}

/// The simulated org's data.
pub struct Store {
    tables: Vec<Table>,
    rules: Vec<(usize, ValidationRule, Cond)>,
    duplicate_rules: Vec<(usize, DuplicateRule)>,
    next_id: u64,
    next_written: u64,
    written: VecDeque<Written>,
    events: VecDeque<StoredEvent>,
    next_replay: u64,
    commit_number: u64,
    limits: StoreLimits,
    frozen_clock: Option<DateTime<Utc>>,
    undo: Option<Undo>,
}

impl Store {
    pub fn new(
        schemas: Vec<ObjectSchema>,
        rules: Vec<ValidationRule>,
        duplicate_rules: Vec<DuplicateRule>,
        limits: StoreLimits,
    ) -> Result<Self, String> {
        let find = |name: &str, what: &str| {
            schemas
                .iter()
                .position(|s| s.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| format!("{what}: unknown sObject {name:?}"))
        };
        let mut compiled = Vec::new();
        for r in rules {
            let t = find(&r.object, &format!("validation rule {}", r.name))?;
            let expr = query::parse_condition(&r.condition)
                .map_err(|e| format!("validation rule {}: {e}", r.name))?;
            let cond = query::bind(&expr, &schemas[t])
                .map_err(|e| format!("validation rule {}: {}", r.name, e.message))?;
            compiled.push((t, r, cond));
        }
        let mut dups = Vec::new();
        for d in duplicate_rules {
            let t = find(&d.object, &format!("duplicate rule {}", d.name))?;
            for f in &d.fields {
                if schemas[t].field(f).is_none() {
                    return Err(format!("duplicate rule {}: unknown field {f:?}", d.name));
                }
            }
            dups.push((t, d));
        }
        let tables = schemas
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let extra: Vec<String> = dups
                    .iter()
                    .filter(|(t, _)| *t == i)
                    .flat_map(|(_, d)| d.fields.clone())
                    .collect();
                let index = s
                    .indexed(&extra)
                    .into_iter()
                    .map(|f| (f, HashMap::new()))
                    .collect();
                Table {
                    schema: Arc::new(s),
                    records: HashMap::new(),
                    index,
                }
            })
            .collect();
        Ok(Store {
            tables,
            rules: compiled,
            duplicate_rules: dups,
            next_id: 1,
            next_written: 1,
            written: VecDeque::new(),
            events: VecDeque::new(),
            next_replay: 1,
            commit_number: 1,
            limits,
            frozen_clock: None,
            undo: None,
        })
    }

    /// The current time at Salesforce's millisecond precision, or the
    /// frozen time set by `/__admin/clock`.
    pub fn now(&self) -> DateTime<Utc> {
        let t = self.frozen_clock.unwrap_or_else(Utc::now);
        DateTime::from_timestamp_millis(t.timestamp_millis()).expect("in range")
    }

    pub fn freeze_clock(&mut self, at: Option<DateTime<Utc>>) {
        self.frozen_clock = at;
    }

    pub fn schema(&self, object: &str) -> Option<&Arc<ObjectSchema>> {
        self.table_index(object).map(|i| &self.tables[i].schema)
    }

    pub fn schemas(&self) -> impl Iterator<Item = &Arc<ObjectSchema>> {
        self.tables.iter().map(|t| &t.schema)
    }

    fn table_index(&self, object: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.schema.name.eq_ignore_ascii_case(object))
    }

    fn table_of_id(&self, id: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| id.starts_with(t.schema.key_prefix))
    }

    /// A live or deleted record by id.
    pub fn get(&self, object: &str, id: &str) -> Result<&Map<String, Value>, ApiError> {
        let t = self.table_index(object).ok_or_else(ApiError::not_found)?;
        let id = normalize_id(id).ok_or_else(ApiError::not_found)?;
        let rec = self.tables[t]
            .records
            .get(&id)
            .ok_or_else(ApiError::not_found)?;
        if rec.get("IsDeleted") == Some(&Value::Bool(true)) {
            return Err(ApiError::entity_deleted());
        }
        Ok(rec)
    }

    /// A record by its exact id, deleted or not.
    pub fn raw(&self, object: &str, id: &str) -> Option<&Map<String, Value>> {
        self.table_index(object)
            .and_then(|t| self.tables[t].records.get(id))
    }

    /// Ids of live records whose external-id `field` equals `value`.
    pub fn find_by_external_id(
        &self,
        object: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<String>, ApiError> {
        let t = self.table_index(object).ok_or_else(ApiError::not_found)?;
        let table = &self.tables[t];
        let f = external_id_field(&table.schema, field)?;
        if f.name == "Id" {
            return Ok(normalize_id(value)
                .filter(|id| {
                    table
                        .records
                        .get(id)
                        .is_some_and(|r| r.get("IsDeleted") != Some(&Value::Bool(true)))
                })
                .into_iter()
                .collect());
        }
        Ok(table.lookup(&f.name, &Value::String(value.to_string())))
    }

    /// Every record of `object` (deleted ones too), unordered.
    pub fn scan(&self, object: &str) -> impl Iterator<Item = &Map<String, Value>> {
        self.table_index(object)
            .into_iter()
            .flat_map(move |t| self.tables[t].records.values())
    }

    /// A record as the REST API shows it: `attributes`, then the requested
    /// fields (all, in schema order, when `fields` is `None`).
    pub fn render(
        schema: &ObjectSchema,
        rec: &Map<String, Value>,
        fields: Option<&[String]>,
        api_version: &str,
    ) -> Value {
        let id = rec.get("Id").and_then(Value::as_str).unwrap_or_default();
        let mut out = Map::new();
        out.insert(
            "attributes".into(),
            json!({
                "type": schema.name,
                "url": record_url(api_version, &schema.name, id),
            }),
        );
        match fields {
            Some(names) => {
                for n in names {
                    if let Some(f) = schema.field(n) {
                        out.insert(
                            f.name.clone(),
                            rec.get(&f.name).cloned().unwrap_or(Value::Null),
                        );
                    }
                }
            }
            None => {
                for f in &schema.fields {
                    out.insert(
                        f.name.clone(),
                        rec.get(&f.name).cloned().unwrap_or(Value::Null),
                    );
                }
            }
        }
        Value::Object(out)
    }
}

fn external_id_field<'a>(schema: &'a ObjectSchema, field: &str) -> Result<&'a FieldDef, ApiError> {
    schema
        .field(field)
        .filter(|f| f.external_id || f.name == "Id")
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("Provided external ID field does not exist or is not accessible: {field}"),
            )
        })
}

/// The REST URL of a record, in the API version (`vXX.X`) of the request.
fn record_url(api_version: &str, object: &str, id: &str) -> String {
    format!("/services/data/{api_version}/sobjects/{object}/{id}")
}
