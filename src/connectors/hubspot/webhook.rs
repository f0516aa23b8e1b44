//! Webhook deliveries: `X-HubSpot-Signature-v3 =
//! base64(HMAC-SHA256(client_secret, method + uri + body + timestamp))` with
//! `X-HubSpot-Request-Timestamp` (ms) no more than five minutes old, then
//! the JSON array of events → [`WebhookEvent`]s. `origin` is
//! `"<changeSource>:<sourceId>"` (e.g. `INTEGRATION:4242001` for writes made
//! by this app), so echoes of extsync's own writes can be recognised.
//!
//! Only v3 is accepted: v1 and v2 signatures carry no timestamp, so a
//! captured delivery could be replayed forever.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::connectors::error::{ConnectorError, ErrorClass};
use crate::connectors::http::header_str;
use crate::connectors::record::{ChangeOp, WebhookEvent, WebhookRequest};

/// Oldest (or furthest in the future) timestamp accepted.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// Percent-escapes HubSpot decodes in the URI before signing.
const DECODED: [(&str, char); 12] = [
    ("%3A", ':'),
    ("%2F", '/'),
    ("%3F", '?'),
    ("%40", '@'),
    ("%21", '!'),
    ("%24", '$'),
    ("%27", '\''),
    ("%28", '('),
    ("%29", ')'),
    ("%2A", '*'),
    ("%2C", ','),
    ("%3B", ';'),
];

