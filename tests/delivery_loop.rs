//! No loops through the billing side: with capture running, what the billing
//! writer commits never reaches the change topics, while a person's change
//! to the same table does.

mod support;

use std::time::{Duration, Instant};

use extsync::capture::{self, CaptureError, RunSummary};
use extsync::delivery::{BillingWrite, BillingWriter, BillingWriterConfig, OutcomeKind};
use rdkafka::Message;
use serde_json::{Value, json};
use support::{TestDb, TestKafka};
use tokio_util::sync::CancellationToken;

/// `(key, op)` of every event on `topic` until `want` arrived or the topic
/// stayed quiet for `settle` after that.
fn read_events(
    kafka: &TestKafka,
    topic: &str,
    want: usize,
    settle: Duration,
) -> Vec<(Value, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    // Capture creates its topics at start; wait for them.
    let consumer = kafka.reader_from_start(topic, deadline);
    let mut out = Vec::new();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(m) => {
                let m = m.unwrap();
                let key: Value = m
                    .key()
                    .map(|k| serde_json::from_slice(k).unwrap())
                    .unwrap_or(Value::Null);
                let value: Value = m
                    .payload()
                    .map(|p| serde_json::from_slice(p).unwrap())
                    .unwrap_or(Value::Null);
                out.push((key, value["op"].as_str().unwrap_or_default().to_string()));
                quiet_since = Instant::now();
            }
            None if out.len() >= want && quiet_since.elapsed() > settle => break,
            None => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_writes_never_come_back_through_capture() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, name text, updated_at timestamptz);
         INSERT INTO accounts VALUES (1, 'Acme', '2024-01-01Z'), (2, 'Globex', '2024-01-01Z');",
    )
    .await
    .unwrap();
    let origin = db.name.clone();
    let slot = format!("{}_slot", db.name);
    let yaml = format!(
        "name: loop\npostgres:\n  url: {}\n  tables: [public.accounts]\n  slot: {slot}\n  snapshot: false\n  heartbeatSecs: 1\n  ownWrites: drop\n  origin: {origin}\nkafka:\n  brokers: {}\n  topicPrefix: {}\ntelemetry:\n  metricsAddress: \"\"\n",
        db.url, kafka.brokers, kafka.prefix
    );
    let pipeline = extsync::config::parse_str(&yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    let stop = CancellationToken::new();
    let run = {
        let (p, s) = (pipeline.clone(), stop.clone());
        tokio::spawn(async move { capture::run(&p, s).await })
    };
    support::wait_streaming(&c, &slot).await;

    let writer = BillingWriter::connect(
        &db.url,
        BillingWriterConfig {
            origin: origin.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = writer
        .write(&[BillingWrite {
            table: "public.accounts".into(),
            key: json!({"id": 1}).as_object().unwrap().clone(),
            columns: json!({"name": "Acme from the CRM"})
                .as_object()
                .unwrap()
                .clone(),
            as_of: "2024-02-01T00:00:00Z".parse().unwrap(),
        }])
        .await
        .unwrap();
    assert_eq!(out[0].kind, OutcomeKind::Updated);
    c.batch_execute("UPDATE accounts SET name = 'Globex by hand' WHERE id = 2")
        .await
        .unwrap();

    let topic = format!("{}.cdc.public.accounts", kafka.prefix);
    let events =
        tokio::task::spawn_blocking(move || read_events(&kafka, &topic, 1, Duration::from_secs(2)))
            .await
            .unwrap();
    stop.cancel();
    let summary: Result<RunSummary, CaptureError> =
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("capture stops")
            .expect("capture task");
    summary.expect("capture ends without error");
    drop(writer);
    c.execute("SELECT pg_replication_origin_drop($1)", &[&origin])
        .await
        .unwrap();

    assert_eq!(
        events,
        [(json!({"id": 2}), "u".to_string())],
        "only the person's change is captured"
    );
}
