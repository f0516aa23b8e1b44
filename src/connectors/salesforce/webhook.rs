//! Salesforce sends no signed webhooks: changes arrive as Change Data
//! Capture events over CometD ([`super::stream`]). This module refuses
//! webhook requests and turns change events into [`WebhookEvent`]s — one per
//! record id — with field values under their API names (compound
//! `BillingAddress.City` becomes `BillingCity`).

use chrono::DateTime;
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

/// The events of one change event's `payload`: one per record id.
/// GAP events (the server lost track of the values) carry no fields, so
/// readers re-read those records. Events whose `changeOrigin` names
/// `client` (extsync's `Sforce-Call-Options` client) are marked own.
pub fn events_from_change(
    payload: &Value,
    client: &str,
) -> Result<Vec<WebhookEvent>, ConnectorError> {
    let bad = |what: &str| {
        ConnectorError::new(
            ErrorClass::FieldValidation,
            format!("change event without {what}"),
        )
    };
    let header = payload
        .get("ChangeEventHeader")
        .ok_or_else(|| bad("ChangeEventHeader"))?;
    let entity = header
        .get("entityName")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("entityName"))?;
    let change_type = header
        .get("changeType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("changeType"))?;
    let ids: Vec<&str> = header
        .get("recordIds")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .ok_or_else(|| bad("recordIds"))?;
    let gap = change_type.starts_with("GAP_");
    let op = match change_type.trim_start_matches("GAP_") {
        "CREATE" => ChangeOp::Create,
        "DELETE" => ChangeOp::Delete,
        _ => ChangeOp::Update,
    };
    let occurred_at = header
        .get("commitTimestamp")
        .and_then(Value::as_i64)
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| bad("commitTimestamp"))?;
    let origin = header
        .get("changeOrigin")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let own = origin.as_deref().is_some_and(|o| is_own_change(o, client));
    let transaction = header
        .get("transactionKey")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sequence = header
        .get("sequenceNumber")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    let changed_fields: Vec<String> = header
        .get("changedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|f| match f.split_once('.') {
                    Some((c, p)) => flatten_name(c, p),
                    None => f.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let fields = if gap || op == ChangeOp::Delete {
        None
    } else {
        let mut m = Map::new();
        if let Some(obj) = payload.as_object() {
            for (k, v) in obj {
                if k == "ChangeEventHeader" {
                    continue;
                }
                if is_compound(k, v) {
                    for (part, pv) in v.as_object().expect("checked") {
                        m.insert(flatten_name(k, part), pv.clone());
                    }
                } else {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        Some(m)
    };
    Ok(ids
        .into_iter()
        .map(|id| WebhookEvent {
            event_id: format!("{transaction}/{sequence}/{id}"),
            object: entity.to_string(),
            id: id.to_string(),
            op,
            occurred_at,
            changed_fields: changed_fields.clone(),
            origin: origin.clone(),
            own,
            fields: fields.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
