//! Writes: single records through `/sobjects` (create 201, update and
//! delete 204, upsert by external id 201/200/300) and batches through sObject
//! collections (`/composite/sobjects`, ≤ 200 per call, `allOrNone: false`, so
//! each record succeeds or fails on its own). Consecutive operations of one
//! kind share a call; results come back in input order.

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::Call;
use super::errors::{self, ApiErrorBody};
use super::read::check_name;
use super::{MAX_BATCH, SalesforceConnector};
use crate::connectors::{ConnectorError, ErrorClass, WriteOp, WriteOutcome};

#[derive(Deserialize)]
struct SaveResult {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiErrorBody>,
    #[serde(default)]
    created: Option<bool>,
}

/// Percent-encodes one URL path segment (external id values may hold anything).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn several_match(field: &str, value: &str) -> ConnectorError {
    ConnectorError::new(
        ErrorClass::FieldValidation,
        format!("several records have {field} = {value:?}"),
    )
    .with_status(300)
    .with_code("MULTIPLE_CHOICES")
    .with_fields(vec![field.to_string()])
}

#[derive(PartialEq)]
enum Kind<'a> {
    Create,
    Update,
    Delete,
    Upsert(&'a str),
}

fn kind(op: &WriteOp) -> Kind<'_> {
    match op {
        WriteOp::Create { .. } => Kind::Create,
        WriteOp::Update { .. } => Kind::Update,
        WriteOp::Delete { .. } => Kind::Delete,
        WriteOp::Upsert { id_field, .. } => Kind::Upsert(id_field),
    }
}

fn with_type(object: &str, fields: &Map<String, Value>) -> Map<String, Value> {
    let mut rec = Map::with_capacity(fields.len() + 2);
    rec.insert("attributes".into(), json!({ "type": object }));
    for (k, v) in fields {
        rec.insert(k.clone(), v.clone());
    }
    rec
}

