//! Reads: one record, many records (composite retrieve, 200 ids per call),
//! and polling by SOQL on `SystemModstamp` with a `(SystemModstamp, Id)`
//! watermark, through `queryAll` so deletions show up as `IsDeleted` rows:
//!
//! ```text
//! SELECT … FROM Account
//!  WHERE SystemModstamp > t OR (SystemModstamp = t AND Id > 'id')
//!  ORDER BY SystemModstamp, Id
//! ```
//!
//! Records sharing one timestamp are told apart by `Id`, so every record is
//! listed exactly once however many share a timestamp; pages follow
//! `nextRecordsUrl`.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::SalesforceConnector;
use super::auth::Call;
use crate::connectors::{ChangePage, ConnectorError, Cursor, ErrorClass, ExternalRecord};

/// Ids per composite retrieve call.
const READ_CHUNK: usize = 200;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryPage {
    #[serde(default)]
    records: Vec<Map<String, Value>>,
    #[serde(default)]
    next_records_url: Option<String>,
}

#[derive(Deserialize)]
struct Describe {
    fields: Vec<DescribeField>,
}

#[derive(Deserialize)]
struct DescribeField {
    name: String,
}

/// Object and field names go into SOQL and URLs: API names only.
pub(super) fn check_name(name: &str) -> Result<&str, ConnectorError> {
    let ok = !name.is_empty()
        && name.len() <= 80
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(ConnectorError::new(
            ErrorClass::FieldValidation,
            format!("{name:?} is not a Salesforce API name"),
        ))
    }
}

fn check_id(id: &str) -> Result<&str, ConnectorError> {
    if (id.len() == 15 || id.len() == 18) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(ConnectorError::new(
            ErrorClass::NotFound,
            format!("{id:?} is not a Salesforce record id"),
        )
        .with_code("MALFORMED_ID"))
    }
}

