//! Outgoing webhooks: signed batches the connector verifies, HubSpot's retry
//! rules, the drop switch, and verification failures.

mod hubspot_support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::Utc;
use extsync::connectors::record::ChangeOp;
use extsync::connectors::{Connector, ErrorClass, WebhookRequest, WriteOp};
use extsync::simulators::hubspot;
use hubspot_support::*;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push((headers, body));
    let status = r.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// A webhook endpoint on a free port; returns it and its URL.
async fn receiver() -> (Receiver, String, extsync::simulators::RunningSimulator) {
    let r = Receiver::default();
    let app = Router::new()
        .route("/webhooks/hubspot", post(receive))
        .with_state(r.clone());
    let running = extsync::simulators::serve(app, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("{}/webhooks/hubspot", running.base_url());
    (r, url, running)
}

async fn wait_for(r: &Receiver, deliveries: usize) {
    for _ in 0..500 {
        if r.got.lock().unwrap().len() >= deliveries {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {deliveries} deliveries, got {}",
        r.got.lock().unwrap().len()
    );
}

fn request(url: &str, headers: &HeaderMap, body: &Bytes) -> WebhookRequest {
    WebhookRequest {
        method: "POST".into(),
        url: url.into(),
        headers: headers.clone(),
        body: body.clone(),
        received_at: Utc::now(),
    }
}

#[tokio::test]
async fn writes_arrive_as_signed_batches_the_connector_verifies() {
    let (sim, _portal) = portal().await;
    let (r, url, _rx) = receiver().await;
    admin(&sim, "/__admin/webhooks", json!({"targetUrl": url})).await;
    let c = connector(&sim);
    let mine = c
        .write(
            "contacts",
            WriteOp::Create {
                fields: fields(json!({"email": "hook@example.com"})),
            },
        )
        .await
        .unwrap();
    wait_for(&r, 1).await;
    let people = private_connector(&sim);
    people
        .write(
            "contacts",
            WriteOp::Update {
                id: mine.id.clone(),
                fields: fields(json!({"firstname": "Hu"})),
            },
        )
        .await
        .unwrap();
    people
        .write(
            "contacts",
            WriteOp::Delete {
                id: mine.id.clone(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let got = r.got.lock().unwrap().clone();
    let mut events = Vec::new();
    for (headers, body) in &got {
        assert!(headers.contains_key("x-hubspot-signature-v3"));
        let ts: i64 = headers["x-hubspot-request-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((Utc::now().timestamp_millis() - ts).abs() < 60_000);
        let raw: Vec<Value> = serde_json::from_slice(body).unwrap();
        assert!(raw.len() <= 100);
        for e in &raw {
            for key in [
                "eventId",
                "subscriptionId",
                "portalId",
                "appId",
                "occurredAt",
                "subscriptionType",
                "attemptNumber",
                "objectId",
                "changeSource",
                "sourceId",
            ] {
                assert!(e.get(key).is_some(), "{key} missing in {e}");
            }
        }
        events.extend(c.verify_webhook(&request(&url, headers, body)).unwrap());
    }
    let creation = events.iter().find(|e| e.op == ChangeOp::Create).unwrap();
    assert_eq!(creation.id, mine.id);
    assert_eq!(creation.object, "contacts");
    let app_origin = format!("INTEGRATION:{}", hubspot::DEFAULT_APP_ID);
    assert_eq!(creation.origin.as_deref(), Some(app_origin.as_str()));
    let email = events
        .iter()
        .find(|e| e.changed_fields == vec!["email".to_string()])
        .unwrap();
    assert_eq!(email.fields.as_ref().unwrap()["email"], "hook@example.com");
    let by_person = events
        .iter()
        .find(|e| e.changed_fields == vec!["firstname".to_string()])
        .unwrap();
    assert_eq!(by_person.op, ChangeOp::Update);
    assert_eq!(by_person.origin.as_deref(), Some("CRM_UI:userId:1"));
    assert!(
        events
            .iter()
            .any(|e| e.op == ChangeOp::Delete && e.id == mine.id)
    );
}

#[tokio::test]
async fn tampered_body_wrong_secret_and_stale_timestamp_fail_verification() {
    let (sim, _portal) = portal().await;
    let (r, url, _rx) = receiver().await;
    admin(&sim, "/__admin/webhooks", json!({"targetUrl": url})).await;
    let c = connector(&sim);
    c.write(
        "companies",
        WriteOp::Create {
            fields: fields(json!({"name": "Signed"})),
        },
    )
    .await
    .unwrap();
    wait_for(&r, 1).await;
    let (headers, body) = r.got.lock().unwrap()[0].clone();
    let good = request(&url, &headers, &body);
    assert!(c.verify_webhook(&good).is_ok());

    let mut tampered = good.clone();
    let mut b = body.to_vec();
    b[5] ^= 0x01;
    tampered.body = Bytes::from(b);
    let e = c.verify_webhook(&tampered).unwrap_err();
    assert_eq!(e.class, ErrorClass::Unauthenticated);

    let mut other_url = good.clone();
    other_url.url = url.replace("/webhooks/hubspot", "/webhooks/other");
    assert_eq!(
        c.verify_webhook(&other_url).unwrap_err().class,
        ErrorClass::Unauthenticated
    );

    let wrong = connector(&sim).with_webhook_secret("not-the-secret");
    assert_eq!(
        wrong.verify_webhook(&good).unwrap_err().class,
        ErrorClass::Unauthenticated
    );

    let mut stale = good.clone();
    stale.received_at = Utc::now() + chrono::Duration::minutes(6);
    let e = c.verify_webhook(&stale).unwrap_err();
    assert_eq!(e.class, ErrorClass::Unauthenticated);
    assert!(e.message.contains("five minutes"), "{}", e.message);

    let mut unsigned = good.clone();
    unsigned.headers.remove("x-hubspot-signature-v3");
    assert_eq!(
        c.verify_webhook(&unsigned).unwrap_err().class,
        ErrorClass::Unauthenticated
    );

    // A correctly signed body that is not HubSpot's shape is malformed, not unauthenticated.
    let ts = Utc::now().timestamp_millis().to_string();
    let body = Bytes::from_static(br#"{"not":"an array"}"#);
    let sig =
        hubspot::webhooks::signature_v3(hubspot::DEFAULT_CLIENT_SECRET, "POST", &url, &body, &ts);
    let mut h = HeaderMap::new();
    h.insert("x-hubspot-signature-v3", sig.parse().unwrap());
    h.insert("x-hubspot-request-timestamp", ts.parse().unwrap());
    let e = c.verify_webhook(&request(&url, &h, &body)).unwrap_err();
    assert_eq!(e.class, ErrorClass::FieldValidation);
}

#[tokio::test]
async fn deliveries_retry_on_5xx_and_stop_after_4xx() {
    let (sim, _portal) = portal().await;
    let (r, url, _rx) = receiver().await;
    r.answers.lock().unwrap().extend([500, 503]);
    admin(
        &sim,
        "/__admin/webhooks",
        json!({"targetUrl": url, "retryBaseMs": 10, "subscriptions": ["deal.creation"]}),
    )
    .await;
    let c = connector(&sim);
    c.write(
        "deals",
        WriteOp::Create {
            fields: fields(json!({"dealname": "Retry"})),
        },
    )
    .await
    .unwrap();
    wait_for(&r, 3).await;
    let got = r.got.lock().unwrap().clone();
    let attempts: Vec<u64> = got
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<Vec<Value>>(b).unwrap()[0]["attemptNumber"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(attempts, vec![0, 1, 2]);
    for (h, b) in &got {
        c.verify_webhook(&request(&url, h, b)).unwrap();
    }
    let state = admin_get(&sim, "/__admin/webhooks").await;
    assert_eq!(state["stats"]["delivered"], 1);

    r.got.lock().unwrap().clear();
    r.answers.lock().unwrap().push_back(400);
    c.write(
        "deals",
        WriteOp::Create {
            fields: fields(json!({"dealname": "Refused"})),
        },
    )
    .await
    .unwrap();
    wait_for(&r, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.got.lock().unwrap().len(), 1, "no retry after a 4xx");
    let state = admin_get(&sim, "/__admin/webhooks").await;
    assert_eq!(state["stats"]["failed"], 1);
}

#[tokio::test]
async fn batches_hold_at_most_100_events_and_drop_switch_loses_them() {
    let (sim, _portal) = portal().await;
    let (r, url, _rx) = receiver().await;
    admin(
        &sim,
        "/__admin/webhooks",
        json!({"targetUrl": url, "subscriptions": ["contact.creation"]}),
    )
    .await;
    seed_contacts(&sim, "w", 450).await;
    for _ in 0..500 {
        let n: usize = r
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice::<Vec<Value>>(b).unwrap().len())
            .sum();
        if n >= 450 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sizes: Vec<usize> = r
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| serde_json::from_slice::<Vec<Value>>(b).unwrap().len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 450);
    assert!(sizes.iter().all(|s| *s <= 100), "{sizes:?}");
    assert!(
        sizes.iter().any(|s| *s > 1),
        "events are batched: {sizes:?}"
    );

    r.got.lock().unwrap().clear();
    admin(&sim, "/__admin/webhooks", json!({"drop": true})).await;
    seed_contacts(&sim, "d", 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(r.got.lock().unwrap().is_empty());
    let state = admin_get(&sim, "/__admin/webhooks").await;
    assert_eq!(state["stats"]["dropped"], 20);
    assert!(state["settings"].get("clientSecret").is_none());
}
