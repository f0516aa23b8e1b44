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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiErrors};
use super::query::{self, Cond};
use super::schema::{FieldDef, FieldType, ObjectSchema};

/// The id of the simulated integration user (`CreatedById`, `commitUser`).
pub const USER_ID: &str = "005Dn000000XtSaIAK";
/// The simulated org's id.
pub const ORG_ID: &str = "00DDn00000AbCdEMAV";

/// Salesforce's datetime wire format: `2024-01-15T10:30:00.000+0000`.
pub fn format_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

/// Parses Salesforce's datetime format and RFC 3339.
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECKSUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// An 18-character id: key prefix, pod, reserved digit, a base-62 counter
/// and the case-safe suffix. Ids of one object sort in creation order.
pub fn make_id(prefix: &str, n: u64) -> String {
    let mut digits = [b'0'; 9];
    let mut v = n;
    for d in digits.iter_mut().rev() {
        *d = BASE62[(v % 62) as usize];
        v /= 62;
    }
    let id15 = format!(
        "{prefix}Dn0{}",
        std::str::from_utf8(&digits).expect("ascii")
    );
    to_18(&id15)
}

/// Adds the case-safe suffix to a 15-character id.
pub fn to_18(id15: &str) -> String {
    let mut out = id15.to_string();
    for chunk in id15.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        out.push(CHECKSUM[bits] as char);
    }
    out
}

/// An id in its 18-character form, if it looks like one.
pub fn normalize_id(id: &str) -> Option<String> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => Some(to_18(id)),
        18 => Some(id.to_string()),
        _ => None,
    }
}

/// A custom validation rule: when `condition` (a SOQL `WHERE` expression
/// over the record after the write) is true, the write is rejected with
/// `FIELD_CUSTOM_VALIDATION_EXCEPTION`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidationRule {
    pub object: String,
    pub name: String,
    pub condition: String,
    pub message: String,
    /// The field the error is shown on; `None` shows it at the top of the page.
    #[serde(default)]
    pub error_field: Option<String>,
}

/// A duplicate rule: a write is blocked with `DUPLICATES_DETECTED` when
/// another live record has the same values (case-insensitively) in all of
/// `fields`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DuplicateRule {
    pub object: String,
    pub name: String,
    pub fields: Vec<String>,
}

/// Who is writing and in which transaction.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    pub api_version: String,
    /// The `client` of the `Sforce-Call-Options` header.
    pub client: Option<String>,
    pub transaction_key: String,
}

impl WriteCtx {
    /// `changeOrigin` of change events caused by this write.
    pub fn change_origin(&self) -> String {
        match &self.client {
            Some(c) => format!("com/salesforce/api/rest/{};client={c}", self.api_version),
            None => format!("com/salesforce/api/rest/{}", self.api_version),
        }
    }
}

/// One entry of `/__admin/written`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    pub seq: u64,
    pub at: String,
    pub object: String,
    pub op: &'static str,
    pub id: String,
    pub fields: Map<String, Value>,
    pub client: Option<String>,
}

/// One stored change event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub replay_id: u64,
    pub entity: String,
    /// The Bayeux `data` member: `{schema, payload, event: {replayId}}`.
    pub data: Value,
}

/// The outcome of an upsert.
pub enum Upserted {
    Created(String),
    Updated(String),
    /// Several records have the external id value (HTTP 300).
    Multiple(Vec<String>),
}

#[derive(Clone)]
struct Table {
    schema: Arc<ObjectSchema>,
    records: HashMap<String, Map<String, Value>>,
    /// field → lowercased value → ids of live records.
    index: HashMap<String, HashMap<String, BTreeSet<String>>>,
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

