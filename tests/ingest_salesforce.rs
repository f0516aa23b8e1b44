//! Salesforce ingest against the simulator, real Kafka and real Postgres:
//! change events over CometD arrive once, and a poller that dies mid-sweep
//! over 10,500 records sharing one modification time resumes from its
//! durable cursor without losing or repeating a version.

#[path = "salesforce_support/mod.rs"]
mod salesforce_support;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use extsync::connectors::salesforce::SalesforceConnector;
use extsync::connectors::{Connector, WriteOp};
use extsync::ingest::cursor::CursorStore;
use extsync::ingest::poller::Poller;
use extsync::ingest::{Emitter, ExternalChange, IngestTarget};
use extsync::kafka::Topics;
use extsync::simulators::faults::FaultsSnapshot;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use salesforce_support::fields;
use serde_json::json;
use support::{TestDb, TestKafka};
use tokio_util::sync::CancellationToken;

fn pipeline(
    db: &TestDb,
    kafka: &TestKafka,
    base: &str,
    sweep_secs: u64,
) -> extsync::config::Pipeline {
    let yaml = format!(
        r#"
name: sfingest
postgres: {{ url: "{db}" }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{prefix}" }}
telemetry: {{ metricsAddress: "" }}
ingest: {{ webhookAddress: "", sweepSecs: {sweep_secs}, pollOverlapSecs: 5 }}
integrations:
  salesforce:
    provider: salesforce
    baseUrl: "{base}"
    credentials: {{ clientId: "${{TEST_SF_CLIENT_ID}}", clientSecret: "${{TEST_SF_CLIENT_SECRET}}", refreshToken: "${{TEST_SF_REFRESH_TOKEN}}" }}
    rateLimit: {{ requests: 100000, burst: 10000 }}
    entities:
      accounts: {{ externalObject: Account, table: public.accounts, mappings: [{{ alguna: name, external: Name }}] }}
"#,
        db = db.url,
        brokers = kafka.brokers,
        prefix = kafka.prefix,
    );
    extsync::config::parse_str(&yaml, "sfingest.yaml").unwrap()
}

async fn read_all(kafka: &TestKafka, expect: usize, limit: Duration) -> Vec<ExternalChange> {
    let consumer: StreamConsumer = kafka
        .config()
        .set("group.id", support::unique("g"))
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("{}.external.salesforce", kafka.prefix)])
        .unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        // Once the expected count is reached, make sure nothing more follows.
        let wait = if out.len() < expect {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::from_secs(2)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => out.push(serde_json::from_slice(m.payload().unwrap()).unwrap()),
            // The topic may not exist yet: keep waiting.
            Ok(Err(_)) if out.len() < expect => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => return out,
        }
    }
}

/// Creates an Account named `name` through `c`; its id.
async fn create_account(c: &SalesforceConnector, name: &str) -> String {
    c.write(
        "Account",
        WriteOp::Create {
            fields: fields(json!({ "Name": name })),
        },
    )
    .await
    .unwrap()
    .id
}

/// Renames Account `id` through `c`.
async fn rename_account(c: &SalesforceConnector, id: &str, name: &str) {
    c.write(
        "Account",
        WriteOp::Update {
            id: id.to_string(),
            fields: fields(json!({ "Name": name })),
        },
    )
    .await
    .unwrap();
}

/// Ingest against a fresh org with sweeps far apart: only the change-event
/// stream brings changes. `person` writes as another client than extsync.
struct StreamOnly {
    org: salesforce_support::Org,
    person: SalesforceConnector,
    kafka: TestKafka,
    stop: CancellationToken,
    ingest: extsync::ingest::service::Ingest,
    _db: TestDb,
}

impl StreamOnly {
    async fn start() -> StreamOnly {
        support::salesforce_credentials_env();
        let org = salesforce_support::start().await;
        let person = org.person();
        let (db, kafka) = (TestDb::create().await, TestKafka::new());
        let p = pipeline(&db, &kafka, &org.url(), 3600);
        let stop = CancellationToken::new();
        let ingest = extsync::ingest::service::start(&p, stop.clone())
            .await
            .unwrap();
        // The initial sweep runs at start; give the subscriber time to connect.
        tokio::time::sleep(Duration::from_secs(2)).await;
        StreamOnly {
            org,
            person,
            kafka,
            stop,
            ingest,
            _db: db,
        }
    }

