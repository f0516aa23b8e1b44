//! A backlog big enough to be processed partition by partition, side by
//! side (see `extsync::processor::lanes`): every record is created once and
//! its changes reach Salesforce in the order they were committed.
//! Real Postgres (logical replication), real Kafka, the Salesforce simulator.
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use extsync::processor::service::Loops;
use rdkafka::Message;
use support::{TestKafka, eventually};
use tokio_util::sync::CancellationToken;

const ROWS: i64 = 300;
const ROUNDS: i64 = 3;

/// Change events on `topic`, read committed from the start, once `want`
/// have arrived (or what arrived within a minute).
fn committed_changes(kafka: &TestKafka, topic: &str, want: usize) -> usize {
    use rdkafka::consumer::Consumer;
    let deadline = Instant::now() + Duration::from_secs(60);
    let reader = kafka.reader_from_start(topic, deadline);
    let mut seen = 0;
    while seen < want && Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            seen += usize::from(m.payload().is_some());
        }
    }
    reader.unsubscribe();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_processed_by_partition_in_each_records_order() {
    support::salesforce_credentials_env();
    let (db, client) = support::accounts_db().await;
    let kafka = TestKafka::new();
    let sim = support::salesforce_simulator().await;
    let slot = format!("{}_slot", db.name);
    let yaml = format!(
        r#"
name: {name}
postgres: {{ url: "{db}", tables: [public.accounts], slot: {slot}, heartbeatSecs: 1 }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{prefix}", partitions: 2 }}
telemetry: {{ metricsAddress: "" }}
integrations:
{sf}          - {{ alguna: name, external: Name, direction: alguna_to_external }}
"#,
        name = support::unique("lanes"),
        db = db.url,
        slot = slot,
        brokers = kafka.brokers,
        prefix = kafka.prefix,
        sf = support::salesforce_integration("salesforce", &sim.base_url()),
    );
    let pipeline = extsync::config::parse_str(&yaml, "lanes.yaml").unwrap();
    let stop = CancellationToken::new();
    let loops = Loops::prepare(&pipeline).await.unwrap();
    let mut tasks = vec![
        support::spawn_capture(&pipeline, &stop),
        loops.spawn_router(stop.clone()),
    ];

    // The whole backlog is in Kafka before the processor starts, so that
    // it takes full batches with both partitions in each; every change is
    // streamed, not folded into the initial snapshot.
    support::wait_streaming(&client, &slot).await;
    client
        .batch_execute(&format!(
            "INSERT INTO accounts SELECT g, 'Round 0 ' || g FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    for round in 1..=ROUNDS {
        client
            .batch_execute(&format!(
                "UPDATE accounts SET name = 'Round {round} ' || id"
            ))
            .await
            .unwrap();
    }
    let want = (ROWS * (ROUNDS + 1)) as usize;
    let topic = extsync::kafka::Topics::new(&kafka.prefix).cdc("public", "accounts");
    let reader = kafka.clone();
    let t = topic.clone();
    let seen = tokio::task::spawn_blocking(move || committed_changes(&reader, &t, want))
        .await
        .unwrap();
    assert_eq!(
        seen,
        want,
        "captured changes ({})",
        kafka.watermarks(&topic)
    );
    tasks.push(loops.spawn_processor(stop.clone()));

    let base_url = sim.base_url();
    let last: BTreeMap<String, String> = (1..=ROWS)
        .map(|i| (i.to_string(), format!("Round {ROUNDS} {i}")))
        .collect();
    eventually(
        "every Account has its last name",
        Duration::from_secs(120),
        || async { support::account_names(&base_url).await == last },
    )
    .await;
    let (accounts, history) = support::account_names_written(&base_url).await;
    assert_eq!(accounts, ROWS as usize, "Accounts written to (one per row)");
    for (billing_id, names) in &history {
        let rounds: Vec<i64> = names
            .iter()
            .map(|n| n.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(
            rounds.windows(2).all(|w| w[0] < w[1]),
            "account {billing_id} was written out of order: {names:?}"
        );
    }

    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
}
