//! Reading: one record (`GET /crm/v3/objects/{type}/{id}`), many
//! (`POST …/batch/read`, 100 at a time) and changes since a `(timestamp, id)`
//! watermark through search.
//!
//! Search pages at most 10,000 results per query, sorts by one property, and
//! says nothing of the order of records sharing a sort value. So every page
//! is a fresh query that starts at the watermark (keyset paging, never
//! `after`), in two phases:
//!
//! 1. *equal*: records at exactly the watermark's timestamp with a greater
//!    id, sorted by `hs_object_id` — exact, however many share the timestamp;
//! 2. *later*: records with a later timestamp, sorted by it. On a full page
//!    only records older than the page's last timestamp are complete; they
//!    are returned, and that last timestamp is continued in phase 1.
//!
//! The page token is the watermark itself, `"<ms>:<id>:<phase>"`.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{HubSpotConnector, modified_property};
use crate::connectors::error::{ConnectorError, ErrorClass};
use crate::connectors::record::{ChangePage, Cursor, ExternalRecord};

/// Results per search page (HubSpot's maximum).
pub const SEARCH_PAGE: usize = 200;

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let s = v?.as_str()?;
    if let Ok(ms) = s.parse::<i64>() {
        return DateTime::from_timestamp_millis(ms);
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// A `SimplePublicObject` as an [`ExternalRecord`].
pub(crate) fn to_record(object: &str, v: &Value) -> Result<ExternalRecord, ConnectorError> {
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ConnectorError::new(
                ErrorClass::Transient,
                "HubSpot answered a record without an id",
            )
        })?
        .to_string();
    let fields: Map<String, Value> = v
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let updated_at = v.get("updatedAt").and_then(Value::as_str).unwrap_or("");
    let modified_at = parse_time(fields.get(modified_property(object)))
        .or_else(|| parse_time(v.get("updatedAt")))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    Ok(ExternalRecord {
        object: object.to_string(),
        id,
        fields,
        version: updated_at.to_string(),
        modified_at,
        deleted: v.get("archived").and_then(Value::as_bool).unwrap_or(false),
    })
}

pub async fn read(
    c: &HubSpotConnector,
    object: &str,
    id: &str,
) -> Result<ExternalRecord, ConnectorError> {
    let props = c.properties_of(object)?;
    let answer = c
        .call(
            Method::GET,
            &format!("/crm/v3/objects/{object}/{}", encode_segment(id)),
            &[("properties", props.join(","))],
            None,
        )
        .await?;
    to_record(object, &answer.json("record")?)
}

pub async fn read_many(
    c: &HubSpotConnector,
    object: &str,
    ids: &[String],
) -> Result<Vec<ExternalRecord>, ConnectorError> {
    batch_read(c, object, None, ids).await
}

/// Records whose unique property `property` holds one of `values`.
pub async fn read_by_property(
    c: &HubSpotConnector,
    object: &str,
    property: &str,
    values: &[String],
) -> Result<Vec<ExternalRecord>, ConnectorError> {
    batch_read(c, object, Some(property), values).await
}

/// `batch/read` by record id, or by a unique property when `id_property` is set.
async fn batch_read(
    c: &HubSpotConnector,
    object: &str,
    id_property: Option<&str>,
    ids: &[String],
) -> Result<Vec<ExternalRecord>, ConnectorError> {
    let mut props = c.properties_of(object)?;
    if let Some(p) = id_property.filter(|p| !props.iter().any(|q| q == p)) {
        props.push(p.to_string());
    }
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(super::MAX_BATCH) {
        let mut unique: Vec<&String> = chunk.iter().collect();
        unique.sort();
        unique.dedup();
        let mut body = json!({
            "properties": props,
            "inputs": unique.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
        });
        if let Some(p) = id_property {
            body["idProperty"] = json!(p);
        }
        let answer = c
            .call(
                Method::POST,
                &format!("/crm/v3/objects/{object}/batch/read"),
                &[],
                Some(&body),
            )
            .await?;
        let v = answer.json("batch read answer")?;
        for r in v["results"].as_array().into_iter().flatten() {
            out.push(to_record(object, r)?);
        }
    }
    Ok(out)
}

/// Where a listing stands: records after `(ms, id)`; `equal_done` once
/// every record at exactly `ms` has been returned.
#[derive(Debug, Clone, PartialEq)]
struct Watermark {
    ms: i64,
    id: Option<u64>,
    equal_done: bool,
}

