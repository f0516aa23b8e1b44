//! Ingest end to end against the HubSpot simulator, real Kafka and real
//! Postgres: signed webhooks, the poller catching what webhooks dropped, every
//! version in Kafka exactly once, and bad requests rejected with nothing
//! produced.

#[path = "hubspot_support/mod.rs"]
mod hubspot_support;
mod support;

use std::collections::HashMap;
use std::sync::Once;
use std::time::Duration;

use extsync::connectors::hubspot::{AuthMode, HubSpotConnector};
use extsync::connectors::{Connector, RequestBudget, WriteOp};
use extsync::ingest::ExternalChange;
use extsync::simulators::RunningSimulator;
use extsync::simulators::hubspot::limits::LimitsConfig;
use extsync::simulators::hubspot::{self, HubSpotConfig, HubSpotSim};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use support::{TestDb, TestKafka};
use tokio_util::sync::CancellationToken;

static ENV: Once = Once::new();

fn credentials_env() {
    ENV.call_once(|| {
        // SAFETY: set once, before any ingest task of this test binary reads them.
        unsafe {
            std::env::set_var("TEST_HUBSPOT_CLIENT_ID", hubspot::DEFAULT_CLIENT_ID);
            std::env::set_var("TEST_HUBSPOT_CLIENT_SECRET", hubspot::DEFAULT_CLIENT_SECRET);
            std::env::set_var("TEST_HUBSPOT_REFRESH_TOKEN", hubspot::DEFAULT_REFRESH_TOKEN);
        }
    });
}

struct Setup {
    _db: TestDb,
    kafka: TestKafka,
    sim: RunningSimulator,
    _state: HubSpotSim,
    webhook_url: String,
    stop: CancellationToken,
}

