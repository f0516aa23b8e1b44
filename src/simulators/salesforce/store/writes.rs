//! Writes to the store, as the sObject and composite handlers make them:
//! create, update, upsert by external id and delete (cascading from an
//! Account to its Contacts and Opportunities), each validated, logged and
//! announced as a change event, inside all-or-none units that can be
//! rolled back.

use serde_json::{Map, Value};

use super::super::errors::{ApiError, ApiErrors};
use super::{
    Store, USER_ID, external_id_field, format_datetime, make_id, normalize_body, normalize_id,
};

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

/// The outcome of an upsert.
pub enum Upserted {
    Created(String),
    Updated(String),
    /// Several records have the external id value (HTTP 300).
    Multiple(Vec<String>),
}

/// A record's state before a write: table, id, previous value.
type Before = (usize, String, Option<Map<String, Value>>);

/// What [`Store::rollback`] restores: the records written since
/// [`Store::begin`] and the lengths of the logs then.
pub(super) struct Undo {
    records: Vec<Before>,
    written_len: usize,
    pub(super) events_len: usize,
    next_replay: u64,
}

impl Store {
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
        let values = normalize_body(&schema, body)?;
        let mut rec = values.clone();
        rec.entry("OwnerId")
            .or_insert_with(|| Value::String(USER_ID.into()));
        self.validate(ctx, t, &schema, &rec, None, &values)?;

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
        let values = normalize_body(&schema, body)?;
        let mut rec = current.clone();
        for (k, v) in &values {
            rec.insert(k.clone(), v.clone());
        }
        self.validate(ctx, t, &schema, &rec, Some(&id), &values)?;
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
}
