//! Shared harness for integration tests against the real services started by
//! `dev/services up`. Each test gets its own database and its own topic prefix
//! so tests run in parallel; a missing service fails the test loudly.
#![allow(dead_code)]

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
}

/// A topic prefix of one test, with helpers for its topics.
pub struct TestKafka {
    pub prefix: String,
    pub brokers: String,
}

impl TestKafka {
    pub fn new() -> TestKafka {
        TestKafka {
            prefix: unique("t"),
            brokers: brokers(),
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
