//! Shared harness for integration tests against the real services started by
//! `dev/services up`. Each test gets its own database and its own topic prefix
//! so tests run in parallel; a missing service fails the test loudly.
#![allow(dead_code)]

pub mod broker;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tokio_postgres::NoTls;

const HINT: &str = "start the services with `dev/services up` and load their settings with `eval \"$(dev/services env)\"` (or run `dev/test`)";

/// A required setting from the environment; panics with the fix when absent.
pub fn setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {HINT}"))
}

/// A Salesforce validation rule refusing Accounts whose `MRR__c` is negative.
pub fn mrr_not_negative() -> extsync::simulators::salesforce::ValidationRule {
    extsync::simulators::salesforce::ValidationRule {
        object: "Account".into(),
        name: "MRR_Not_Negative".into(),
        condition: "MRR__c < 0".into(),
        message: "MRR cannot be negative".into(),
        error_field: Some("MRR__c".into()),
    }
}

/// Sets `TEST_SF_CLIENT_ID`, `TEST_SF_CLIENT_SECRET` and
/// `TEST_SF_REFRESH_TOKEN` to the Salesforce simulator's demo credentials,
/// for pipelines that read them; once per test binary.
pub fn salesforce_credentials_env() {
    use extsync::simulators::salesforce::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN};
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| {
        // SAFETY: set once, before any task of this test binary reads them.
        unsafe {
            std::env::set_var("TEST_SF_CLIENT_ID", DEMO_CLIENT_ID);
            std::env::set_var("TEST_SF_CLIENT_SECRET", DEMO_CLIENT_SECRET);
            std::env::set_var("TEST_SF_REFRESH_TOKEN", DEMO_REFRESH_TOKEN);
        }
    });
}

/// A Salesforce integration `id` of a test pipeline, against the simulator
/// at `base_url` with its demo credentials (see [`salesforce_credentials_env`]),
/// up to its accounts entity's `mappings:` line: the caller's mapping lines
/// follow, indented by ten spaces.
pub fn salesforce_integration(id: &str, base_url: &str) -> String {
    format!(
        r#"  {id}:
    provider: salesforce
    baseUrl: "{base_url}"
    credentials:
      clientId: ${{TEST_SF_CLIENT_ID}}
      clientSecret: ${{TEST_SF_CLIENT_SECRET}}
      refreshToken: ${{TEST_SF_REFRESH_TOKEN}}
    rateLimit: {{ requests: 10000, burst: 1000 }}
    entities:
      accounts:
        externalObject: Account
        table: public.accounts
        billingIdField: Alguna_Id__c
        mappings:
"#
    )
}