    fn unindex(&mut self, id: &str, rec: &Map<String, Value>) {
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

    fn reindex(&mut self, id: &str, rec: &Map<String, Value>) {
        if rec.get("IsDeleted") == Some(&Value::Bool(true)) {
            return;
        }
        for (field, values) in self.index.iter_mut() {
            if let Some(k) = rec.get(field).and_then(Self::index_key) {
                values.entry(k).or_default().insert(id.to_string());
            }
        }
    }

    fn lookup(&self, field: &str, value: &Value) -> Vec<String> {
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

/// A record's state before a write: table, id, previous value.
type Before = (usize, String, Option<Map<String, Value>>);

struct Undo {
    records: Vec<Before>,
    written_len: usize,
    events_len: usize,
    next_replay: u64,
}

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
                "url": format!("/services/data/{api_version}/sobjects/{}/{id}", schema.name),
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

    /// Starts an all-or-none unit: [`Store::rollback`] undoes every write since.
    pub fn begin(&mut self) {
        self.undo = Some(Undo {
            records: Vec::new(),
            written_len: self.written.len(),
            events_len: self.events.len(),
            next_replay: self.next_replay,
        });
    }

    pub fn rollback(&mut self) {
        let Some(undo) = self.undo.take() else {
            return;
        };
        for (t, id, before) in undo.records.into_iter().rev() {
            let table = &mut self.tables[t];
            if let Some(cur) = table.records.remove(&id) {
                table.unindex(&id, &cur);
            }
            if let Some(old) = before {
                table.reindex(&id, &old);
                table.records.insert(id, old);
            }
        }
        self.written.truncate(undo.written_len);
        self.events.truncate(undo.events_len);
        self.next_replay = undo.next_replay;
    }

    /// Ends a unit of work: trims the logs and advances the commit number.
    pub fn commit(&mut self) {
        self.undo = None;
        while self.written.len() > self.limits.written {
            self.written.pop_front();
        }
        while self.events.len() > self.limits.events {
            self.events.pop_front();
        }
        self.commit_number += 1;
    }

    fn save_undo(&mut self, t: usize, id: &str) {
        if let Some(undo) = self.undo.as_mut() {
            undo.records
                .push((t, id.to_string(), self.tables[t].records.get(id).cloned()));
        }
    }

    fn put(&mut self, t: usize, id: &str, rec: Map<String, Value>) {
        self.save_undo(t, id);
        let table = &mut self.tables[t];
        if let Some(old) = table.records.remove(id) {
            table.unindex(id, &old);
        }
        table.reindex(id, &rec);
        table.records.insert(id.to_string(), rec);
    }

    /// Creates a record; returns its id.
    pub fn create(
        &mut self,
        ctx: &WriteCtx,
        object: &str,
        body: &Map<String, Value>,
    ) -> Result<String, ApiErrors> {
        let t = self.table_index(object).ok_or_else(ApiError::not_found)?;
        let schema = self.tables[t].schema.clone();
        let values = normalize_body(&schema, body, false)?;
        let mut rec = values.clone();
        rec.entry("OwnerId")
            .or_insert_with(|| Value::String(USER_ID.into()));
        self.validate(t, &schema, &rec, None, &values)?;

        let id = make_id(schema.key_prefix, self.next_id);
        self.next_id += 1;
        let now = format_datetime(self.now());
        rec.insert("Id".into(), Value::String(id.clone()));
        rec.insert("IsDeleted".into(), Value::Bool(false));
        for f in ["CreatedDate", "LastModifiedDate", "SystemModstamp"] {
            rec.insert(f.into(), Value::String(now.clone()));
        }
        for f in ["CreatedById", "LastModifiedById"] {
            rec.insert(f.into(), Value::String(USER_ID.into()));
        }
        self.log_written(ctx, &schema.name, "create", &id, values);
        self.emit(ctx, &schema, "CREATE", &id, &rec, None);
        self.put(t, &id, rec);
        Ok(id)
    }

    /// Updates a live record.
    pub fn update(
        &mut self,
        ctx: &WriteCtx,
        object: &str,
        id: &str,
        body: &Map<String, Value>,
    ) -> Result<(), ApiErrors> {
        let t = self.table_index(object).ok_or_else(ApiError::not_found)?;
        let schema = self.tables[t].schema.clone();
        let id = normalize_id(id).ok_or_else(ApiError::not_found)?;
        let current = self.tables[t]
            .records
            .get(&id)
            .ok_or_else(ApiError::not_found)?
            .clone();
        if current.get("IsDeleted") == Some(&Value::Bool(true)) {
            return Err(ApiError::entity_deleted().into());
        }
        let values = normalize_body(&schema, body, true)?;
        let mut rec = current.clone();
        for (k, v) in &values {
            rec.insert(k.clone(), v.clone());
        }
        self.validate(t, &schema, &rec, Some(&id), &values)?;
        let now = format_datetime(self.now());
        rec.insert("LastModifiedDate".into(), Value::String(now.clone()));
        rec.insert("SystemModstamp".into(), Value::String(now));
        rec.insert("LastModifiedById".into(), Value::String(USER_ID.into()));
        self.log_written(ctx, &schema.name, "update", &id, values);
        self.emit(ctx, &schema, "UPDATE", &id, &rec, Some(&current));
        self.put(t, &id, rec);
        Ok(())
    }

    /// Creates or updates by an external-id field.
    pub fn upsert(
        &mut self,
        ctx: &WriteCtx,
        object: &str,
        field: &str,
        value: &str,
        body: &Map<String, Value>,
    ) -> Result<Upserted, ApiErrors> {
        let t = self.table_index(object).ok_or_else(ApiError::not_found)?;
        let schema = self.tables[t].schema.clone();
        let f = external_id_field(&schema, field)?;
        let mut body = body.clone();
        if let Some(k) = body
            .keys()
            .find(|k| k.eq_ignore_ascii_case(&f.name))
            .cloned()
        {
            let given = body.remove(&k).unwrap_or(Value::Null);
            if f.name == "Id" || given.as_str() != Some(value) {
                return Err(ApiError::field(
                    "INVALID_FIELD",
                    format!(
                        "The {} field should not be specified in the sobject data.",
                        f.name
                    ),
                    vec![f.name.clone()],
                )
                .into());
            }
        }
        let matches = self.find_by_external_id(object, &f.name, value)?;
        match matches.as_slice() {
            [] => {
                if f.name == "Id" {
                    return Err(ApiError::not_found().into());
                }
                body.insert(f.name.clone(), Value::String(value.to_string()));
                let id = self.create(ctx, object, &body)?;
                if let Some(w) = self.written.back_mut() {
                    w.op = "upsert";
                }
                Ok(Upserted::Created(id))
            }
            [id] => {
                let id = id.clone();
                self.update(ctx, object, &id, &body)?;
                if let Some(w) = self.written.back_mut() {
                    w.op = "upsert";
                }
                Ok(Upserted::Updated(id))
            }
            _ => Ok(Upserted::Multiple(matches)),
        }
    }

    /// Deletes a record (it stays visible to `queryAll` with `IsDeleted`);
    /// deleting an Account deletes its Contacts and Opportunities.
    pub fn delete(&mut self, ctx: &WriteCtx, id: &str) -> Result<String, ApiError> {
        let id = normalize_id(id)
            .ok_or_else(|| ApiError::bad_request("MALFORMED_ID", format!("malformed id {id}")))?;
        let t = self.table_of_id(&id).ok_or_else(ApiError::not_found)?;
        let current = self.tables[t]
            .records
            .get(&id)
            .ok_or_else(ApiError::not_found)?
            .clone();
        if current.get("IsDeleted") == Some(&Value::Bool(true)) {
            return Err(ApiError::entity_deleted());
        }
        let schema = self.tables[t].schema.clone();
        if schema.name == "Account" {
            for child in ["Contact", "Opportunity"] {
                let ct = self.table_index(child).expect("standard object");
                let ids = self.tables[ct].lookup("AccountId", &Value::String(id.clone()));
                for cid in ids {
                    self.delete(ctx, &cid)?;
                }
            }
        }
        let mut rec = current;
        let now = format_datetime(self.now());
        rec.insert("IsDeleted".into(), Value::Bool(true));
        rec.insert("LastModifiedDate".into(), Value::String(now.clone()));
        rec.insert("SystemModstamp".into(), Value::String(now));
        self.log_written(ctx, &schema.name, "delete", &id, Map::new());
        self.emit(ctx, &schema, "DELETE", &id, &rec, None);
        self.put(t, &id, rec);
        Ok(id)
    }

    fn validate(
        &self,
        t: usize,
        schema: &ObjectSchema,
        rec: &Map<String, Value>,
        id: Option<&str>,
        changed: &Map<String, Value>,
    ) -> Result<(), ApiErrors> {
        let missing: Vec<String> = schema
            .fields
            .iter()
            .filter(|f| f.required && f.writable)
            .filter(|f| match rec.get(&f.name) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.trim().is_empty(),
                _ => false,
            })
            .map(|f| f.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::field(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
                missing,
            )
            .into());
        }
        let mut errors = Vec::new();
        for (k, v) in changed {
            let f = schema.field(k).expect("normalized");
            if let Err(e) = self.check_value(schema, f, v) {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(ApiErrors(errors));
        }
        for (rt, rule, expr) in &self.rules {
            if *rt == t && expr.matches(rec) {
                errors.push(ApiError::field(
                    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                    rule.message.clone(),
                    rule.error_field.iter().cloned().collect(),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(ApiErrors(errors));
        }
        let table = &self.tables[t];
        for f in schema.fields.iter().filter(|f| f.unique) {
            if let Some(v) = rec.get(&f.name)
                && let Some(other) = table
                    .lookup(&f.name, v)
                    .into_iter()
                    .find(|o| Some(o.as_str()) != id)
            {
                return Err(ApiError::field(
                    "DUPLICATE_VALUE",
                    format!(
                        "duplicate value found: {} duplicates value on record with id: {other}",
                        f.name
                    ),
                    Vec::new(),
                )
                .into());
            }
        }
        for (dt, rule) in &self.duplicate_rules {
            if *dt != t {
                continue;
            }
            let mut candidates: Option<BTreeSet<String>> = None;
            for f in &rule.fields {
                let f = schema.field(f).expect("checked");
                let ids: BTreeSet<String> = rec
                    .get(&f.name)
                    .map(|v| table.lookup(&f.name, v).into_iter().collect())
                    .unwrap_or_default();
                candidates = Some(match candidates {
                    None => ids,
                    Some(c) => c.intersection(&ids).cloned().collect(),
                });
            }
            let matches: Vec<String> = candidates
                .unwrap_or_default()
                .into_iter()
                .filter(|o| Some(o.as_str()) != id)
                .collect();
            if !matches.is_empty() {
                let mut e =
                    ApiError::bad_request("DUPLICATES_DETECTED", "Use one of these records?");
                e.fields = Some(Vec::new());
                e.extra = Some(("duplicateResult", duplicate_result(schema, rule, &matches)));
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn check_value(&self, schema: &ObjectSchema, f: &FieldDef, v: &Value) -> Result<(), ApiError> {
        let Some(s) = v.as_str() else {
            return Ok(());
        };
        if let Some(max) = f.length
            && s.chars().count() > max
        {
            return Err(ApiError::field(
                "STRING_TOO_LONG",
                format!(
                    "{}: data value too large: {} (max length={max})",
                    f.label,
                    s.chars().take(40).collect::<String>()
                ),
                vec![f.name.clone()],
            ));
        }
        if f.kind == FieldType::Email && !is_email(s) {
            return Err(ApiError::field(
                "INVALID_EMAIL_ADDRESS",
                format!("{}: invalid email address: {s}", f.label),
                vec![f.name.clone()],
            ));
        }
        if f.kind == FieldType::Reference
            && let Some(target) = &f.reference_to
            && target != "User"
        {
            let Some(t) = self.table_index(target) else {
                return Ok(());
            };
            let prefix = self.tables[t].schema.key_prefix;
            let Some(id) = normalize_id(s).filter(|id| id.starts_with(prefix)) else {
                return Err(ApiError::field(
                    "MALFORMED_ID",
                    format!("{}: id value of incorrect type: {s}", f.label),
                    vec![f.name.clone()],
                ));
            };
            let live = self.tables[t]
                .records
                .get(&id)
                .is_some_and(|r| r.get("IsDeleted") != Some(&Value::Bool(true)));
            if !live {
                return Err(ApiError::field(
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id",
                    vec![f.name.clone()],
                ));
            }
            let _ = schema;
        }
        Ok(())
    }

    fn log_written(
        &mut self,
        ctx: &WriteCtx,
        object: &str,
        op: &'static str,
        id: &str,
        fields: Map<String, Value>,
    ) {
        let seq = self.next_written;
        self.next_written += 1;
        self.written.push_back(Written {
            seq,
            at: format_datetime(self.now()),
            object: object.to_string(),
            op,
            id: id.to_string(),
            fields,
            client: ctx.client.clone(),
        });
    }

    /// Entries of the written log after `after`, oldest first.
    pub fn written_since(&self, after: u64, object: Option<&str>) -> Vec<Written> {
        // Entries are in `seq` order: skip to the first one after `after`.
        let from = self.written.partition_point(|w| w.seq <= after);
        self.written
            .range(from..)
            .filter(|w| object.is_none_or(|o| w.object.eq_ignore_ascii_case(o)))
            .cloned()
            .collect()
    }

    fn emit(
        &mut self,
        ctx: &WriteCtx,
        schema: &ObjectSchema,
        change_type: &str,
        id: &str,
        rec: &Map<String, Value>,
        before: Option<&Map<String, Value>>,
    ) {
        let replay_id = self.next_replay;
        self.next_replay += 1;
        let sequence = self
            .undo
            .as_ref()
            .map(|u| self.events.len() - u.events_len)
            .unwrap_or(0)
            + 1;
        let header = json!({
            "entityName": schema.name,
            "recordIds": [id],
            "changeType": change_type,
            "changeOrigin": ctx.change_origin(),
            "transactionKey": ctx.transaction_key,
            "sequenceNumber": sequence,
            "commitTimestamp": self.now().timestamp_millis(),
            "commitNumber": self.commit_number,
            "commitUser": USER_ID,
        });
        let payload = super::cometd::event_payload(schema, change_type, header, rec, before);
        self.events.push_back(StoredEvent {
            replay_id,
            entity: schema.name.clone(),
            data: json!({
                "schema": format!("{}ChangeEventSchemaV1", schema.name),
                "payload": payload,
                "event": { "replayId": replay_id },
            }),
        });
    }

    /// Replay id of the newest event, 0 when there is none.
    pub fn last_replay_id(&self) -> u64 {
        self.next_replay - 1
    }

    /// Replay id of the oldest retained event.
    pub fn first_replay_id(&self) -> u64 {
        self.events
            .front()
            .map(|e| e.replay_id)
            .unwrap_or(self.next_replay)
    }

    /// Events after `replay_id` for `entity` (all entities when `None`), at most `max`.
    pub fn events_after(
        &self,
        replay_id: u64,
        entity: Option<&str>,
        max: usize,
    ) -> Vec<StoredEvent> {
        let start = self.events.partition_point(|e| e.replay_id <= replay_id);
        self.events
            .range(start..)
            .filter(|e| entity.is_none_or(|n| e.entity == n))
            .take(max)
            .cloned()
            .collect()
    }
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
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

fn duplicate_result(schema: &ObjectSchema, rule: &DuplicateRule, ids: &[String]) -> Value {
    let records: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "additionalInformation": [],
                "fieldDiffs": [],
                "matchConfidence": 100.0,
                "record": {
                    "attributes": { "type": schema.name, "url": format!("/services/data/v59.0/sobjects/{}/{id}", schema.name) },
                    "Id": id,
                },
            })
        })
        .collect();
    json!({
        "allowSave": false,
        "duplicateRule": rule.name,
        "duplicateRuleEntityType": schema.name,
        "errorMessage": "Use one of these records?",
        "matchResults": [{
            "entityType": schema.name,
            "errors": [],
            "matchEngine": "ExactMatchEngine",
            "matchRecords": records,
            "rule": format!("{}_Match_Rule", rule.name),
            "size": ids.len(),
            "success": true,
        }],
    })
}

/// Checks a request body against the schema: unknown fields are
/// `INVALID_FIELD`, read-only ones `INVALID_FIELD_FOR_INSERT_UPDATE`, values
/// of the wrong type `JSON_PARSER_ERROR`. Returns the values under their
/// canonical field names.
pub fn normalize_body(
    schema: &ObjectSchema,
    body: &Map<String, Value>,
    _update: bool,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut read_only = Vec::new();
    for (k, v) in body {
        if k == "attributes" {
            continue;
        }
        let Some(f) = schema.field(k) else {
            return Err(ApiError::field(
                "INVALID_FIELD",
                format!("No such column '{k}' on sobject of type {}", schema.name),
                vec![k.clone()],
            ));
        };
        if !f.writable {
            read_only.push(f.name.clone());
            continue;
        }
        out.insert(f.name.clone(), coerce(f, v)?);
    }
    if !read_only.is_empty() {
        return Err(ApiError::field(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!(
                "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                read_only.join(", ")
            ),
            read_only,
        ));
    }
    Ok(out)
}

fn coerce(f: &FieldDef, v: &Value) -> Result<Value, ApiError> {
    let bad = |what: &str| {
        ApiError::json_parse(format!(
            "Cannot deserialize instance of {what} from {} value {} or request may be missing a required field",
            match v {
                Value::String(_) => "VALUE_STRING",
                Value::Number(_) => "VALUE_NUMBER",
                Value::Bool(_) => "VALUE_BOOLEAN",
                Value::Array(_) => "START_ARRAY",
                Value::Object(_) => "START_OBJECT",
                Value::Null => "VALUE_NULL",
            },
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        ))
    };
    if v.is_null() {
        return Ok(Value::Null);
    }
    Ok(match f.kind {
        FieldType::Id
        | FieldType::String
        | FieldType::Textarea
        | FieldType::Email
        | FieldType::Phone
        | FieldType::Url
        | FieldType::Picklist
        | FieldType::Reference => match v {
            Value::String(s) => Value::String(s.clone()),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            _ => return Err(bad("string")),
        },
        FieldType::Double | FieldType::Currency | FieldType::Percent => match v {
            Value::Number(n) => Value::Number(n.clone()),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad("double"))?,
            _ => return Err(bad("double")),
        },
        FieldType::Int => match v {
            Value::Number(n) if n.is_i64() => Value::Number(n.clone()),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(|i| json!(i))
                .map_err(|_| bad("int"))?,
            _ => return Err(bad("int")),
        },
        FieldType::Boolean => match v {
            Value::Bool(b) => Value::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => return Err(bad("boolean")),
        },
        FieldType::Date => match v {
            Value::String(s) => {
                let d = NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                    .map_err(|_| bad("date"))?;
                Value::String(d.format("%Y-%m-%d").to_string())
            }
            _ => return Err(bad("date")),
        },
        FieldType::Datetime => match v {
            Value::String(s) => Value::String(format_datetime(
                parse_datetime(s).ok_or_else(|| bad("datetime"))?,
            )),
            _ => return Err(bad("datetime")),
        },
    })
}

/// RFC 3339 with milliseconds and `Z`, as SOQL datetime literals are written.
pub fn soql_datetime(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}
