//! Ingest throughput against real Kafka and Postgres and the simulators:
//!
//! 1. webhooks: signed HubSpot-style batches posted at a fixed rate for a
//!    fixed time; acknowledged events/s and p50/p99 acknowledgement latency;
//! 2. polling catch-up: one sweep over 100,000 changed Salesforce records.
//!
//! `cargo bench --bench ingest` (services up, `eval "$(dev/services env)"`).
//! `INGEST_RATE` (requests/s, default 500), `INGEST_BATCH` (events per
//! request, default 10), `INGEST_SECS` (default 20), `POLL_RECORDS`
//! (default 100000). The last line is one JSON object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use extsync::connectors::salesforce::{SalesforceConnector, SalesforceSettings};
use extsync::connectors::{Connector, Credentials, RequestBudget, WriteOp};
use extsync::simulators::hubspot::{self, HubSpotConfig, limits::LimitsConfig};
use extsync::simulators::salesforce::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN, SalesforceSim, SalesforceSimConfig,
};
use hmac::{KeyInit, Mac};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `eval \"$(dev/services env)\"` after `dev/services up`")
    })
}

async fn fresh_database() -> String {
    let url = setting("EXTSYNC_PG_URL");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("Postgres reachable");
    tokio::spawn(conn);
    let name = format!("bench_ingest_{}", std::process::id());
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let cut = url.rfind('/').unwrap();
    format!("{}/{name}", &url[..cut])
}

