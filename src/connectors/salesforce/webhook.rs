//! Salesforce sends no signed webhooks: changes arrive as Change Data
//! Capture events over CometD ([`super::stream`]). This module refuses
//! webhook requests and turns change events into [`WebhookEvent`]s — one per
//! record id — with field values under their API names (compound
//! `BillingAddress.City` becomes `BillingCity`).

use chrono::DateTime;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::connectors::record::ChangeOp;
use crate::connectors::{ConnectorError, ErrorClass, WebhookEvent, WebhookRequest};

/// Every webhook request is refused: Salesforce has none to verify.
pub fn verify(_request: &WebhookRequest) -> Result<Vec<WebhookEvent>, ConnectorError> {
    Err(ConnectorError::new(
        ErrorClass::Unauthenticated,
        "Salesforce sends no signed webhooks; its changes arrive as change events over CometD",
    ))
}

/// Whether a change was made by `client` (its `changeOrigin` carries the
/// `Sforce-Call-Options` client of the write, e.g. `…;client=extsync`).
pub fn is_own_change(change_origin: &str, client: &str) -> bool {
    change_origin
        .split(';')
        .any(|part| part.trim() == format!("client={client}"))
}

/// `BillingAddress.City` → `BillingCity`; `Name.LastName` → `LastName`.
fn flatten_name(compound: &str, part: &str) -> String {
    match compound.strip_suffix("Address") {
        Some(prefix) => format!("{prefix}{part}"),
        None => part.to_string(),
    }
}

fn is_compound(name: &str, v: &Value) -> bool {
    v.is_object() && (name.ends_with("Address") || name == "Name")
}

/// The `ChangeEventHeader` of a change event, as far as extsync reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    entity_name: String,
    change_type: String,
    record_ids: Vec<String>,
    /// Milliseconds since the epoch.
    commit_timestamp: i64,
    #[serde(default)]
    change_origin: Option<String>,
    #[serde(default)]
    transaction_key: String,
    #[serde(default)]
    sequence_number: u64,
    #[serde(default)]
    changed_fields: Vec<String>,
}

/// The events of one change event's `payload`: one per record id.
/// GAP events (the server lost track of the values) carry no fields, so
/// readers re-read those records. Events whose `changeOrigin` names
/// `client` (extsync's `Sforce-Call-Options` client) are marked own.
pub fn events_from_change(
    payload: &Value,
    client: &str,
) -> Result<Vec<WebhookEvent>, ConnectorError> {
    let invalid = |what: String| ConnectorError::new(ErrorClass::FieldValidation, what);
    let header = payload
        .get("ChangeEventHeader")
        .ok_or_else(|| invalid("change event without ChangeEventHeader".into()))?;
    let header =
        Header::deserialize(header).map_err(|e| invalid(format!("change event header: {e}")))?;
    let occurred_at = DateTime::from_timestamp_millis(header.commit_timestamp)
        .ok_or_else(|| invalid("change event commitTimestamp out of range".into()))?;
    let gap = header.change_type.starts_with("GAP_");
    let op = match header.change_type.trim_start_matches("GAP_") {
        "CREATE" => ChangeOp::Create,
        "DELETE" => ChangeOp::Delete,
        _ => ChangeOp::Update,
    };
    let origin = header.change_origin.filter(|s| !s.is_empty());
    let own = origin.as_deref().is_some_and(|o| is_own_change(o, client));
    let changed_fields: Vec<String> = header
        .changed_fields
        .iter()
        .map(|f| match f.split_once('.') {
            Some((c, p)) => flatten_name(c, p),
            None => f.clone(),
        })
        .collect();
    let fields = (!gap && op != ChangeOp::Delete).then(|| values_of(payload));
    Ok(header
        .record_ids
        .into_iter()
        .map(|id| WebhookEvent {
            event_id: format!("{}/{}/{id}", header.transaction_key, header.sequence_number),
            object: header.entity_name.clone(),
            id,
            op,
            occurred_at,
            changed_fields: changed_fields.clone(),
            origin: origin.clone(),
            own,
            fields: fields.clone(),
        })
        .collect())
}

/// The field values of a change event under their API names, compound
/// fields flattened.
fn values_of(payload: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    let Some(obj) = payload.as_object() else {
        return m;
    };
    for (k, v) in obj {
        if k == "ChangeEventHeader" {
            continue;
        }
        match v.as_object() {
            Some(parts) if is_compound(k, v) => {
                for (part, pv) in parts {
                    m.insert(flatten_name(k, part), pv.clone());
                }
            }
            _ => {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_header_without_a_required_field_is_refused_by_name() {
        let payload = json!({ "ChangeEventHeader": { "entityName": "Account", "changeType": "UPDATE",
            "commitTimestamp": 1_700_000_000_000i64 } });
        let e = events_from_change(&payload, "extsync").unwrap_err();
        assert_eq!(e.class, ErrorClass::FieldValidation);
        assert!(e.message.contains("recordIds"), "{}", e.message);
        let e = events_from_change(&json!({ "Name": "x" }), "extsync").unwrap_err();
        assert!(e.message.contains("ChangeEventHeader"), "{}", e.message);
    }

    #[test]
    fn parses_update_event() {
        let payload = json!({
            "ChangeEventHeader": {
                "entityName": "Account", "recordIds": ["001Dn0000000001AAA"], "changeType": "UPDATE",
                "changeOrigin": "com/salesforce/api/rest/62.0;client=extsync", "transactionKey": "t1",
                "sequenceNumber": 1, "commitTimestamp": 1_700_000_000_000i64, "commitNumber": 5,
                "commitUser": "005", "changedFields": ["Name", "BillingAddress.City", "LastModifiedDate"],
                "nulledFields": [], "diffFields": []
            },
            "Name": "Acme",
            "BillingAddress": { "City": "Paris" },
            "LastModifiedDate": "2023-11-14T22:13:20.000+0000"
        });
        let events = events_from_change(&payload, "extsync").unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert!(e.own, "written with client=extsync");
        assert!(!events_from_change(&payload, "person").unwrap()[0].own);
        assert_eq!(e.op, ChangeOp::Update);
        assert_eq!(
            e.changed_fields,
            vec!["Name", "BillingCity", "LastModifiedDate"]
        );
        assert_eq!(e.fields.as_ref().unwrap()["BillingCity"], json!("Paris"));
        assert!(is_own_change(e.origin.as_deref().unwrap(), "extsync"));
        assert!(!is_own_change("com/salesforce/api/rest/62.0", "extsync"));
    }
}
