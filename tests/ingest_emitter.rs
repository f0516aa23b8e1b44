//! The emitter writes each external record version to Kafka once, whichever
//! path brings it and however often, and polling cursors only move forward.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use extsync::connectors::Cursor;
use extsync::connectors::record::ChangeOp;
use extsync::ingest::cursor::CursorStore;
use extsync::ingest::emitter::{Emitter, IDEMPOTENCY_HEADER};
use extsync::ingest::{ChangeSource, ExternalChange};
use extsync::kafka::Topics;
use extsync::store::Db;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureProducer;
use support::{TestDb, TestKafka};

fn change(id: &str, version: &str, at: DateTime<Utc>, source: ChangeSource) -> ExternalChange {
    ExternalChange {
        system: "hubspot".into(),
        integration: "hs".into(),
        entity: "contacts".into(),
        object: "contacts".into(),
        external_id: id.into(),
        op: ChangeOp::Update,
        after: Some(
            serde_json::json!({"email": format!("{id}@example.com")})
                .as_object()
                .unwrap()
                .clone(),
        ),
        changed_fields: vec![],
        version: version.into(),
        modified_at: at,
        source,
        origin: None,
        received_at: Utc::now(),
    }
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

async fn setup() -> (TestDb, TestKafka, Db) {
    let db = TestDb::create().await;
    let state = extsync::store::open(&db.url, "test").await.unwrap();
    // Migrating twice is a no-op.
    let mut client = extsync::store::connect(&db.url).await.unwrap();
    extsync::store::migrate(&mut client).await.unwrap();
    (db, TestKafka::new(), state)
}

fn emitter(kafka: &TestKafka, state: Db) -> Emitter {
    let producer: FutureProducer = extsync::kafka::durable_producer(kafka.config())
        .create()
        .unwrap();
    Emitter::new(producer, Topics::new(&kafka.prefix), state)
}

async fn read_all(kafka: &TestKafka, topic: &str, expect: usize) -> Vec<(String, String, String)> {
    let consumer: StreamConsumer = kafka
        .config()
        .set("group.id", support::unique("g"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    // Read what was promised, then make sure nothing more follows.
    loop {
        let wait = if out.len() < expect {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(2)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => break,
            Ok(msg) => {
                let msg = msg.unwrap();
                let v: ExternalChange = serde_json::from_slice(msg.payload().unwrap()).unwrap();
                let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
                let idem = msg
                    .headers()
                    .unwrap()
                    .iter()
                    .find(|h| h.key == IDEMPOTENCY_HEADER)
                    .unwrap();
                assert_eq!(idem.value.unwrap(), v.idempotency_key().as_bytes());
                out.push((key, v.version, v.source.as_str().to_string()));
            }
        }
    }
    assert!(out.len() >= expect, "expected {expect} events, got {out:?}");
    out
}

#[tokio::test]
async fn each_version_is_emitted_once_across_paths_and_restarts() {
    let (_db, kafka, state) = setup().await;
    let em = emitter(&kafka, state.clone());

    let s = em
        .emit(vec![
            change("1", "v1", t(0), ChangeSource::Webhook),
            change("2", "v1", t(0), ChangeSource::Webhook),
        ])
        .await
        .unwrap();
    assert_eq!((s.emitted, s.collapsed), (2, 0));
    // The poller sees the same versions: collapsed.
    let s = em
        .emit(vec![
            change("1", "v1", t(0), ChangeSource::Poll),
            change("2", "v1", t(0), ChangeSource::Poll),
        ])
        .await
        .unwrap();
    assert_eq!((s.emitted, s.collapsed), (0, 2));
    // A newer version of 1 goes through; an older one of 2 (late webhook) does not.
    let s = em
        .emit(vec![
            change("1", "v2", t(5), ChangeSource::Poll),
            change("2", "v0", t(-5), ChangeSource::Webhook),
        ])
        .await
        .unwrap();
    assert_eq!((s.emitted, s.collapsed), (1, 1));

    // A restarted process (empty cache) still knows what was emitted.
    em.flush().await;
    let em2 = emitter(&kafka, state.clone());
    let s = em2
        .emit(vec![
            change("1", "v2", t(5), ChangeSource::Webhook),
            change("3", "v1", t(6), ChangeSource::Stream),
        ])
        .await
        .unwrap();
    assert_eq!((s.emitted, s.collapsed), (1, 1));

    let topic = Topics::new(&kafka.prefix).external("hubspot");
    let mut seen = read_all(&kafka, &topic, 4).await;
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("1".into(), "v1".into(), "webhook".into()),
            ("1".into(), "v2".into(), "poll".into()),
            ("2".into(), "v1".into(), "webhook".into()),
            ("3".into(), "v1".into(), "stream".into()),
        ]
    );
}

#[tokio::test]
async fn concurrent_paths_racing_on_one_version_emit_it_once() {
    let (_db, kafka, state) = setup().await;
    let em = Arc::new(emitter(&kafka, state));
    let mut tasks = Vec::new();
    for path in [
        ChangeSource::Webhook,
        ChangeSource::Poll,
        ChangeSource::Stream,
        ChangeSource::Webhook,
    ] {
        let em = em.clone();
        tasks.push(tokio::spawn(async move {
            let batch = (0..50)
                .map(|i| change(&i.to_string(), "v1", t(i), path))
                .collect();
            em.emit(batch).await.unwrap().emitted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 50);
    let topic = Topics::new(&kafka.prefix).external("hubspot");
    assert_eq!(read_all(&kafka, &topic, 50).await.len(), 50);
}

#[tokio::test]
async fn cursors_are_durable_and_only_move_forward() {
    let (_db, _kafka, state) = setup().await;
    let store = CursorStore::new(state);
    assert_eq!(store.load("hs", "contacts").await.unwrap(), None);
    let c1 = Cursor {
        modified_at: t(10),
        id: "5".into(),
    };
    store.advance("hs", "contacts", &c1).await.unwrap();
    // Same timestamp, greater id: forward.
    let c2 = Cursor {
        modified_at: t(10),
        id: "7".into(),
    };
    store.advance("hs", "contacts", &c2).await.unwrap();
    assert_eq!(
        store.load("hs", "contacts").await.unwrap(),
        Some(c2.clone())
    );
    // Backwards: ignored.
    store
        .advance(
            "hs",
            "contacts",
            &Cursor {
                modified_at: t(9),
                id: "9".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.load("hs", "contacts").await.unwrap(), Some(c2));
    // Other objects are independent.
    assert_eq!(store.load("hs", "companies").await.unwrap(), None);
}