/// The bench pipeline; `salesforce: None` leaves Salesforce out.
fn pipeline(
    db: &str,
    prefix: &str,
    hubspot: &str,
    salesforce: Option<&str>,
) -> extsync::config::Pipeline {
    let salesforce = salesforce.map_or(String::new(), |url| {
        format!(
            r#"
  salesforce:
    provider: salesforce
    baseUrl: "{url}"
    credentials: {{ clientId: "${{BENCH_SF_ID}}", clientSecret: "${{BENCH_SF_SECRET}}", refreshToken: "${{BENCH_SF_REFRESH}}" }}
    rateLimit: {{ requests: 1000000, burst: 100000 }}
    entities:
      accounts: {{ externalObject: Account, table: public.accounts, mappings: [{{ alguna: name, external: Name }}] }}
"#
        )
    });
    let yaml = format!(
        r#"
name: bench
postgres: {{ url: "{db}" }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{prefix}" }}
telemetry: {{ metricsAddress: "" }}
ingest: {{ webhookAddress: "127.0.0.1:0", sweepSecs: 86400, pollOverlapSecs: 0 }}
integrations:
  hubspot:
    provider: hubspot
    baseUrl: "{hubspot}"
    credentials: {{ clientId: "${{BENCH_HS_ID}}", clientSecret: "${{BENCH_HS_SECRET}}", refreshToken: "${{BENCH_HS_REFRESH}}" }}
    rateLimit: {{ requests: 1000000, burst: 100000 }}
    entities:
      contacts: {{ externalObject: contacts, table: public.contacts, mappings: [{{ alguna: email, external: email }}] }}
{salesforce}"#,
        brokers = setting("EXTSYNC_KAFKA_BROKERS"),
    );
    extsync::config::parse_str(&yaml, "bench.yaml").unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    // SAFETY: set before any task reads the environment.
    unsafe {
        std::env::set_var("BENCH_HS_ID", hubspot::DEFAULT_CLIENT_ID);
        std::env::set_var("BENCH_HS_SECRET", hubspot::DEFAULT_CLIENT_SECRET);
        std::env::set_var("BENCH_HS_REFRESH", hubspot::DEFAULT_REFRESH_TOKEN);
        std::env::set_var("BENCH_SF_ID", DEMO_CLIENT_ID);
        std::env::set_var("BENCH_SF_SECRET", DEMO_CLIENT_SECRET);
        std::env::set_var("BENCH_SF_REFRESH", DEMO_REFRESH_TOKEN);
    }
    let rate = env_or("INGEST_RATE", 500);
    let batch = env_or("INGEST_BATCH", 10) as usize;
    let secs = env_or("INGEST_SECS", 20);
    let poll_records = env_or("POLL_RECORDS", 100_000) as usize;

    let (hs_running, _hs) = hubspot::start(HubSpotConfig {
        limits: LimitsConfig::unlimited(),
        ..HubSpotConfig::default()
    })
    .await
    .unwrap();
    let sf = SalesforceSim::new(SalesforceSimConfig {
        api_request_limit: u64::MAX / 2,
        ..SalesforceSimConfig::default()
    })
    .unwrap();
    let sf_running = sf.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let db = fresh_database().await;
    let prefix = format!("bench{}", std::process::id());
    let p = pipeline(
        &db,
        &prefix,
        &hs_running.base_url(),
        Some(&sf_running.base_url()),
    );

    // Seed: contacts to change in HubSpot, accounts to catch up on in Salesforce.
    let hs = extsync::connectors::hubspot::HubSpotConnector::new(
        hs_running.base_url(),
        extsync::connectors::hubspot::AuthMode::PrivateApp(
            hubspot::DEFAULT_PRIVATE_APP_TOKEN.into(),
        ),
        RequestBudget::unlimited(),
    );
    // One contact per event, so every event is a version never emitted
    // before and goes all the way to Kafka (none collapse as duplicates).
    let contacts = (rate * secs) as usize * batch;
    let mut contact_ids = Vec::with_capacity(contacts);
    for chunk in 0..contacts.div_ceil(100) {
        let ops = (0..(contacts - chunk * 100).min(100))
            .map(|i| WriteOp::Create {
                fields: json!({"email": format!("c{chunk}-{i}@bench.test")})
                    .as_object()
                    .unwrap()
                    .clone(),
            })
            .collect();
        for r in hs.write_batch("contacts", ops).await.unwrap() {
            contact_ids.push(r.unwrap().id);
        }
    }
    let mut settings = SalesforceSettings::new(
        sf_running.base_url(),
        Credentials {
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: DEMO_CLIENT_SECRET.into(),
            refresh_token: Some(DEMO_REFRESH_TOKEN.into()),
            webhook_secret: None,
        },
    );
    settings.budget = RequestBudget::unlimited();
    settings.call_client = "bench-seed".into();
    let sfc = Arc::new(SalesforceConnector::new(settings));
    let seed_started = Instant::now();
    let mut seeds = Vec::new();
    for chunk in 0..poll_records.div_ceil(200) {
        let sfc = sfc.clone();
        let n = (poll_records - chunk * 200).min(200);
        seeds.push(async move {
            let ops = (0..n)
                .map(|i| WriteOp::Create {
                    fields: json!({"Name": format!("Account {chunk}-{i}")})
                        .as_object()
                        .unwrap()
                        .clone(),
                })
                .collect();
            sfc.write_batch("Account", ops).await.unwrap();
        });
        if seeds.len() == 8 {
            futures::future::join_all(seeds.drain(..)).await;
        }
    }
    futures::future::join_all(seeds).await;
    eprintln!(
        "seeded {poll_records} Salesforce accounts in {:.1}s",
        seed_started.elapsed().as_secs_f64()
    );

    // The webhook phase measures webhooks alone: HubSpot only, its polling
    // cursor already past the seeded contacts, so no sweep runs beside it.
    let state = extsync::store::open(&db, "bench").await.unwrap();
    let cursors = extsync::ingest::cursor::CursorStore::new(state.clone());
    cursors
        .advance(
            "hubspot",
            "contacts",
            &extsync::connectors::Cursor {
                modified_at: chrono::Utc::now() + chrono::Duration::seconds(1),
                id: String::new(),
            },
        )
        .await
        .unwrap();
    let webhook_only = pipeline(&db, &prefix, &hs_running.base_url(), None);
    let stop = CancellationToken::new();
    let ingest = extsync::ingest::service::start(&webhook_only, stop.clone())
        .await
        .unwrap();
    let url = format!("http://{}/webhooks/hubspot", ingest.webhook_addr.unwrap());

    // 1. Webhooks at a fixed rate.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let total_requests = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total_requests as usize);
    for n in 0..total_requests {
        let due = started + interval * n as u32;
        tokio::time::sleep_until(due.into()).await;
        let events: Vec<_> = (0..batch)
            .map(|k| {
                let id = &contact_ids[(n as usize * batch + k) % contact_ids.len()];
                json!({"eventId": n * 1000 + k as u64, "subscriptionId": 1, "portalId": hubspot::DEFAULT_PORTAL_ID, "appId": hubspot::DEFAULT_APP_ID,
                       "occurredAt": chrono::Utc::now().timestamp_millis(), "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
                       "objectId": id.parse::<u64>().unwrap(), "propertyName": "email", "propertyValue": "x", "changeSource": "CRM_UI"})
            })
            .collect();
        let body = serde_json::to_string(&events).unwrap();
        let ts = chrono::Utc::now().timestamp_millis().to_string();
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(hubspot::DEFAULT_CLIENT_SECRET.as_bytes())
                .unwrap();
        mac.update(format!("POST{url}{body}{ts}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("X-HubSpot-Signature-v3", sig)
            .header("X-HubSpot-Request-Timestamp", ts)
            .body(body);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    Some((body["accepted"].as_u64().unwrap_or(0), ms))
                }
                _ => None,
            }
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let (mut failed, mut accepted) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Some((n, ms)) => {
                accepted += n;
                latencies.push(ms);
            }
            None => failed += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    // Events written to Kafka (acknowledged), not merely received.
    let events_per_s = accepted as f64 / elapsed;
    eprintln!(
        "webhooks: {} requests ({failed} failed), {:.0} events/s, p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        events_per_s,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    // 2. Polling catch-up over every seeded account.
    let target = Arc::new(extsync::ingest::IngestTarget::new(
        "salesforce",
        &p.integrations
            .iter()
            .find(|(id, _)| id.as_str() == "salesforce")
            .unwrap()
            .1
            .clone(),
        sfc.clone(),
    ));
    let producer =
        extsync::kafka::durable_producer(extsync::kafka::client_config(&p.kafka).unwrap())
            .create()
            .unwrap();
    let emitter = Arc::new(extsync::ingest::Emitter::new(
        producer,
        extsync::kafka::Topics::new(&prefix),
        state.clone(),
    ));
    let poller = extsync::ingest::poller::Poller {
        target,
        entity: "accounts".into(),
        object: "Account".into(),
        cursors,
        emitter,
        overlap: Duration::from_secs(60),
    };
    let poll_started = Instant::now();
    let stats = poller.sweep().await.unwrap();
    let poll_secs = poll_started.elapsed().as_secs_f64();
    eprintln!(
        "poll catch-up: {} records in {} pages, {:.1}s",
        stats.read, stats.pages, poll_secs
    );

    stop.cancel();
    ingest.join().await;
    println!(
        "{}",
        json!({
            "bench": "ingest",
            "webhook_requests_per_s": rate,
            "events_per_request": batch,
            "webhook_events_per_s": events_per_s.round(),
            "webhook_failed": failed,
            "webhook_events_accepted": accepted,
            "ack_p50_ms": (percentile(&latencies, 0.5) * 10.0).round() / 10.0,
            "ack_p99_ms": (percentile(&latencies, 0.99) * 10.0).round() / 10.0,
            "poll_records": stats.read,
            "poll_records_per_s": (stats.read as f64 / poll_secs).round(),
            "peak_rss_mb": peak_rss_mb().round(),
        })
    );
}