    /// The external changes in Kafka once `expect` arrived (or 30 s passed)
    /// and nothing followed; then ingest is stopped.
    async fn read_then_stop(self, expect: usize) -> Vec<ExternalChange> {
        let got = read_all(&self.kafka, expect, Duration::from_secs(30)).await;
        self.stop.cancel();
        self.ingest.join().await;
        got
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_from_the_stream_arrive_once_and_extsyncs_own_are_dropped() {
    let s = StreamOnly::start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create_account(&s.person, &format!("Streamed {i}")).await);
    }
    // Records are re-read when their event arrives, so let the creates land
    // before the update (else the create already carries the update).
    let created = read_all(&s.kafka, 3, Duration::from_secs(30)).await;
    assert_eq!(created.len(), 3, "{created:?}");
    // extsync's own writes (its connector, `client=extsync`) are echoes: a
    // create and an edit of a person's record, both dropped. The person's
    // edit after them arrives.
    let own = create_account(&s.org.connector, "Written by extsync").await;
    rename_account(&s.org.connector, &ids[1], "Renamed by extsync").await;
    rename_account(&s.person, &ids[0], "Streamed 0 bis").await;
    let got = s.read_then_stop(4).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|c| c.source.as_str() == "stream"), "{got:?}");
    assert!(
        got.iter().all(|c| c
            .origin
            .as_deref()
            .is_some_and(|o| o.contains("client=person"))),
        "origin carries the writer: {got:?}"
    );
    assert!(
        got.iter().all(|c| c.external_id != own),
        "extsync's own create was emitted: {got:?}"
    );
    let of = |id: &str| got.iter().filter(|c| c.external_id == id).count();
    assert_eq!((of(&ids[0]), of(&ids[1])), (2, 1), "{got:?}");
    let last = got.iter().rfind(|c| c.external_id == ids[0]).unwrap();
    assert_eq!(
        last.after.as_ref().unwrap()["Name"],
        json!("Streamed 0 bis")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_whose_records_cannot_be_read_are_taken_again() {
    let s = StreamOnly::start().await;
    // Every API call waits 500 ms: ingest's read of the new record is still
    // waiting when the one failure (503) is armed, and takes it.
    let faults = s.org.sim.faults().clone();
    faults.set(&FaultsSnapshot {
        latency_ms: Some(500),
        ..FaultsSnapshot::default()
    });
    let id = create_account(&s.person, "Read again").await;
    faults.set(&FaultsSnapshot {
        fail_next: Some(1),
        latency_ms: Some(0),
        ..FaultsSnapshot::default()
    });
    let got = s.read_then_stop(1).await;
    assert_eq!(faults.snapshot().fail_next, Some(0), "the read failed once");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].external_id, id);
    assert_eq!(got[0].after.as_ref().unwrap()["Name"], json!("Read again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_dying_mid_sweep_resumes_from_its_cursor_without_loss_or_repeat() {
    support::salesforce_credentials_env();
    let org = salesforce_support::start().await;
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let p = pipeline(&db, &kafka, &org.url(), 3600);
    // 10,500 records sharing one modification time.
    org.sim.freeze_clock(Some(chrono::Utc::now()));
    for chunk in 0..(10_500 / 200 + 1) {
        let n = (10_500 - chunk * 200).min(200);
        let ops = (0..n)
            .map(|i| WriteOp::Create {
                fields: fields(json!({"Name": format!("Bulk {chunk}-{i}")})),
            })
            .collect();
        for r in org.connector.write_batch("Account", ops).await.unwrap() {
            r.unwrap();
        }
    }
    org.sim.freeze_clock(None);

    let state = extsync::store::open(&db.url, "test").await.unwrap();
    let integration = p.integrations.values().next().unwrap();
    let make_poller = || {
        let producer = extsync::kafka::durable_producer(kafka.config())
            .create()
            .unwrap();
        Poller {
            target: Arc::new(IngestTarget::new(
                "salesforce",
                integration,
                org.connector.clone(),
            )),
            entity: "accounts".into(),
            object: "Account".into(),
            cursors: CursorStore::new(state.clone()),
            emitter: Arc::new(Emitter::new(
                producer,
                Topics::new(&kafka.prefix),
                state.clone(),
            )),
            overlap: Duration::from_secs(5),
        }
    };
    // First process: dies once its cursor has moved (after a page or two).
    let first = make_poller();
    let cursors = CursorStore::new(state.clone());
    tokio::select! {
        _ = first.sweep() => panic!("the sweep finished before it could be interrupted"),
        _ = async {
            while cursors.load("salesforce", "Account").await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } => {}
    }
    drop(first);
    // A new process (empty caches) resumes from the durable cursor.
    let stats = make_poller().sweep().await.unwrap();
    assert!(
        stats.read < 10_500 + 2_000,
        "resumed from the start instead of the cursor: {stats:?}"
    );

    let got = read_all(&kafka, 10_500, Duration::from_secs(60)).await;
    let mut per_record: HashMap<(String, String), usize> = HashMap::new();
    for c in &got {
        *per_record
            .entry((c.external_id.clone(), c.version.clone()))
            .or_default() += 1;
    }
    assert_eq!(per_record.len(), 10_500, "every record once");
    assert!(
        per_record.values().all(|n| *n == 1),
        "a version was emitted twice"
    );
}