/// A Salesforce simulator with its default settings, on a free loopback port.
pub async fn salesforce_simulator() -> extsync::simulators::RunningSimulator {
    use extsync::simulators::salesforce::{SalesforceSim, SalesforceSimConfig};
    SalesforceSim::new(SalesforceSimConfig::default())
        .unwrap()
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A fresh database with the table `accounts (id, name)`, and a client on it.
pub async fn accounts_db() -> (TestDb, tokio_postgres::Client) {
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    (db, client)
}

/// The Account names extsync wrote to the Salesforce simulator at
/// `base_url`, per billing id in write order, and how many Accounts it
/// wrote to.
pub async fn account_names_written(
    base_url: &str,
) -> (usize, std::collections::HashMap<String, Vec<String>>) {
    let mut billing_ids = std::collections::HashMap::new();
    let mut history: std::collections::HashMap<String, Vec<String>> = Default::default();
    for w in simulator_writes(base_url, "?object=Account").await {
        if w["client"] != serde_json::json!("extsync") {
            continue;
        }
        let id = w["id"].as_str().unwrap().to_string();
        if let Some(b) = w["fields"]["Alguna_Id__c"].as_str() {
            billing_ids.insert(id.clone(), b.to_string());
        }
        if let (Some(b), Some(name)) = (billing_ids.get(&id), w["fields"]["Name"].as_str()) {
            history.entry(b.clone()).or_default().push(name.to_string());
        }
    }
    (billing_ids.len(), history)
}

/// The latest Account name extsync wrote, per billing id.
pub async fn account_names(base_url: &str) -> std::collections::BTreeMap<String, String> {
    let (_, history) = account_names_written(base_url).await;
    history
        .into_iter()
        .filter_map(|(b, mut names)| Some((b, names.pop()?)))
        .collect()
}

/// A simulator's write log (`GET <base>/__admin/written<query>`), oldest first.
pub async fn simulator_writes(base_url: &str, query: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = reqwest::get(format!("{base_url}/__admin/written{query}"))
        .await
        .expect("the simulator answers")
        .json()
        .await
        .expect("the write log is JSON");
    v["written"].as_array().cloned().unwrap_or_default()
}

pub fn pg_url() -> String {
    setting("EXTSYNC_PG_URL")
}

pub fn brokers() -> String {
    setting("EXTSYNC_KAFKA_BROKERS")
}

/// A short random token for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The same URL pointing at another database.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base.rfind('/').expect("postgres URL has a /database part");
    let mut out = format!("{}/{db}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .unwrap_or_else(|_| panic!("PostgreSQL did not answer within 10 s: {HINT}"))
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL: {e}: {HINT}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A fresh database for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin = connect(&pg_url()).await;
        let name = unique("t_");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let url = with_database(&pg_url(), &name);
        TestDb { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Drops the replication slots of this database that nothing uses any
    /// more (slots are cluster-wide and hold WAL until dropped).
    pub async fn drop_idle_slots(&self) {
        let _ = connect(&pg_url())
            .await
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
                &[&self.name],
            )
            .await;
    }
}

impl Drop for TestDb {
    /// Drops the database when the test ends, passed or failed, with its
    /// replication slots (their walsenders are ended first), so that
    /// neither databases nor retained WAL pile up across runs.
    fn drop(&mut self) {
        let name = self.name.clone();
        clean_up(move || async move {
            let c = connect(&pg_url()).await;
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            for _ in 0..50 {
                let _ = c
                    .execute(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL",
                        &[&name],
                    )
                    .await;
                if c.batch_execute(&drop).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

/// Runs `work` to completion on a thread and runtime of its own: for the
/// clean-ups in `Drop`, which run as a test ends, passed or failed (a
/// panic in them stays on their thread).
fn clean_up<F>(work: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work());
    })
    .join();
}

/// Polls `check` every 250 ms until it holds; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A topic prefix of one test, with helpers for its topics. Its topics are
/// deleted once the last clone is dropped.
#[derive(Clone)]
pub struct TestKafka {
    pub prefix: String,
    pub brokers: String,
    _cleanup: std::sync::Arc<TopicCleanup>,
}

impl TestKafka {
    pub fn new() -> TestKafka {
        Self::on(brokers())
    }

    /// A topic prefix on the broker at `brokers` (a test's own broker).
    pub fn on(brokers: String) -> TestKafka {
        let prefix = unique("t");
        TestKafka {
            _cleanup: std::sync::Arc::new(TopicCleanup {
                prefix: prefix.clone(),
                brokers: brokers.clone(),
            }),
            prefix,
            brokers,
        }
    }

    pub fn config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers);
        cc
    }

    /// Creates `<prefix>.<suffix>` with `partitions` partitions; returns its name.
    pub async fn create_topic(&self, suffix: &str, partitions: i32) -> String {
        let name = format!("{}.{suffix}", self.prefix);
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().expect("Kafka admin client");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let res = tokio::time::timeout(
            Duration::from_secs(20),
            admin.create_topics(
                &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
                &opts,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "Kafka at {} did not answer within 20 s: {HINT}",
                self.brokers
            )
        })
        .unwrap_or_else(|e| panic!("creating topic {name}: {e}: {HINT}"));
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
        name
    }
}

/// Deletes a test's topics (`<prefix>.*`) when the test ends, passed or
/// failed, so that a long-lived local broker does not pile them up.
struct TopicCleanup {
    prefix: String,
    brokers: String,
}

impl Drop for TopicCleanup {
    fn drop(&mut self) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let (prefix, brokers) = (format!("{}.", self.prefix), self.brokers.clone());
        clean_up(move || async move {
            let mut cc = ClientConfig::new();
            cc.set("bootstrap.servers", &brokers);
            let Ok(md) = cc
                .create::<BaseConsumer>()
                .and_then(|c| c.fetch_metadata(None, Duration::from_secs(10)))
            else {
                return;
            };
            let names: Vec<String> = md
                .topics()
                .iter()
                .map(|t| t.name().to_string())
                .filter(|n| n.starts_with(&prefix))
                .collect();
            if names.is_empty() {
                return;
            }
            let Ok(admin) = cc.create::<AdminClient<DefaultClientContext>>() else {
                return;
            };
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let _ =
                tokio::time::timeout(Duration::from_secs(15), admin.delete_topics(&refs, &opts))
                    .await;
        });
    }
}

