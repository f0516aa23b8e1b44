//! Integrations are isolated from each other: one pipeline syncs the same
//! billing rows to two Salesforce orgs (two simulators), and while one org
//! refuses extsync's credentials the other keeps receiving every change.
//! Real Postgres (logical replication), real Kafka.
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{TestKafka, eventually};
use tokio_util::sync::CancellationToken;

fn integration(id: &str, base_url: &str) -> String {
    format!(
        "{}          - {{ alguna: name, external: Name, direction: alguna_to_external }}\n",
        support::salesforce_integration(id, base_url)
    )
}

async fn extsync_writes(base_url: &str) -> usize {
    support::simulator_writes(base_url, "")
        .await
        .iter()
        .filter(|w| w["client"] == json!("extsync"))
        .count()
}

async fn admin(base_url: &str, body: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base_url}/__admin/faults"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "faults: {}", resp.status());
}

async fn status(db: &tokio_postgres::Client, integration: &str) -> Option<String> {
    db.query_opt(
        "SELECT status FROM extsync.integration_status WHERE integration = $1",
        &[&integration],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_integration_holds_back_only_its_own_records() {
    support::salesforce_credentials_env();
    let (db, client) = support::accounts_db().await;
    let kafka = TestKafka::new();
    let (us, eu) = (
        support::salesforce_simulator().await,
        support::salesforce_simulator().await,
    );
    let (us_url, eu_url) = (us.base_url(), eu.base_url());
    let yaml = format!(
        r#"
name: {name}
postgres: {{ url: "{db}", tables: [public.accounts], heartbeatSecs: 1 }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{prefix}" }}
telemetry: {{ metricsAddress: "" }}
integrations:
{us}{eu}"#,
        name = support::unique("iso"),
        db = db.url,
        brokers = kafka.brokers,
        prefix = kafka.prefix,
        us = integration("sf_us", &us_url),
        eu = integration("sf_eu", &eu_url),
    );
    let pipeline = extsync::config::parse_str(&yaml, "isolation.yaml").unwrap();
    let stop = CancellationToken::new();
    let mut tasks = vec![support::spawn_capture(&pipeline, &stop)];
    tasks.extend(
        extsync::processor::service::start(&pipeline, stop.clone())
            .await
            .unwrap(),
    );

    client
        .batch_execute("INSERT INTO accounts SELECT g, 'First ' || g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let first: std::collections::BTreeMap<String, String> = (1..=10)
        .map(|i| (i.to_string(), format!("First {i}")))
        .collect();
    for url in [&us_url, &eu_url] {
        eventually(
            "both orgs have the first 10 Accounts",
            Duration::from_secs(90),
            || async { support::account_names(url).await == first },
        )
        .await;
    }

    // The US org refuses extsync's credentials, while more changes come.
    admin(
        &us_url,
        json!({"expireTokens": true, "refuseRefresh": true}),
    )
    .await;
    client
        .batch_execute(
            "INSERT INTO accounts SELECT g, 'First ' || g FROM generate_series(11, 20) g;
             UPDATE accounts SET name = 'Second ' || id WHERE id <= 10",
        )
        .await
        .unwrap();
    let latest: std::collections::BTreeMap<String, String> = (1..=20)
        .map(|i| {
            let round = if i <= 10 { "Second" } else { "First" };
            (i.to_string(), format!("{round} {i}"))
        })
        .collect();
    eventually("sf_us is auth_expired", Duration::from_secs(60), || async {
        status(&client, "sf_us").await.as_deref() == Some("auth_expired")
    })
    .await;
    let us_writes = extsync_writes(&us_url).await;
    eventually(
        "the EU org gets every change while the US org is paused",
        Duration::from_secs(60),
        || async { support::account_names(&eu_url).await == latest },
    )
    .await;
    assert_eq!(status(&client, "sf_eu").await.as_deref(), Some("active"));
    assert_eq!(
        extsync_writes(&us_url).await,
        us_writes,
        "writes to the paused org went on"
    );
    assert_eq!(
        support::account_names(&us_url).await,
        first,
        "the paused org changed"
    );

    // The US org takes the credentials again and catches up, once.
    admin(&us_url, json!({"refuseRefresh": false})).await;
    eventually("the US org catches up", Duration::from_secs(90), || async {
        support::account_names(&us_url).await == latest
    })
    .await;
    eventually("sf_us is active again", Duration::from_secs(30), || async {
        status(&client, "sf_us").await.as_deref() == Some("active")
    })
    .await;
    // Each change written once to each org: 10 creates, then 10 creates
    // and 10 renames; the paused org's retries never wrote to the other.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        extsync_writes(&eu_url).await,
        30,
        "writes to the org never paused"
    );
    assert_eq!(
        extsync_writes(&us_url).await,
        30,
        "writes to the org once paused"
    );

    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
}