async fn setup(sweep_secs: u64) -> Setup {
    credentials_env();
    let db = TestDb::create().await;
    let kafka = TestKafka::new();
    let (sim, state) = hubspot::start(HubSpotConfig {
        limits: LimitsConfig::unlimited(),
        ..HubSpotConfig::default()
    })
    .await
    .unwrap();
    let yaml = format!(
        r#"
name: ingest
postgres: {{ url: "{db}" }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{prefix}" }}
telemetry: {{ metricsAddress: "" }}
ingest: {{ webhookAddress: "127.0.0.1:0", sweepSecs: {sweep_secs}, pollOverlapSecs: 5 }}
integrations:
  hubspot:
    provider: hubspot
    baseUrl: "{base}"
    credentials:
      clientId: ${{TEST_HUBSPOT_CLIENT_ID}}
      clientSecret: ${{TEST_HUBSPOT_CLIENT_SECRET}}
      refreshToken: ${{TEST_HUBSPOT_REFRESH_TOKEN}}
    rateLimit: {{ requests: 10000, burst: 1000 }}
    entities:
      contacts:
        externalObject: contacts
        table: public.contacts
        mappings:
          - {{ alguna: email, external: email }}
"#,
        db = db.url,
        brokers = kafka.brokers,
        prefix = kafka.prefix,
        base = sim.base_url()
    );
    let pipeline = extsync::config::parse_str(&yaml, "ingest.yaml").unwrap();
    let stop = CancellationToken::new();
    let ingest = extsync::ingest::service::start(&pipeline, stop.clone())
        .await
        .unwrap();
    let webhook_url = format!("http://{}/webhooks/hubspot", ingest.webhook_addr.unwrap());
    tokio::spawn(ingest.join());
    let admin = reqwest::Client::new();
    let resp = admin
        .post(format!("{}/__admin/webhooks", sim.base_url()))
        .json(&json!({"targetUrl": webhook_url, "retryBaseMs": 50}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    Setup {
        _db: db,
        kafka,
        sim,
        _state: state,
        webhook_url,
        stop,
    }
}

/// A person editing in HubSpot (private-app token, `CRM_UI` changes).
fn person(sim: &RunningSimulator) -> HubSpotConnector {
    HubSpotConnector::new(
        sim.base_url(),
        AuthMode::PrivateApp(hubspot::DEFAULT_PRIVATE_APP_TOKEN.into()),
        RequestBudget::unlimited(),
    )
}

/// Creates a contact through `by`; its id.
async fn create_contact(by: &HubSpotConnector, email: &str) -> String {
    by.write(
        "contacts",
        WriteOp::Create {
            fields: contact(email, "A"),
        },
    )
    .await
    .unwrap()
    .id
}

fn contact(email: &str, first: &str) -> serde_json::Map<String, Value> {
    json!({"email": email, "firstname": first})
        .as_object()
        .unwrap()
        .clone()
}

/// Reads the external topic until `until` holds or `limit` passes; returns
/// (id, version) pairs in arrival order.
async fn read_changes(
    kafka: &TestKafka,
    limit: Duration,
    until: impl Fn(&[ExternalChange]) -> bool,
) -> Vec<ExternalChange> {
    let consumer: StreamConsumer = kafka
        .config()
        .set("group.id", support::unique("g"))
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("{}.external.hubspot", kafka.prefix)])
        .unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    while tokio::time::Instant::now() < deadline && !until(&out) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    out
}

fn versions_once(changes: &[ExternalChange]) {
    let mut seen = HashMap::new();
    for c in changes {
        *seen
            .entry((c.external_id.clone(), c.version.clone()))
            .or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "versions emitted more than once: {dups:?}");
}

#[tokio::test]
async fn webhooks_and_polls_deliver_every_version_exactly_once() {
    let s = setup(1).await;
    let hs = person(&s.sim);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create_contact(&hs, &format!("c{i}@x.test")).await);
    }
    let changes = read_changes(&s.kafka, Duration::from_secs(30), |c| {
        ids.iter().all(|id| c.iter().any(|x| &x.external_id == id))
    })
    .await;
    assert!(
        ids.iter()
            .all(|id| changes.iter().any(|x| &x.external_id == id)),
        "{changes:?}"
    );
    let first = changes.iter().find(|c| c.external_id == ids[0]).unwrap();
    assert_eq!(first.system, "hubspot");
    assert_eq!(first.entity, "contacts");
    assert_eq!(first.after.as_ref().unwrap()["email"], json!("c0@x.test"));

    // Webhooks stop arriving; the poller still brings the updates.
    reqwest::Client::new()
        .post(format!("{}/__admin/webhooks", s.sim.base_url()))
        .json(&json!({"drop": true}))
        .send()
        .await
        .unwrap();
    for id in &ids[..3] {
        hs.write(
            "contacts",
            WriteOp::Update {
                id: id.clone(),
                fields: contact(&format!("{id}@new.test"), "B"),
            },
        )
        .await
        .unwrap();
    }
    let changes = read_changes(&s.kafka, Duration::from_secs(30), |c| {
        ids[..3].iter().all(|id| {
            c.iter().any(|x| {
                &x.external_id == id
                    && x.after
                        .as_ref()
                        .is_some_and(|a| a["firstname"] == json!("B"))
            })
        })
    })
    .await;
    for id in &ids[..3] {
        let updated = changes.iter().find(|x| {
            &x.external_id == id
                && x.after
                    .as_ref()
                    .is_some_and(|a| a["firstname"] == json!("B"))
        });
        assert!(
            updated.is_some_and(|u| u.source.as_str() == "poll"),
            "update of {id} not polled: {changes:?}"
        );
    }
    // Let a few more sweeps (with their overlap window) pass: still once per version.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = read_changes(&s.kafka, Duration::from_secs(3), |_| false).await;
    versions_once(&all);
    assert_eq!(
        all.iter().filter(|c| ids.contains(&c.external_id)).count(),
        8,
        "{all:?}"
    );
    s.stop.cancel();
}

