//! Uniqueness in the store: fields marked unique reject a second live
//! record with the same value (`DUPLICATE_VALUE`), and duplicate rules
//! block a write that matches another live record on all of a rule's
//! fields (`DUPLICATES_DETECTED`, with the matches in `duplicateResult`).
//! Both run as the last step of the store's write validation.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::super::errors::ApiError;
use super::super::schema::ObjectSchema;
use super::{Store, WriteCtx, record_url};

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

impl Store {
    /// Fails when a unique field's value is held by another live record.
    pub(super) fn check_unique_fields(
        &self,
        t: usize,
        schema: &ObjectSchema,
        rec: &Map<String, Value>,
        id: Option<&str>,
    ) -> Result<(), ApiError> {
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
                ));
            }
        }
        Ok(())
    }

    /// Fails when another live record matches all fields of a duplicate rule.
    pub(super) fn check_duplicate_rules(
        &self,
        ctx: &WriteCtx,
        t: usize,
        schema: &ObjectSchema,
        rec: &Map<String, Value>,
        id: Option<&str>,
    ) -> Result<(), ApiError> {
        let table = &self.tables[t];
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
                e.extra = Some((
                    "duplicateResult",
                    duplicate_result(ctx, schema, rule, &matches),
                ));
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The `duplicateResult` of a `DUPLICATES_DETECTED` error: the rule and
/// the records it matched, their URLs in the request's API version.
fn duplicate_result(
    ctx: &WriteCtx,
    schema: &ObjectSchema,
    rule: &DuplicateRule,
    ids: &[String],
) -> Value {
    let api_version = format!("v{}", ctx.api_version);
    let records: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "additionalInformation": [],
                "fieldDiffs": [],
                "matchConfidence": 100.0,
                "record": {
                    "attributes": { "type": schema.name, "url": record_url(&api_version, &schema.name, id) },
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
