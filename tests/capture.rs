//! Capture against real PostgreSQL and Kafka: every committed change lands
//! in Kafka with its type, key, envelope and headers; snapshots are exact;
//! own writes are dropped or tagged; setup problems name their fix.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use extsync::capture::{self, CaptureError, RunSummary};
use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::{Value, json};
use support::{SlotGuard, TestDb, TestKafka, wait_streaming};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A capture run inside the test process.
struct Running {
    stop: CancellationToken,
    handle: JoinHandle<Result<RunSummary, CaptureError>>,
}

impl Running {
    async fn stop(self) -> RunSummary {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("capture stops within 60 s")
            .expect("capture task")
            .expect("capture ends without error")
    }
}

fn pipeline(
    db: &TestDb,
    kafka: &TestKafka,
    tables: &[&str],
    extra: &str,
) -> extsync::config::Pipeline {
    let yaml = format!(
        "name: cap\npostgres:\n  url: {}\n  tables: [{}]\n  slot: {}\n  heartbeatSecs: 1\n{extra}kafka:\n  brokers: {}\n  topicPrefix: {}\ntelemetry:\n  metricsAddress: \"\"\n",
        db.url,
        tables.join(", "),
        slot(db),
        kafka.brokers,
        kafka.prefix
    );
    extsync::config::parse_str(&yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// Slots are cluster-wide: each test database gets its own.
fn slot(db: &TestDb) -> String {
    format!("{}_slot", db.name)
}

/// Drops the test's slot when the test ends.
fn guard(db: &TestDb) -> SlotGuard {
    SlotGuard::new(&db.url, &slot(db))
}

async fn start(p: &extsync::config::Pipeline) -> Running {
    let stop = CancellationToken::new();
    let (p2, s2) = (p.clone(), stop.clone());
    let handle = tokio::spawn(async move { capture::run(&p2, s2).await });
    Running { stop, handle }
}

#[derive(Debug, Clone)]
struct Event {
    key: Option<Value>,
    value: Value,
    headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning until `want` events arrived (or 60 s);
/// `usize::MAX` reads until the topic is quiet.
fn read_topic_blocking(kafka: &TestKafka, topic: &str, want: usize, wait: Duration) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(60);
    // Capture creates its topics at start; wait for them.
    let consumer = kafka.reader_from_start(topic, deadline);
    let mut out = Vec::new();
    let mut last = Instant::now();
    let deadline = deadline.min(Instant::now() + wait);
    while out.len() < want && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            // "Everything": stop once the topic has been quiet for a while.
            if want == usize::MAX && last.elapsed() > Duration::from_millis(1500) {
                break;
            }
            continue;
        };
        last = Instant::now();
        let m = m.unwrap();
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for hd in h.iter() {
                headers.insert(
                    hd.key.to_string(),
                    String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Event {
            key: m.key().map(|k| serde_json::from_slice(k).unwrap()),
            value: m
                .payload()
                .map(|p| serde_json::from_slice(p).unwrap())
                .unwrap_or(Value::Null),
            headers,
        });
    }
    if want != usize::MAX && out.len() < want {
        eprintln!(
            "{topic}: read {} of {want} events; in Kafka: {}",
            out.len(),
            kafka.watermarks(topic)
        );
    }
    out
}

/// Reads `topic` from the beginning until `want` events arrived (or 60 s),
/// off the runtime so capture keeps running meanwhile.
async fn read_topic(kafka: &TestKafka, topic: &str, want: usize) -> Vec<Event> {
    let (k, t) = (kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || read_topic_blocking(&k, &t, want, Duration::from_secs(60)))
        .await
        .unwrap()
}

/// Reads whatever is in `topic` after waiting `settle` for stragglers.
async fn read_all(kafka: &TestKafka, topic: &str, at_least: usize, settle: Duration) -> Vec<Event> {
    let first = read_topic(kafka, topic, at_least).await;
    let (k, t, n) = (kafka.clone(), topic.to_string(), first.len() + 1);
    let all = tokio::task::spawn_blocking(move || read_topic_blocking(&k, &t, n, settle))
        .await
        .unwrap();
    if all.len() < first.len() { first } else { all }
}

fn topic(kafka: &TestKafka, table: &str) -> String {
    format!("{}.cdc.public.{table}", kafka.prefix)
}

const ALL_TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE types (
    id bigint PRIMARY KEY, b boolean, i2 smallint, i4 integer, i8 bigint,
    n numeric(20, 6), f4 real, f8 double precision, t text, vc varchar(10), c char(3),
    u uuid, d date, tm time, ts timestamp, tstz timestamptz, iv interval,
    j json, jb jsonb, by bytea, e mood, dom positive,
    ai integer[], at text[], an numeric[], ae mood[], atstz timestamptz[], nul text
);";

const ALL_TYPES_ROW: &str = "INSERT INTO types VALUES (ID, true, -2, 4, 9007199254740993,
    '12345678901234.123456', 1.5, 'NaN', 'a \"quoted\"\ttab', 'short', 'ab',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '13:45:01.5', '2024-02-29 13:45:01.123456',
    '2024-02-29 13:45:01.5+02', '1 year 2 months 3 days 04:05:06', '{\"k\": [1, \"x\"]}', '{\"b\": {\"c\": null}}',
    '\\x00ff10', 'happy', 7, '{1,NULL,3}', '{\"a b\",\"q\\\"x\",NULL}', '{1.10,NaN}', '{ok,sad}',
    '{\"2024-01-01 00:00:00+00\"}', NULL)";

