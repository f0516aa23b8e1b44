//! Capture as a process: `kill -9` in the middle of a stream and a restart
//! lose no committed change (duplicates carry the same idempotency key), and
//! SIGTERM flushes, acknowledges and exits 0.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};
use support::{TestDb, TestKafka};

struct Event {
    key: String,
    value: Value,
    idempotency_key: String,
    commit_lsn: String,
}

/// Reads the whole topic until `done` holds for what was read (or 60 s).
fn read_until(kafka: &TestKafka, topic: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(60);
    // Capture creates its topics at start; wait for them.
    let consumer = kafka.reader_from_start(topic, deadline);
    let mut out = Vec::new();
    // Partitions are read concurrently: once `done` holds, drain until quiet.
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if quiet_since.is_some_and(|t| t.elapsed() > Duration::from_millis(1500)) {
            break;
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            if quiet_since.is_none() && done(&out) {
                quiet_since = Some(Instant::now());
            }
            continue;
        };
        if done(&out) {
            quiet_since = Some(Instant::now());
        }
        let m = m.unwrap();
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|x| x.key == name))
                .map(|x| String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                .unwrap_or_default()
        };
        out.push(Event {
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            value: serde_json::from_slice(m.payload().unwrap()).unwrap(),
            idempotency_key: header(extsync::capture::HEADER_IDEMPOTENCY_KEY),
            commit_lsn: header(extsync::capture::HEADER_COMMIT_LSN),
        });
    }
    out
}

fn pipeline_file(db: &TestDb, kafka: &TestKafka) -> PathBuf {
    let dir = std::env::temp_dir().join(support::unique("extsync-capture-"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pipeline.yaml");
    std::fs::write(
        &path,
        format!(
            "name: proc\npostgres:\n  url: {}\n  tables: [public.k]\n  slot: {}_slot\n  heartbeatSecs: 1\nkafka:\n  brokers: {}\n  topicPrefix: {}\ntelemetry:\n  metricsAddress: \"\"\n",
            db.url, db.name, kafka.brokers, kafka.prefix
        ),
    )
    .unwrap();
    path
}

fn spawn_capture(file: &PathBuf) -> Child {
    Command::new(env!("CARGO_BIN_EXE_extsync"))
        .arg("capture")
        .arg(file)
        .env("EXTSYNC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting extsync capture")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing_and_sigterm_exits_zero() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let c = db.client().await;
    let slot = format!("{}_slot", db.name);
    c.batch_execute("CREATE TABLE k (id int PRIMARY KEY, v int NOT NULL)")
        .await
        .unwrap();
    let file = pipeline_file(&db, &kafka);
    let _slot_cleanup = support::SlotGuard::new(&db.url, &slot);
    let mut child = spawn_capture(&file);
    support::wait_streaming(&c, &slot).await;

    // A writer commits small transactions all along; capture dies under it.
    let url = db.url.clone();
    let writer = tokio::spawn(async move {
        let w = support::connect(&url).await;
        for t in 0..300 {
            let base = t * 10;
            w.batch_execute(&format!(
                "BEGIN; INSERT INTO k SELECT g, 0 FROM generate_series({}, {}) g; UPDATE k SET v = v + 1 WHERE id = {}; COMMIT;",
                base + 1,
                base + 10,
                base / 2 + 1
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut child = spawn_capture(&file);
    writer.await.unwrap();
    c.batch_execute("INSERT INTO k VALUES (-1, -1)")
        .await
        .unwrap();

    let topic = format!("{}.cdc.public.k", kafka.prefix);
    let (k2, t2) = (kafka.clone(), topic.clone());
    let events = tokio::task::spawn_blocking(move || {
        read_until(&k2, &t2, |ev| ev.iter().any(|e| e.key == r#"{"id":-1}"#))
    })
    .await
    .unwrap();
    let sentinel_lsn = events
        .iter()
        .find(|e| e.key == r#"{"id":-1}"#)
        .map(|e| extsync::capture::parse_lsn(&e.commit_lsn).unwrap())
        .expect("every change after the restart arrives");

    // SIGTERM: flush, acknowledge, exit 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "capture did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0), "clean stop exits 0");
    let flushed: String = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        extsync::capture::parse_lsn(&flushed).unwrap() >= sentinel_lsn,
        "the slot was acknowledged up to what Kafka has ({flushed})"
    );

    // Nothing lost: the events describe the table exactly.
    let mut state: BTreeMap<String, Value> = BTreeMap::new();
    for e in &events {
        match e.value["op"].as_str().unwrap() {
            "d" => {
                state.remove(&e.key);
            }
            _ => {
                state.insert(e.key.clone(), e.value["after"].clone());
            }
        }
    }
    let rows = c.query("SELECT id, v FROM k", &[]).await.unwrap();
    assert_eq!(rows.len(), 3001);
    for r in &rows {
        let (id, v): (i32, i32) = (r.get(0), r.get(1));
        assert_eq!(
            state.get(&json!({"id": id}).to_string()),
            Some(&json!({"id": id, "v": v})),
            "row {id}"
        );
    }
    assert_eq!(state.len(), rows.len());

    // Duplicates come only from the replayed tail and carry the same key.
    let mut by_key: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in &events {
        assert!(!e.idempotency_key.is_empty());
        by_key.entry(&e.idempotency_key).or_default().push(e);
    }
    for (k, dups) in &by_key {
        for d in dups {
            assert_eq!(
                d.value["after"], dups[0].value["after"],
                "same idempotency key {k}, different change"
            );
            assert_eq!(d.key, dups[0].key);
        }
    }
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}