#[tokio::test]
async fn webhooks_of_extsyncs_own_writes_are_dropped() {
    // Sweeps far apart so only webhooks could produce anything.
    let s = setup(3600).await;
    // Let the sweep at start pass: polls name no writer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // extsync itself: the OAuth app whose webhooks ingest receives
    // (`INTEGRATION` changes with the app's id as `sourceId`).
    let (own, person) = (hubspot_support::connector(&s.sim), person(&s.sim));
    let mine = create_contact(&own, "own@x.test").await;
    let theirs = create_contact(&person, "person@x.test").await;
    // extsync's own edit of the person's contact is dropped too; the
    // person's later edit arrives.
    for (by, first) in [(&own, "Own"), (&person, "Person")] {
        by.write(
            "contacts",
            WriteOp::Update {
                id: theirs.clone(),
                fields: contact("person@x.test", first),
            },
        )
        .await
        .unwrap();
    }
    let arrived = |c: &[ExternalChange]| {
        c.iter().any(|x| {
            x.external_id == theirs
                && x.after
                    .as_ref()
                    .is_some_and(|a| a["firstname"] == json!("Person"))
        })
    };
    let mut changes = read_changes(&s.kafka, Duration::from_secs(30), arrived).await;
    assert!(arrived(&changes), "the person's edit arrives: {changes:?}");
    changes.extend(read_changes(&s.kafka, Duration::from_secs(2), |_| false).await);
    assert!(
        changes.iter().all(|c| c.external_id != mine),
        "extsync's own create was emitted: {changes:?}"
    );
    let of_theirs: Vec<_> = changes
        .iter()
        .filter(|c| c.external_id == theirs)
        .map(|c| c.origin.clone().unwrap_or_default())
        .collect();
    assert!(
        of_theirs.iter().all(|o| o.starts_with("CRM_UI")),
        "only the person's changes arrive: {of_theirs:?}"
    );
    s.stop.cancel();
}

#[tokio::test]
async fn bad_webhook_requests_are_rejected_and_produce_nothing() {
    // Sweeps far apart so only webhooks could produce anything.
    let s = setup(3600).await;
    let http = reqwest::Client::new();
    let body = r#"[{"eventId":1,"subscriptionId":1,"portalId":62515,"appId":4242001,"occurredAt":1700000000000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":1,"changeSource":"CRM_UI"}]"#;
    let now_ms = chrono::Utc::now().timestamp_millis().to_string();

    // Missing signature.
    let r = http
        .post(&s.webhook_url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Wrong signature.
    let r = http
        .post(&s.webhook_url)
        .header("content-type", "application/json")
        .header("X-HubSpot-Signature-v3", "bm90IGEgc2lnbmF0dXJl")
        .header("X-HubSpot-Request-Timestamp", &now_ms)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let msg: Value = r.json().await.unwrap();
    assert!(
        !msg["error"].as_str().unwrap().contains("contact.creation"),
        "the body must not be echoed"
    );
    // Wrong content type.
    let r = http
        .post(&s.webhook_url)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Unknown integration.
    let r = http
        .post(s.webhook_url.replace("/hubspot", "/nope"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Oversized body.
    let big = format!("[{}]", "1,".repeat(600_000) + "1");
    let r = http
        .post(&s.webhook_url)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // A correctly signed but malformed payload.
    let sig = sign(&format!("POST{}{}{}", s.webhook_url, "{not json", now_ms));
    let r = http
        .post(&s.webhook_url)
        .header("content-type", "application/json")
        .header("X-HubSpot-Signature-v3", sig)
        .header("X-HubSpot-Request-Timestamp", &now_ms)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let produced = read_changes(&s.kafka, Duration::from_secs(3), |c| !c.is_empty()).await;
    assert!(produced.is_empty(), "{produced:?}");
    s.stop.cancel();
}

fn sign(source: &str) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(hubspot::DEFAULT_CLIENT_SECRET.as_bytes())
            .unwrap();
    mac.update(source.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