fn expected_types_after(id: i64) -> Value {
    json!({
        "id": id, "b": true, "i2": -2, "i4": 4, "i8": 9007199254740993u64,
        "n": "12345678901234.123456", "f4": 1.5, "f8": "NaN", "t": "a \"quoted\"\ttab", "vc": "short", "c": "ab ",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "d": "2024-02-29", "tm": "13:45:01.5",
        "ts": "2024-02-29T13:45:01.123456", "tstz": "2024-02-29T11:45:01.5Z", "iv": "P1Y2M3DT4H5M6S",
        "j": {"k": [1, "x"]}, "jb": {"b": {"c": null}}, "by": "AP8Q", "e": "happy", "dom": 7,
        "ai": [1, null, 3], "at": ["a b", "q\"x", null], "an": ["1.10", "NaN"], "ae": ["ok", "sad"],
        "atstz": ["2024-01-01T00:00:00Z"], "nul": null
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_in_snapshot_and_stream() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute(ALL_TYPES).await.unwrap();
    c.batch_execute(&ALL_TYPES_ROW.replace("ID", "1"))
        .await
        .unwrap();
    let p = pipeline(&db, &kafka, &["public.types"], "");
    let run = start(&p).await;
    wait_streaming(&c, &slot(&db)).await;
    // The snapshot of row 1 is in Kafka before row 2 is written, so row 2
    // can only arrive through the stream.
    let snapshot = read_topic(&kafka, &topic(&kafka, "types"), 1).await;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    c.batch_execute(&ALL_TYPES_ROW.replace("ID", "2"))
        .await
        .unwrap();
    let events = read_topic(&kafka, &topic(&kafka, "types"), 2).await;
    run.stop().await;
    assert_eq!(events.len(), 2, "{events:?}");
    let snap = events
        .iter()
        .find(|e| e.value["op"] == "r")
        .expect("snapshot event");
    let live = events
        .iter()
        .find(|e| e.value["op"] == "c")
        .expect("insert event");
    assert_eq!(snap.value["after"], expected_types_after(1));
    assert_eq!(live.value["after"], expected_types_after(2));
    assert_eq!(snap.key, Some(json!({"id": 1})));
    assert_eq!(snap.value["source"]["snapshot"], "true");
    assert_eq!(live.value["source"]["snapshot"], "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_as_number_when_configured() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute("CREATE TABLE m (id int PRIMARY KEY, amount numeric(12,2)); INSERT INTO m VALUES (1, 12.50)")
        .await
        .unwrap();
    let run = start(&pipeline(&db, &kafka, &["public.m"], "  numeric: number\n")).await;
    let events = read_topic(&kafka, &topic(&kafka, "m"), 1).await;
    run.stop().await;
    assert_eq!(events[0].value["after"]["amount"], json!(12.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_truncate_with_envelope_key_and_headers() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute("CREATE TABLE acc (id int PRIMARY KEY, name text, mrr numeric(12,2))")
        .await
        .unwrap();
    let run = start(&pipeline(&db, &kafka, &["public.acc"], "")).await;
    wait_streaming(&c, &slot(&db)).await;
    c.batch_execute("INSERT INTO acc VALUES (1, 'Acme', 10.00), (2, 'Globex', 5.5)")
        .await
        .unwrap();
    c.batch_execute("UPDATE acc SET name = 'Acme Corp' WHERE id = 1")
        .await
        .unwrap();
    c.batch_execute("UPDATE acc SET id = 3 WHERE id = 2")
        .await
        .unwrap();
    c.batch_execute("DELETE FROM acc WHERE id = 1")
        .await
        .unwrap();
    c.batch_execute("TRUNCATE acc").await.unwrap();
    let events = read_topic(&kafka, &topic(&kafka, "acc"), 7).await;
    run.stop().await;
    assert_eq!(events.len(), 7, "{events:#?}");
    let by_op = |op: &str| {
        events
            .iter()
            .filter(|e| e.value["op"] == op)
            .cloned()
            .collect::<Vec<_>>()
    };
    let creates = by_op("c");
    assert_eq!(creates.len(), 3, "two inserts and the re-keyed row");
    let update = &by_op("u")[0];
    assert_eq!(update.key, Some(json!({"id": 1})));
    assert_eq!(
        update.value["after"],
        json!({"id": 1, "name": "Acme Corp", "mrr": "10.00"})
    );
    assert_eq!(update.value["before"], Value::Null);
    // The key change: a delete on the old key, a create on the new one.
    let deletes = by_op("d");
    assert_eq!(deletes.len(), 2);
    assert!(
        deletes
            .iter()
            .any(|d| d.key == Some(json!({"id": 2})) && d.value["before"] == json!({"id": 2}))
    );
    assert!(
        creates
            .iter()
            .any(|e| e.key == Some(json!({"id": 3})) && e.value["after"]["name"] == "Globex")
    );
    assert!(
        deletes
            .iter()
            .any(|d| d.key == Some(json!({"id": 1})) && d.value["after"] == Value::Null)
    );
    for e in &events {
        let typed: capture::schema::ChangeEvent = serde_json::from_value(e.value.clone())
            .unwrap_or_else(|err| panic!("event does not match the schema: {err}: {}", e.value));
        assert_eq!(typed.source.connector, "postgresql");
    }
    let trunc = &by_op("t")[0];
    assert_eq!(trunc.key, None);
    // Debezium-compatible source block.
    let src = &update.value["source"];
    assert_eq!(src["connector"], "postgresql");
    assert_eq!(src["name"], "cap");
    assert_eq!(src["db"], db.name.as_str());
    assert_eq!(
        (src["schema"].as_str(), src["table"].as_str()),
        (Some("public"), Some("acc"))
    );
    assert!(
        src["txId"].as_u64().is_some()
            && src["lsn"].as_u64().is_some()
            && src["ts_ms"].as_i64().unwrap() > 1_600_000_000_000
    );
    // Headers: commit LSN, xid, idempotency key; all keys distinct.
    assert_eq!(update.headers[capture::HEADER_XID], src["txId"].to_string());
    assert!(capture::parse_lsn(&update.headers[capture::HEADER_COMMIT_LSN]).is_some());
    let keys: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e.headers[capture::HEADER_IDEMPOTENCY_KEY].clone())
        .collect();
    assert_eq!(keys.len(), events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_filled_from_the_last_image_or_listed_unavailable() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await
    .unwrap();
    let big: String = (0..20_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let p = pipeline(&db, &kafka, &["public.docs"], "  snapshot: false\n");
    let run = start(&p).await;
    wait_streaming(&c, &slot(&db)).await;
    c.execute("INSERT INTO docs VALUES (1, 'v1', $1)", &[&big])
        .await
        .unwrap();
    c.batch_execute("UPDATE docs SET title = 'v2' WHERE id = 1")
        .await
        .unwrap();
    let events = read_topic(&kafka, &topic(&kafka, "docs"), 2).await;
    run.stop().await;
    let upd = events
        .iter()
        .find(|e| e.value["op"] == "u")
        .expect("update");
    assert_eq!(upd.value["after"]["title"], "v2");
    assert_eq!(
        upd.value["after"]["body"].as_str().map(str::len),
        Some(big.len()),
        "filled from the insert's image"
    );
    assert!(upd.value.get("unavailable").is_none());

    // A new process has not seen the row: the value is listed, never null.
    let run = start(&p).await;
    wait_streaming(&c, &slot(&db)).await;
    c.batch_execute("UPDATE docs SET title = 'v3' WHERE id = 1")
        .await
        .unwrap();
    let events = read_topic(&kafka, &topic(&kafka, "docs"), 3).await;
    run.stop().await;
    let upd = events
        .iter()
        .find(|e| e.value["after"]["title"] == "v3")
        .expect("second update");
    assert_eq!(upd.value["unavailable"], json!(["body"]));
    assert!(
        upd.value["after"].get("body").is_none(),
        "an unavailable value is not emitted as null"
    );
}

/// Folds change events per key into the table state they describe.
fn fold(events: &[Event]) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    for e in events {
        let key = e.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
        match e.value["op"].as_str().unwrap() {
            "d" => {
                state.remove(&key);
            }
            "t" => state.clear(),
            _ => {
                state.insert(key, e.value["after"].clone());
            }
        }
    }
    state
}

/// The state the events describe equals `expected`; shows the first differences.
fn assert_same_state(events: &[Event], expected: &BTreeMap<String, Value>) {
    let got = fold(events);
    let diffs: Vec<String> = expected
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: expected {v}, events say {:?}", got.get(k)))
        .chain(
            got.keys()
                .filter(|k| !expected.contains_key(*k))
                .map(|k| format!("{k}: not in the table")),
        )
        .take(10)
        .collect();
    assert!(
        diffs.is_empty(),
        "the events do not describe the committed table ({} vs {} rows):\n{}",
        got.len(),
        expected.len(),
        diffs.join("\n")
    );
}

/// Events of each partition in order; keys never span partitions, so a
/// per-key fold over the concatenation is exact.
async fn table_state(c: &tokio_postgres::Client, sql: &str) -> BTreeMap<String, Value> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let id: i32 = r.get(0);
            let v: i32 = r.get(1);
            (json!({"id": id}).to_string(), json!({"id": id, "v": v}))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_concurrent_writes_yields_each_committed_row_once() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute("CREATE TABLE s (id int PRIMARY KEY, v int NOT NULL); INSERT INTO s SELECT g, 0 FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    let writer_db = db.url.clone();
    let stop_writer = CancellationToken::new();
    let sw = stop_writer.clone();
    let writer = tokio::spawn(async move {
        let w = support::connect(&writer_db).await;
        let mut n = 0;
        while !sw.is_cancelled() {
            n += 1;
            w.batch_execute(&format!(
                "BEGIN; UPDATE s SET v = v + 1 WHERE id = {a}; INSERT INTO s VALUES ({b}, 1); DELETE FROM s WHERE id = {d}; COMMIT;",
                a = n % 20000 + 1,
                b = 100000 + n,
                d = 19999 - (n % 5000),
            ))
            .await
            .unwrap();
        }
        n
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = start(&pipeline(&db, &kafka, &["public.s"], "")).await;
    wait_streaming(&c, &slot(&db)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop_writer.cancel();
    let writes = writer.await.unwrap();
    assert!(
        writes > 10,
        "the writer ran during the snapshot ({writes} transactions)"
    );
    // Everything up to now must arrive; then compare.
    c.batch_execute("INSERT INTO s VALUES (-1, -1)")
        .await
        .unwrap();
    let t = topic(&kafka, "s");
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let ev = read_topic(&kafka, &t, usize::MAX).await;
        if ev.iter().any(|e| e.key == Some(json!({"id": -1}))) || Instant::now() > deadline {
            break ev;
        }
    };
    run.stop().await;
    let reads: Vec<_> = events.iter().filter(|e| e.value["op"] == "r").collect();
    let mut seen = HashMap::new();
    for r in &reads {
        *seen.entry(r.key.as_ref().unwrap().to_string()).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "a snapshot row was emitted twice"
    );
    assert!(reads.len() >= 15000, "snapshot rows: {}", reads.len());
    let expected = table_state(&c, "SELECT id, v FROM s").await;
    assert_same_state(&events, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_dropped_or_tagged() {
    for mode in ["drop", "tag"] {
        let (db, kafka) = (TestDb::create().await, TestKafka::new());
        let _slot = guard(&db);
        let c = db.client().await;
        c.batch_execute("CREATE TABLE o (id int PRIMARY KEY, who text)")
            .await
            .unwrap();
        let run = start(&pipeline(
            &db,
            &kafka,
            &["public.o"],
            &format!("  ownWrites: {mode}\n  origin: {}\n", db.name),
        ))
        .await;
        wait_streaming(&c, &slot(&db)).await;
        let w = db.client().await;
        // Replication origins are cluster-wide: one per test database.
        w.batch_execute(&format!(
            "SELECT pg_replication_origin_create('{o}');
             SELECT pg_replication_origin_session_setup('{o}');
             INSERT INTO o VALUES (1, 'extsync');",
            o = db.name
        ))
        .await
        .unwrap();
        c.batch_execute("INSERT INTO o VALUES (2, 'user')")
            .await
            .unwrap();
        let events = read_all(
            &kafka,
            &topic(&kafka, "o"),
            if mode == "drop" { 1 } else { 2 },
            Duration::from_secs(2),
        )
        .await;
        run.stop().await;
        w.batch_execute("SELECT pg_replication_origin_session_reset()")
            .await
            .unwrap();
        w.execute("SELECT pg_replication_origin_drop($1)", &[&db.name])
            .await
            .unwrap();
        let user = events
            .iter()
            .find(|e| e.key == Some(json!({"id": 2})))
            .expect("the user's write");
        assert!(user.value["source"].get("origin").is_none());
        let own = events.iter().find(|e| e.key == Some(json!({"id": 1})));
        match mode {
            "drop" => assert!(own.is_none(), "own write was not dropped: {own:?}"),
            _ => assert_eq!(
                own.expect("tagged own write").value["source"]["origin"],
                db.name.as_str()
            ),
        }
    }
}

/// `extsync run` starts capture, ingest and the processor at once; all of
/// them create schema `extsync` on a fresh database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_racing_the_state_migrations_on_a_fresh_database_succeeds() {
    for _ in 0..5 {
        let (db, kafka) = (TestDb::create().await, TestKafka::new());
        let _slot = guard(&db);
        let c = db.client().await;
        c.batch_execute("CREATE TABLE r (id int PRIMARY KEY)")
            .await
            .unwrap();
        let migrations = (0..3).map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let mut client = extsync::store::connect(&url).await.unwrap();
                extsync::store::migrate(&mut client).await
            })
        });
        let run = start(&pipeline(&db, &kafka, &["public.r"], "")).await;
        for m in migrations.collect::<Vec<_>>() {
            m.await.unwrap().expect("migration beside capture setup");
        }
        wait_streaming(&c, &slot(&db)).await;
        run.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_markers_count_the_events() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
        .await
        .unwrap();
    let run = start(&pipeline(
        &db,
        &kafka,
        &["public.a", "public.b"],
        "  transactionEvents: true\n",
    ))
    .await;
    wait_streaming(&c, &slot(&db)).await;
    c.batch_execute("BEGIN; INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (1); COMMIT;")
        .await
        .unwrap();
    let markers = read_topic(&kafka, &format!("{}.cdc.transactions", kafka.prefix), 2).await;
    let rows = read_topic(&kafka, &topic(&kafka, "a"), 2).await;
    run.stop().await;
    for m in &markers {
        let _: capture::schema::TransactionMarker = serde_json::from_value(m.value.clone())
            .unwrap_or_else(|err| panic!("marker does not match the schema: {err}: {}", m.value));
        assert!(m.key.as_ref().is_some_and(|k| k["id"] == m.value["id"]));
    }
    for r in &rows {
        let _: capture::schema::ChangeEvent = serde_json::from_value(r.value.clone()).unwrap();
    }
    let begin = markers
        .iter()
        .find(|m| m.value["status"] == "BEGIN")
        .expect("BEGIN");
    let end = markers
        .iter()
        .find(|m| m.value["status"] == "END")
        .expect("END");
    assert_eq!(begin.value["id"], end.value["id"]);
    assert_eq!(end.value["event_count"], 3);
    let cols: Vec<_> = end.value["data_collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["data_collection"].clone(), d["event_count"].clone()))
        .collect();
    assert!(
        cols.contains(&(json!("public.a"), json!(2)))
            && cols.contains(&(json!("public.b"), json!(1))),
        "{cols:?}"
    );
    assert_eq!(rows[0].value["transaction"]["id"], end.value["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshot_on_request_while_streaming() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute("CREATE TABLE r (id int PRIMARY KEY, v int NOT NULL); INSERT INTO r SELECT g, 0 FROM generate_series(1, 10000) g")
        .await
        .unwrap();
    let run = start(&pipeline(&db, &kafka, &["public.r"], "  snapshot: false\n")).await;
    wait_streaming(&c, &slot(&db)).await;
    c.batch_execute("SELECT pg_logical_emit_message(true, 'extsync.snapshot', 'public.r')")
        .await
        .unwrap();
    // Two writers update, delete and (re)insert random rows while the chunks
    // are read, so commits race the watermarks and the chunk snapshots.
    let writing = CancellationToken::new();
    let mut writers = Vec::new();
    for _ in 0..2 {
        let (w, writing) = (db.client().await, writing.clone());
        writers.push(tokio::spawn(async move {
            for _ in 0..3000 {
                if writing.is_cancelled() {
                    break;
                }
                w.batch_execute(
                    "UPDATE r SET v = v + 1 WHERE id = floor(random() * 12000)::int;
                     DELETE FROM r WHERE id = floor(random() * 12000)::int;
                     INSERT INTO r VALUES (floor(random() * 12000)::int, 0)
                       ON CONFLICT (id) DO UPDATE SET v = r.v + 1",
                )
                .await
                .unwrap();
            }
        }));
    }
    // Wait for the table to be marked done, then for a sentinel.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = c
            .query_opt("SELECT 1 FROM extsync.capture_snapshots WHERE table_name = 'public.r' AND status = 'done'", &[])
            .await
            .unwrap()
            .is_some();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "incremental snapshot did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writing.cancel();
    for w in writers {
        w.await.unwrap();
    }
    c.batch_execute("INSERT INTO r VALUES (-1, -1)")
        .await
        .unwrap();
    let t = topic(&kafka, "r");
    let events = loop {
        let ev = read_topic(&kafka, &t, usize::MAX).await;
        if ev.iter().any(|e| e.key == Some(json!({"id": -1}))) || Instant::now() > deadline {
            break ev;
        }
    };
    run.stop().await;
    let reads = events
        .iter()
        .filter(|e| e.value["source"]["snapshot"] == "incremental")
        .count();
    assert!((5000..=12000).contains(&reads), "incremental rows: {reads}");
    assert_same_state(&events, &table_state(&c, "SELECT id, v FROM r").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_publication_with_busy_unpublished_tables_keeps_slot_lag_bounded() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id int, pad text)",
    )
    .await
    .unwrap();
    let run = start(&pipeline(
        &db,
        &kafka,
        &["public.quiet"],
        "  snapshot: false\n",
    ))
    .await;
    wait_streaming(&c, &slot(&db)).await;
    let start_lsn: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..8 {
        c.batch_execute(
            "INSERT INTO busy SELECT g, repeat('x', 500) FROM generate_series(1, 10000) g",
        )
        .await
        .unwrap();
    }
    let written: i64 = c
        .query_one(
            "SELECT (pg_current_wal_lsn() - $1::text::pg_lsn)::bigint",
            &[&start_lsn],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        written > 32 << 20,
        "the busy table wrote {written} bytes of WAL"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let lag = loop {
        let lag: i64 = c
            .query_one(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot(&db)],
            )
            .await
            .unwrap()
            .get(0);
        if lag < 1 << 20 || Instant::now() > deadline {
            break lag;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    run.stop().await;
    assert!(
        lag < 1 << 20,
        "slot lag stayed at {lag} bytes after {written} bytes of unpublished writes"
    );
}

async fn setup_error(db: &TestDb, kafka: &TestKafka, url: Option<&str>, tables: &[&str]) -> String {
    let mut p = pipeline(db, kafka, tables, "");
    if let Some(u) = url {
        p.postgres.url = extsync::config::EnvString::new(u);
    }
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        capture::run(&p, CancellationToken::new()),
    )
    .await
    .expect("setup fails fast")
    .expect_err("setup must fail");
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_errors_name_the_fix() {
    let (db, kafka) = (TestDb::create().await, TestKafka::new());
    let _slot = guard(&db);
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE nokey (a int, b text);
         CREATE TABLE nothing (id int PRIMARY KEY); ALTER TABLE nothing REPLICA IDENTITY NOTHING;
         CREATE TABLE ok (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let msg = setup_error(
        &db,
        &kafka,
        None,
        &[
            "public.nokey",
            "public.missing",
            "public.nothing",
            "public.ok",
        ],
    )
    .await;
    assert!(
        msg.contains("table public.nokey: has no primary key")
            && msg.contains("ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL"),
        "{msg}"
    );
    assert!(
        msg.contains("table public.missing: does not exist"),
        "{msg}"
    );
    assert!(
        msg.contains("table public.nothing: has REPLICA IDENTITY NOTHING"),
        "{msg}"
    );
    assert!(!msg.contains("public.ok"), "{msg}");
    let slots: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot(&db)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a failed setup changes nothing");

    // A role without REPLICATION and without SELECT.
    let role = support::unique("r_");
    c.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT CREATE ON DATABASE {} TO {role};",
        db.name
    ))
    .await
    .unwrap();
    let url = db
        .url
        .replacen("extsync:extsync@", &format!("{role}:pw@"), 1);
    let msg = setup_error(&db, &kafka, Some(&url), &["public.ok"]).await;
    assert!(msg.contains(&format!("lacks the REPLICATION attribute needed to stream changes: run ALTER ROLE \"{role}\" WITH REPLICATION")), "{msg}");
    assert!(
        msg.contains(&format!("GRANT SELECT ON \"public\".\"ok\" TO \"{role}\"")),
        "{msg}"
    );
    assert!(msg.contains("does not own it"), "{msg}");
    assert!(!msg.contains("pw@"), "no secret in errors: {msg}");

    // A slot of another plugin under capture's name.
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&slot(&db)],
    )
    .await
    .unwrap();
    let msg = setup_error(&db, &kafka, None, &["public.ok"]).await;
    assert!(
        msg.contains(&format!(
            "replication slot {}: exists but is not a pgoutput slot",
            slot(&db)
        )) && msg.contains("pg_drop_replication_slot"),
        "{msg}"
    );
    c.execute("SELECT pg_drop_replication_slot($1)", &[&slot(&db)])
        .await
        .unwrap();
    c.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}

fn assert_schema_current(file: &str, generated: String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(file);
    if std::env::var_os("EXTSYNC_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("schemas/{file} exists"));
    assert!(
        committed == generated,
        "schemas/{file} is stale: regenerate with `EXTSYNC_BLESS=1 cargo test --test capture schema`"
    );
}

#[test]
fn envelope_schemas_are_current() {
    assert_schema_current(
        "cdc-envelope.schema.json",
        capture::schema::envelope_schema_json(),
    );
    assert_schema_current(
        "cdc-transaction.schema.json",
        capture::schema::transaction_schema_json(),
    );
}