impl SalesforceConnector {
    pub(super) async fn write_one(
        &self,
        object: &str,
        op: WriteOp,
    ) -> Result<WriteOutcome, ConnectorError> {
        let object = check_name(object)?;
        let base = format!("{}/sobjects/{object}", self.data_path());
        match op {
            WriteOp::Create { fields } => {
                let body = Value::Object(fields);
                let mut call = Call::new(Method::POST, base);
                call.body = Some(&body);
                call.write = true;
                let r: SaveResult = self.send(&call).await?.json()?;
                let id = r.id.ok_or_else(|| {
                    ConnectorError::new(ErrorClass::Transient, "create answered without an id")
                })?;
                Ok(WriteOutcome {
                    id,
                    created: true,
                    version: None,
                })
            }
            WriteOp::Update { id, fields } => self.update_record(object, &id, fields, None).await,
            WriteOp::Upsert {
                id_field,
                id_value,
                fields,
            } => {
                check_name(&id_field)?;
                let body = Value::Object(fields);
                let mut call = Call::new(
                    Method::PATCH,
                    format!("{base}/{id_field}/{}", path_segment(&id_value)),
                );
                call.body = Some(&body);
                call.write = true;
                let answer = self.send(&call).await?;
                if answer.status == StatusCode::MULTIPLE_CHOICES {
                    return Err(several_match(&id_field, &id_value));
                }
                if answer.status == StatusCode::NO_CONTENT {
                    let mut get = Call::new(
                        Method::GET,
                        format!("{base}/{id_field}/{}", path_segment(&id_value)),
                    );
                    get.query.push(("fields", "Id".into()));
                    let rec: Map<String, Value> = self.send(&get).await?.json()?;
                    let id = rec
                        .get("Id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    return Ok(WriteOutcome {
                        id,
                        created: false,
                        version: None,
                    });
                }
                let r: SaveResult = answer.json()?;
                Ok(WriteOutcome {
                    id: r.id.unwrap_or_default(),
                    created: r.created.unwrap_or(answer.status == StatusCode::CREATED),
                    version: None,
                })
            }
            WriteOp::Delete { id } => {
                let mut call = Call::new(Method::DELETE, format!("{base}/{}", path_segment(&id)));
                call.write = true;
                self.send(&call).await?;
                Ok(WriteOutcome {
                    id,
                    created: false,
                    version: None,
                })
            }
        }
    }

    /// Updates a record only if it was not modified after `unmodified_since`
    /// (`If-Unmodified-Since`); otherwise `stale_version`.
    pub async fn update_if_unmodified(
        &self,
        object: &str,
        id: &str,
        fields: Map<String, Value>,
        unmodified_since: DateTime<Utc>,
    ) -> Result<WriteOutcome, ConnectorError> {
        let object = check_name(object)?;
        self.update_record(object, id, fields, Some(unmodified_since))
            .await
    }

    async fn update_record(
        &self,
        object: &str,
        id: &str,
        fields: Map<String, Value>,
        unmodified_since: Option<DateTime<Utc>>,
    ) -> Result<WriteOutcome, ConnectorError> {
        let body = Value::Object(fields);
        let mut call = Call::new(
            Method::PATCH,
            format!(
                "{}/sobjects/{object}/{}",
                self.data_path(),
                path_segment(id)
            ),
        );
        call.body = Some(&body);
        call.write = true;
        if let Some(t) = unmodified_since {
            call.headers.push((
                "If-Unmodified-Since",
                t.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            ));
        }
        self.send(&call).await?;
        Ok(WriteOutcome {
            id: id.to_string(),
            created: false,
            version: None,
        })
    }

    pub(super) async fn write_many(
        &self,
        object: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError> {
        let object = check_name(object)?;
        if ops.len() > MAX_BATCH {
            return Err(ConnectorError::new(
                ErrorClass::FieldValidation,
                format!(
                    "{} writes in one batch; Salesforce takes at most {MAX_BATCH}",
                    ops.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(ops.len());
        let mut start = 0;
        while start < ops.len() {
            let k = kind(&ops[start]);
            let end = start + ops[start..].iter().take_while(|op| kind(op) == k).count();
            let group = &ops[start..end];
            out.extend(self.write_group(object, group).await?);
            start = end;
        }
        tracing::debug!(
            provider = "salesforce",
            object,
            ops = out.len(),
            failed = out.iter().filter(|r| r.is_err()).count(),
            "batch written"
        );
        Ok(out)
    }

    /// One composite sObject collections call for `group`, whose writes
    /// are all of one kind.
    async fn write_group(
        &self,
        object: &str,
        group: &[WriteOp],
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError> {
        let base = format!("{}/composite/sobjects", self.data_path());
        let mut call = match &group[0] {
            WriteOp::Create { .. } => Call::new(Method::POST, base),
            WriteOp::Update { .. } => Call::new(Method::PATCH, base),
            WriteOp::Upsert { id_field, .. } => {
                check_name(id_field)?;
                Call::new(Method::PATCH, format!("{base}/{object}/{id_field}"))
            }
            WriteOp::Delete { .. } => {
                let ids: Vec<&str> = group
                    .iter()
                    .filter_map(|op| match op {
                        WriteOp::Delete { id } => Some(id.as_str()),
                        _ => None,
                    })
                    .collect();
                let mut call = Call::new(Method::DELETE, base);
                call.query.push(("ids", ids.join(",")));
                call.query.push(("allOrNone", "false".into()));
                call
            }
        };
        let records: Vec<Value> = group
            .iter()
            .filter_map(|op| record_of(object, op))
            .collect();
        let body = (!records.is_empty()).then(|| json!({ "allOrNone": false, "records": records }));
        call.body = body.as_ref();
        call.write = true;
        let results: Vec<SaveResult> = self.send(&call).await?.json()?;
        if results.len() != group.len() {
            return Err(ConnectorError::new(
                ErrorClass::Transient,
                format!("{} results for {} records", results.len(), group.len()),
            ));
        }
        Ok(results
            .into_iter()
            .zip(group)
            .map(|(r, op)| {
                if r.success {
                    Ok(WriteOutcome {
                        id: r.id.unwrap_or_default(),
                        created: r.created.unwrap_or(matches!(op, WriteOp::Create { .. })),
                        version: None,
                    })
                } else {
                    Err(errors::from_composite(&r.errors, self.settings.limit_wait))
                }
            })
            .collect())
    }
}

/// The record `op` sends in a composite sObject collections body: its
/// fields with the object's type, and the id (`Id`, or the upsert's
/// external-id field) that names it. A delete sends ids, not records.
fn record_of(object: &str, op: &WriteOp) -> Option<Value> {
    let (fields, id) = match op {
        WriteOp::Create { fields } => (fields, None),
        WriteOp::Update { id, fields } => (fields, Some(("Id", id))),
        WriteOp::Upsert {
            id_field,
            id_value,
            fields,
        } => (fields, Some((id_field.as_str(), id_value))),
        WriteOp::Delete { .. } => return None,
    };
    let mut r = with_type(object, fields);
    if let Some((name, value)) = id {
        r.insert(name.to_string(), json!(value));
    }
    Some(Value::Object(r))
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(path_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(path_segment("acct-42_x.y~"), "acct-42_x.y~");
    }
}