impl Default for TestKafka {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKafka {
    /// A consumer assigned to every partition of `topic` from the beginning;
    /// waits (up to `deadline`) for the topic to be created.
    pub fn reader_from_start(
        &self,
        topic: &str,
        deadline: std::time::Instant,
    ) -> rdkafka::consumer::BaseConsumer {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = self
            .config()
            .set("group.id", format!("{}-reader", self.prefix))
            .set("enable.auto.commit", "false")
            // A partition whose start offset cannot be resolved yet (a topic
            // created a moment ago) must still be read from its start.
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let parts = loop {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .unwrap();
            let n = md.topics()[0].partitions().len();
            if n > 0 {
                break n;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "topic {topic} was not created"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..parts as i32 {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        consumer
    }

    /// `partition: low..high` of every partition of `topic`, for failure
    /// messages that must say whether the data reached Kafka.
    pub fn watermarks(&self, topic: &str) -> String {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = self.config().create().unwrap();
        let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
            return "metadata unavailable".into();
        };
        md.topics()[0]
            .partitions()
            .iter()
            .map(
                |p| match consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)) {
                    Ok((lo, hi)) => format!("{}: {lo}..{hi}", p.id()),
                    Err(e) => format!("{}: {e}", p.id()),
                },
            )
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Drops a replication slot when the test ends, passed or failed, so
/// retained WAL does not pile up across runs.
pub struct SlotGuard {
    url: String,
    slot: String,
}

impl SlotGuard {
    pub fn new(url: &str, slot: &str) -> SlotGuard {
        SlotGuard {
            url: url.to_string(),
            slot: slot.to_string(),
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let (url, slot) = (self.url.clone(), self.slot.clone());
        clean_up(move || async move {
            let c = connect(&url).await;
            for _ in 0..50 {
                let _ = c
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                        &[&slot],
                    )
                    .await;
                let left = c
                    .query_opt(
                        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await
                    .map(|r| r.is_some())
                    .unwrap_or(false);
                if !left {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

/// Waits until capture streams on `slot`: its walsender has sent
/// `START_REPLICATION` (state `streaming`), so the slot is consistent and
/// the initial snapshot is done. "Slot active" is not enough: a slot is
/// active while its creation still waits for running transactions.
pub async fn wait_streaming(client: &tokio_postgres::Client, slot: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let streaming = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.slot_name = $1 AND r.state = 'streaming'",
                &[&slot],
            )
            .await
            .unwrap()
            .is_some();
        if streaming {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let waits = client
                .query(
                    "SELECT coalesce(application_name, '') || ': ' || coalesce(state, '') || ' ' || \
                     coalesce(wait_event_type, '') || '/' || coalesce(wait_event, '') || ' ' || left(coalesce(query, ''), 80) \
                     FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
                .unwrap_or_default();
            panic!("slot {slot} did not start streaming within 90 s; sessions: {waits:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Capture of `pipeline` running in this process until `stop`.
pub fn spawn_capture(
    pipeline: &extsync::config::Pipeline,
    stop: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (p, s) = (pipeline.clone(), stop.clone());
    tokio::spawn(async move {
        extsync::capture::run(&p, s).await.expect("capture runs");
    })
}

/// Ingest and the processor of `pipeline` running in this process until
/// `stop`: their tasks, and the webhook receiver's address when enabled.
pub async fn start_ingest_and_processor(
    pipeline: &extsync::config::Pipeline,
    stop: &tokio_util::sync::CancellationToken,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Option<std::net::SocketAddr>,
) {
    start_ingest_and_processor_with(pipeline, stop, &Default::default()).await
}

/// [`start_ingest_and_processor`] with processor `options`.
pub async fn start_ingest_and_processor_with(
    pipeline: &extsync::config::Pipeline,
    stop: &tokio_util::sync::CancellationToken,
    options: &extsync::processor::service::Options,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Option<std::net::SocketAddr>,
) {
    let ingest = extsync::ingest::service::start(pipeline, stop.clone())
        .await
        .unwrap();
    let webhook_addr = ingest.webhook_addr;
    let mut tasks = vec![tokio::spawn(ingest.join())];
    tasks.extend(
        extsync::processor::service::start_with(pipeline, stop.clone(), options)
            .await
            .unwrap(),
    );
    (tasks, webhook_addr)
}

/// A pipeline's processor loops, which a test stops and starts again while
/// capture, ingest and the router keep running.
pub struct PausableProcessor {
    loops: extsync::processor::service::Loops,
    running: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
}

impl PausableProcessor {
    /// `loops`' processor, not running yet.
    pub fn new(loops: extsync::processor::service::Loops) -> Self {
        Self {
            loops,
            running: None,
        }
    }

    pub fn loops(&self) -> &extsync::processor::service::Loops {
        &self.loops
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts the processor loops (again): they resume from their committed offsets.
    pub fn resume(&mut self) {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = self.loops.spawn_processor(stop.clone());
        self.running = Some((stop, task));
    }

    /// Stops the processor loops once their last batches are committed.
    pub async fn pause(&mut self) {
        let (stop, task) = self.running.take().expect("the processor runs");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the processor loop stops")
            .unwrap();
    }
}
