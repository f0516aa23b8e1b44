//! Salesforce: the simulator's batched writes (composite collections of 200)
//! and reads (SOQL pages of 2,000; composite retrieve of 200 ids) over
//! loopback with a plain client, then the connector's `write_batch` and
//! `list_changes` against the same simulator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use extsync::connectors::salesforce::{SalesforceConnector, SalesforceSettings};
use extsync::connectors::{Connector, Credentials, Cursor, RequestBudget, WriteOp};
use extsync::simulators::salesforce::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN, SalesforceSim, SalesforceSimConfig,
};
use serde_json::{Value, json};

/// Concurrent clients.
const WORKERS: usize = 4;
/// Records written per measurement.
const RECORDS: usize = 40_000;
const BATCH: usize = 200;

fn report(bench: &str, records: usize, took: Duration) {
    println!(
        "{}",
        json!({
            "bench": bench,
            "records": records,
            "secs": (took.as_secs_f64() * 1000.0).round() / 1000.0,
            "records_per_s": (records as f64 / took.as_secs_f64()).round(),
            "workers": WORKERS,
        })
    );
}

async fn token(http: &reqwest::Client, base: &str) -> String {
    let t: Value = http
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("refresh_token", DEMO_REFRESH_TOKEN),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    t["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

fn records(worker: usize, batch: usize) -> Value {
    let recs: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({
                "attributes": {"type": "Account"},
                "Name": format!("Bench {worker}-{batch}-{i}"),
                "BillingCity": "Paris",
                "MRR__c": 100.0 + i as f64,
                "Alguna_Id__c": format!("b-{worker}-{batch}-{i}"),
            })
        })
        .collect();
    json!({ "allOrNone": false, "records": recs })
}

pub async fn run() {
    let config = SalesforceSimConfig {
        api_request_limit: u64::MAX / 2,
        ..Default::default()
    };
    let sim = SalesforceSim::new(config).expect("config");
    let running = sim
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let base = running.base_url();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(WORKERS)
        .build()
        .unwrap();
    let token = Arc::new(token(&http, &base).await);
    let data = format!("{base}/services/data/v62.0");

    // Simulator: composite create, 200 per call.
    let per_worker = RECORDS / WORKERS / BATCH;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (http, token, url) = (
            http.clone(),
            token.clone(),
            format!("{data}/composite/sobjects"),
        );
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for b in 0..per_worker {
                let r: Vec<Value> = http
                    .post(&url)
                    .bearer_auth(&*token)
                    .json(&records(w, b))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                ids.extend(r.into_iter().map(|x| x["id"].as_str().unwrap().to_string()));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    report(
        "salesforce_sim_composite_create",
        ids.len(),
        start.elapsed(),
    );

    // Simulator: composite upsert by external id (all updates), 200 per call.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (http, token, url) = (
            http.clone(),
            token.clone(),
            format!("{data}/composite/sobjects/Account/Alguna_Id__c"),
        );
        tasks.push(tokio::spawn(async move {
            for b in 0..per_worker {
                let r = http
                    .patch(&url)
                    .bearer_auth(&*token)
                    .json(&records(w, b))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    report(
        "salesforce_sim_composite_upsert",
        per_worker * WORKERS * BATCH,
        start.elapsed(),
    );

    // Simulator: SOQL read of every record, 2,000 per page.
    let start = Instant::now();
    let mut n = 0;
    let mut next = Some(format!(
        "{data}/query?q={}",
        "SELECT+Id,Name,BillingCity,MRR__c,SystemModstamp+FROM+Account+ORDER+BY+SystemModstamp,Id"
    ));
    while let Some(url) = next {
        let p: Value = http
            .get(&url)
            .bearer_auth(&*token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        n += p["records"].as_array().unwrap().len();
        next = p["nextRecordsUrl"].as_str().map(|u| format!("{base}{u}"));
    }
    report("salesforce_sim_query_read", n, start.elapsed());

    // Simulator: composite retrieve, 200 ids per call.
    let start = Instant::now();
    let chunks: Vec<Vec<String>> = ids.chunks(BATCH).map(|c| c.to_vec()).collect();
    let per = chunks.len().div_ceil(WORKERS);
    let mut tasks = Vec::new();
    for part in chunks.chunks(per).map(|p| p.to_vec()) {
        let (http, token, url) = (
            http.clone(),
            token.clone(),
            format!("{data}/composite/sobjects/Account"),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for c in part {
                let r: Vec<Value> = http
                    .post(&url)
                    .bearer_auth(&*token)
                    .json(&json!({ "ids": c, "fields": ["Id", "Name", "BillingCity", "MRR__c"] }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                n += r.len();
            }
            n
        }));
    }
    let mut read = 0;
    for t in tasks {
        read += t.await.unwrap();
    }
    report("salesforce_sim_composite_retrieve", read, start.elapsed());

    // Connector: write_batch (composite create) with WORKERS in flight.
    let mut settings = SalesforceSettings::new(
        base.clone(),
        Credentials {
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: DEMO_CLIENT_SECRET.into(),
            refresh_token: Some(DEMO_REFRESH_TOKEN.into()),
            webhook_secret: None,
        },
    );
    settings.budget = RequestBudget::unlimited();
    settings.fields.insert(
        "Account".into(),
        vec!["Name".into(), "BillingCity".into(), "MRR__c".into()],
    );
    let connector = Arc::new(SalesforceConnector::new(settings));
    connector.authenticate().await.unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let c = connector.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for b in 0..per_worker {
                let ops: Vec<WriteOp> = (0..BATCH)
                    .map(|i| WriteOp::Create {
                        fields: serde_json::from_value(json!({
                            "Name": format!("Conn {w}-{b}-{i}"),
                            "BillingCity": "Lyon",
                            "MRR__c": 50.0,
                        }))
                        .unwrap(),
                    })
                    .collect();
                ok += c
                    .write_batch("Account", ops)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.is_ok())
                    .count();
            }
            ok
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    report("salesforce_connector_write_batch", written, start.elapsed());

    // Connector: list_changes over everything.
    let start = Instant::now();
    let mut n = 0;
    let mut page: Option<String> = None;
    loop {
        let p = connector
            .list_changes("Account", &Cursor::start(), page.as_deref())
            .await
            .unwrap();
        n += p.records.len();
        match p.next_page {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    report("salesforce_connector_list_changes", n, start.elapsed());
}
