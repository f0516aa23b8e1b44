//! Checks every store write makes before it is applied: required fields,
//! value lengths, email syntax, references to live records, the custom
//! validation rules configured for the org, then the uniqueness and
//! duplicate rules of `duplicates`. Failures carry Salesforce's
//! error codes, which the REST handlers return as they are.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::super::errors::{ApiError, ApiErrors};
use super::super::schema::{FieldDef, FieldType, ObjectSchema};
use super::{Store, WriteCtx, normalize_id};

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

impl Store {
    /// Checks a record as it would be after a write of `changed`; `id` is
    /// the record's own id on update.
    pub(super) fn validate(
        &self,
        ctx: &WriteCtx,
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
            if let Err(e) = self.check_value(f, v) {
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
        self.check_unique_fields(t, schema, rec, id)?;
        self.check_duplicate_rules(ctx, t, schema, rec, id)?;
        Ok(())
    }

    fn check_value(&self, f: &FieldDef, v: &Value) -> Result<(), ApiError> {
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
        }
        Ok(())
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