/// The URI as HubSpot signs it.
pub fn signed_uri(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let esc = rest.get(pos..pos + 3).unwrap_or("");
        match DECODED.iter().find(|(e, _)| e.eq_ignore_ascii_case(esc)) {
            Some((_, c)) => {
                out.push(*c);
                rest = &rest[pos + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn unauthenticated(msg: &str) -> ConnectorError {
    ConnectorError::new(ErrorClass::Unauthenticated, msg)
}

/// Checks the v3 signature and the timestamp window.
pub fn verify(secret: &str, req: &WebhookRequest) -> Result<(), ConnectorError> {
    let sig = header_str(&req.headers, "x-hubspot-signature-v3")
        .ok_or_else(|| unauthenticated("missing X-HubSpot-Signature-v3 header"))?;
    let ts = header_str(&req.headers, "x-hubspot-request-timestamp")
        .ok_or_else(|| unauthenticated("missing X-HubSpot-Request-Timestamp header"))?;
    let ts_ms: i64 = ts
        .trim()
        .parse()
        .map_err(|_| unauthenticated("X-HubSpot-Request-Timestamp is not a number"))?;
    let age_ms = (req.received_at.timestamp_millis() - ts_ms).unsigned_abs();
    if age_ms > MAX_SKEW.as_millis() as u64 {
        return Err(unauthenticated(
            "X-HubSpot-Request-Timestamp is more than five minutes from now",
        ));
    }
    let expected = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .map_err(|_| unauthenticated("X-HubSpot-Signature-v3 is not base64"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(req.method.to_ascii_uppercase().as_bytes());
    mac.update(signed_uri(&req.url).as_bytes());
    mac.update(&req.body);
    mac.update(ts.as_bytes());
    mac.verify_slice(&expected)
        .map_err(|_| unauthenticated("X-HubSpot-Signature-v3 does not match"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    event_id: Value,
    subscription_type: String,
    object_id: Value,
    occurred_at: i64,
    #[serde(default)]
    property_name: Option<String>,
    #[serde(default)]
    property_value: Option<Value>,
    #[serde(default)]
    change_source: Option<String>,
    #[serde(default)]
    source_id: Option<String>,
    /// The app receiving the delivery.
    #[serde(default)]
    app_id: Option<Value>,
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn malformed(msg: String) -> ConnectorError {
    ConnectorError::new(ErrorClass::FieldValidation, msg)
}

/// Parses a delivery (a JSON array of events). Subscription types other than
/// creation, property change and deletion of contacts, companies and deals
/// are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<WebhookEvent>, ConnectorError> {
    let events: Vec<Event> = serde_json::from_slice(body).map_err(|e| {
        malformed(format!(
            "HubSpot webhook body is not an array of events: {e}"
        ))
    })?;
    let mut out = Vec::with_capacity(events.len());
    for (i, ev) in events.into_iter().enumerate() {
        let Some((kind, action)) = ev.subscription_type.split_once('.') else {
            return Err(malformed(format!(
                "event {i}: subscriptionType {:?} is not <object>.<action>",
                ev.subscription_type
            )));
        };
        let object = match kind {
            "contact" => "contacts",
            "company" => "companies",
            "deal" => "deals",
            _ => continue,
        };
        let op = match action {
            "creation" => ChangeOp::Create,
            "propertyChange" | "restore" | "merge" => ChangeOp::Update,
            "deletion" | "privacyDeletion" => ChangeOp::Delete,
            _ => continue,
        };
        let event_id = id_text(&ev.event_id)
            .ok_or_else(|| malformed(format!("event {i}: eventId is missing")))?;
        let id = id_text(&ev.object_id)
            .ok_or_else(|| malformed(format!("event {i}: objectId is missing")))?;
        let occurred_at = DateTime::<Utc>::from_timestamp_millis(ev.occurred_at)
            .ok_or_else(|| malformed(format!("event {i}: occurredAt is out of range")))?;
        // A change an app made has `changeSource` INTEGRATION and the app's
        // id as `sourceId`; made by the receiving app, it is extsync's own.
        let own = ev.change_source.as_deref() == Some("INTEGRATION")
            && ev.source_id.is_some()
            && ev.source_id == ev.app_id.as_ref().and_then(id_text);
        let origin = match (ev.change_source, ev.source_id) {
            (Some(s), Some(id)) => Some(format!("{s}:{id}")),
            (Some(s), None) => Some(s),
            (None, Some(id)) => Some(format!(":{id}")),
            (None, None) => None,
        };
        let (changed_fields, fields) = match ev.property_name {
            Some(name) => {
                let mut m = Map::new();
                m.insert(name.clone(), ev.property_value.unwrap_or(Value::Null));
                (vec![name], Some(m))
            }
            None => (Vec::new(), None),
        };
        out.push(WebhookEvent {
            event_id,
            object: object.to_string(),
            id,
            op,
            occurred_at,
            changed_fields,
            origin,
            own,
            fields,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_uri_decodes_only_hubspots_set() {
        assert_eq!(
            signed_uri("https://x.test/hook%3Fa%3Db%2Cc%20d%25"),
            "https://x.test/hook?a%3Db,c%20d%25"
        );
    }

    #[test]
    fn parses_property_change_with_origin() {
        let body = br#"[{"eventId":7,"subscriptionId":1,"portalId":2,"appId":3,"occurredAt":1714557600123,
            "subscriptionType":"contact.propertyChange","attemptNumber":0,"objectId":10042,
            "propertyName":"email","propertyValue":"a@b.co","changeSource":"INTEGRATION","sourceId":"3"},
            {"eventId":8,"subscriptionType":"contact.associationChange","objectId":1,"occurredAt":1}]"#;
        let evs = parse(body).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].op, ChangeOp::Update);
        assert_eq!(evs[0].id, "10042");
        assert_eq!(evs[0].origin.as_deref(), Some("INTEGRATION:3"));
        assert_eq!(evs[0].changed_fields, vec!["email".to_string()]);
        assert!(evs[0].own, "made by the receiving app");
    }

    #[test]
    fn only_the_receiving_apps_changes_are_its_own() {
        let event = |source: &str, source_id: &str| {
            format!(
                r#"{{"eventId":1,"appId":3,"occurredAt":1,"subscriptionType":"contact.propertyChange",
                "objectId":5,"propertyName":"email","propertyValue":"a@b.co","changeSource":"{source}","sourceId":"{source_id}"}}"#
            )
        };
        let body = format!(
            "[{},{},{}]",
            event("INTEGRATION", "9"),
            event("CRM_UI", "3"),
            event("IMPORT", "userId:1")
        );
        let evs = parse(body.as_bytes()).unwrap();
        assert_eq!(evs.len(), 3);
        assert!(evs.iter().all(|e| !e.own), "{evs:?}");
    }
}