impl Watermark {
    fn of(cursor: &Cursor) -> Result<Self, ConnectorError> {
        let id = match cursor.id.as_str() {
            "" => None,
            s => Some(s.parse::<u64>().map_err(|_| bad_cursor(s))?),
        };
        Ok(Watermark {
            ms: cursor.modified_at.timestamp_millis(),
            id,
            equal_done: false,
        })
    }

    fn token(&self) -> String {
        format!(
            "{}:{}:{}",
            self.ms,
            self.id.map(|i| i.to_string()).unwrap_or_default(),
            if self.equal_done { "g" } else { "e" }
        )
    }

    fn parse(token: &str) -> Result<Self, ConnectorError> {
        let mut parts = token.split(':');
        let (Some(ms), Some(id), Some(phase), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad_cursor(token));
        };
        Ok(Watermark {
            ms: ms.parse().map_err(|_| bad_cursor(token))?,
            id: match id {
                "" => None,
                s => Some(s.parse().map_err(|_| bad_cursor(token))?),
            },
            equal_done: match phase {
                "e" => false,
                "g" => true,
                _ => return Err(bad_cursor(token)),
            },
        })
    }
}

fn bad_cursor(s: &str) -> ConnectorError {
    ConnectorError::new(
        ErrorClass::FieldValidation,
        format!("invalid HubSpot page token or cursor id {s:?}"),
    )
}

fn numeric_id(r: &ExternalRecord) -> u64 {
    r.id.parse().unwrap_or(u64::MAX)
}

async fn search(
    c: &HubSpotConnector,
    object: &str,
    filters: Vec<Value>,
    sort_by: &str,
    props: &[String],
) -> Result<Vec<ExternalRecord>, ConnectorError> {
    let body = json!({
        "filterGroups": [{"filters": filters}],
        "sorts": [{"propertyName": sort_by, "direction": "ASCENDING"}],
        "properties": props,
        "limit": SEARCH_PAGE,
    });
    let answer = c
        .call(
            Method::POST,
            &format!("/crm/v3/objects/{object}/search"),
            &[],
            Some(&body),
        )
        .await?;
    let v = answer.json("search answer")?;
    v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| to_record(object, r))
        .collect()
}

pub async fn list_changes(
    c: &HubSpotConnector,
    object: &str,
    since: &Cursor,
    page: Option<&str>,
) -> Result<ChangePage, ConnectorError> {
    let props = c.properties_of(object)?;
    let modified = modified_property(object);
    let mut w = match page {
        Some(t) => Watermark::parse(t)?,
        None => Watermark::of(since)?,
    };
    loop {
        if !w.equal_done {
            let mut filters = vec![json!({
                "propertyName": modified, "operator": "EQ", "value": w.ms.to_string(),
            })];
            if let Some(id) = w.id {
                filters.push(json!({
                    "propertyName": "hs_object_id", "operator": "GT", "value": id.to_string(),
                }));
            }
            let mut records = search(c, object, filters, "hs_object_id", &props).await?;
            records.sort_by_key(numeric_id);
            let full = records.len() >= SEARCH_PAGE;
            if let Some(last) = records.last() {
                let next = Watermark {
                    ms: w.ms,
                    id: Some(numeric_id(last)),
                    equal_done: !full,
                };
                return Ok(ChangePage {
                    records,
                    next_page: Some(next.token()),
                });
            }
            w.equal_done = true;
        }
        let filters = vec![json!({
            "propertyName": modified, "operator": "GT", "value": w.ms.to_string(),
        })];
        let mut records = search(c, object, filters, modified, &props).await?;
        records.sort_by_key(|r| (r.modified_at, numeric_id(r)));
        if records.len() < SEARCH_PAGE {
            return Ok(ChangePage {
                records,
                next_page: None,
            });
        }
        let last_ms = records
            .last()
            .map(|r| r.modified_at.timestamp_millis())
            .unwrap_or(w.ms);
        records.retain(|r| r.modified_at.timestamp_millis() < last_ms);
        let next = Watermark {
            ms: last_ms,
            id: None,
            equal_done: false,
        };
        if !records.is_empty() {
            return Ok(ChangePage {
                records,
                next_page: Some(next.token()),
            });
        }
        w = next;
    }
}

/// A path segment with reserved characters escaped (ids by `idProperty` may be emails).
pub(crate) fn encode_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_token_round_trips() {
        let w = Watermark {
            ms: 1_714_557_600_123,
            id: Some(10_042),
            equal_done: true,
        };
        assert_eq!(Watermark::parse(&w.token()).unwrap(), w);
        let w = Watermark {
            ms: 5,
            id: None,
            equal_done: false,
        };
        assert_eq!(Watermark::parse(&w.token()).unwrap(), w);
        assert!(Watermark::parse("x:y").is_err());
    }
}