/// A SOQL string literal: quotes and backslashes escaped.
fn soql_string(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Parses `2024-01-15T10:30:00.000+0000` (or RFC 3339).
pub(super) fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A record as the API returned it (`attributes` dropped).
pub(super) fn to_record(
    object: &str,
    mut fields: Map<String, Value>,
) -> Result<ExternalRecord, ConnectorError> {
    fields.remove("attributes");
    let bad = |what: &str| {
        ConnectorError::new(
            ErrorClass::Transient,
            format!("Salesforce record without {what}"),
        )
    };
    let id = fields
        .get("Id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("Id"))?
        .to_string();
    let version = fields
        .get("SystemModstamp")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("SystemModstamp"))?
        .to_string();
    let modified_at = parse_timestamp(&version).ok_or_else(|| bad("a valid SystemModstamp"))?;
    let deleted = fields.get("IsDeleted") == Some(&Value::Bool(true));
    Ok(ExternalRecord {
        object: object.to_string(),
        id,
        fields,
        version,
        modified_at,
        deleted,
    })
}

/// A SOQL datetime literal with milliseconds.
pub(super) fn soql_datetime(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The watermark query for `object` after `since`.
pub(super) fn changes_soql(object: &str, fields: &[String], since: &Cursor) -> String {
    let t = soql_datetime(since.modified_at);
    let filter = if since.id.is_empty() {
        format!("SystemModstamp >= {t}")
    } else {
        format!(
            "SystemModstamp > {t} OR (SystemModstamp = {t} AND Id > '{}')",
            since.id
        )
    };
    format!(
        "SELECT {} FROM {object} WHERE {filter} ORDER BY SystemModstamp, Id",
        fields.join(", ")
    )
}

impl SalesforceConnector {
    /// Fields read for `object`: configured, or every field `describe` lists.
    pub(super) async fn fields_of(&self, object: &str) -> Result<Arc<Vec<String>>, ConnectorError> {
        let mut fields: Vec<String> = match self.settings.fields.get(object) {
            Some(f) => f.clone(),
            None => {
                if let Some(f) = self.described.lock().expect("describe cache").get(object) {
                    return Ok(f.clone());
                }
                let call = Call::new(
                    Method::GET,
                    format!("{}/sobjects/{object}/describe", self.data_path()),
                );
                let d: Describe = self.send(&call).await?.json()?;
                d.fields.into_iter().map(|f| f.name).collect()
            }
        };
        for required in ["Id", "SystemModstamp", "IsDeleted"] {
            if !fields.iter().any(|f| f.eq_ignore_ascii_case(required)) {
                fields.push(required.to_string());
            }
        }
        for f in &fields {
            check_name(f)?;
        }
        let fields = Arc::new(fields);
        self.described
            .lock()
            .expect("describe cache")
            .insert(object.to_string(), fields.clone());
        Ok(fields)
    }

    pub(super) async fn read_one(
        &self,
        object: &str,
        id: &str,
    ) -> Result<ExternalRecord, ConnectorError> {
        let object = check_name(object)?;
        let id = check_id(id)?;
        let call = Call::new(
            Method::GET,
            format!("{}/sobjects/{object}/{id}", self.data_path()),
        );
        let rec: Map<String, Value> = self.send(&call).await?.json()?;
        to_record(object, rec)
    }

    pub(super) async fn read_ids(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        let object = check_name(object)?;
        let fields = self.fields_of(object).await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_CHUNK) {
            let valid: Vec<&str> = chunk.iter().filter_map(|id| check_id(id).ok()).collect();
            if valid.is_empty() {
                continue;
            }
            let body = json!({ "ids": valid, "fields": *fields });
            let mut call = Call::new(
                Method::POST,
                format!("{}/composite/sobjects/{object}", self.data_path()),
            );
            call.body = Some(&body);
            let rows: Vec<Option<Map<String, Value>>> = self.send(&call).await?.json()?;
            for row in rows.into_iter().flatten() {
                out.push(to_record(object, row)?);
            }
        }
        tracing::debug!(
            provider = "salesforce",
            object,
            requested = ids.len(),
            found = out.len(),
            "records read"
        );
        Ok(out)
    }

    pub(super) async fn read_by_field(
        &self,
        object: &str,
        field: &str,
        values: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        let (object, field) = (check_name(object)?, check_name(field)?);
        let fields = self.fields_of(object).await?;
        let mut out = Vec::new();
        for chunk in values.chunks(READ_CHUNK) {
            let list: Vec<String> = chunk.iter().map(|v| soql_string(v)).collect();
            let q = format!(
                "SELECT {} FROM {object} WHERE {field} IN ({})",
                fields.join(", "),
                list.join(", ")
            );
            let mut call = Call::new(Method::GET, format!("{}/query", self.data_path()));
            call.query.push(("q", q));
            loop {
                let page: QueryPage = self.send(&call).await?.json()?;
                for r in page.records {
                    out.push(to_record(object, r)?);
                }
                match page.next_records_url {
                    Some(next) if next.starts_with("/services/data/") => {
                        call = Call::new(Method::GET, next);
                    }
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn changes(
        &self,
        object: &str,
        since: &Cursor,
        page: Option<&str>,
    ) -> Result<ChangePage, ConnectorError> {
        let object = check_name(object)?;
        let call = match page {
            Some(next) => {
                if !next.starts_with("/services/data/") {
                    return Err(ConnectorError::new(
                        ErrorClass::FieldValidation,
                        "page token is not a Salesforce nextRecordsUrl",
                    ));
                }
                Call::new(Method::GET, next.to_string())
            }
            None => {
                if !since.id.is_empty() {
                    check_id(&since.id)?;
                }
                let fields = self.fields_of(object).await?;
                let mut call = Call::new(Method::GET, format!("{}/queryAll", self.data_path()));
                call.query.push(("q", changes_soql(object, &fields, since)));
                call
            }
        };
        let page: QueryPage = self.send(&call).await?.json()?;
        let records = page
            .records
            .into_iter()
            .map(|r| to_record(object, r))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(
            provider = "salesforce",
            object,
            records = records.len(),
            more = page.next_records_url.is_some(),
            "changes page"
        );
        Ok(ChangePage {
            records,
            next_page: page.next_records_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_query() {
        let since = Cursor {
            modified_at: DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            id: "001Dn0000000001AAA".into(),
        };
        let q = changes_soql("Account", &["Id".into(), "Name".into()], &since);
        assert_eq!(
            q,
            "SELECT Id, Name FROM Account WHERE SystemModstamp > 2024-01-01T00:00:00.000Z OR (SystemModstamp = 2024-01-01T00:00:00.000Z AND Id > '001Dn0000000001AAA') ORDER BY SystemModstamp, Id"
        );
        assert!(
            changes_soql("Account", &["Id".into()], &Cursor::start())
                .contains("SystemModstamp >= 1970-01-01T00:00:00.000Z")
        );
    }

    #[test]
    fn string_literals_are_escaped() {
        assert_eq!(soql_string("7"), "'7'");
        assert_eq!(soql_string("a'b\\"), "'a\\'b\\\\'");
    }

    #[test]
    fn rejects_injection() {
        assert!(check_name("Account WHERE").is_err());
        assert!(check_id("001' OR Id != '").is_err());
    }
}
