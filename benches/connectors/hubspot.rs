//! HubSpot: the simulator's batch endpoints (create, update, read; 100
//! inputs per call) over loopback with a plain client, then the connector's
//! `write_batch`, `read_many` and `list_changes` against the same portal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use extsync::connectors::hubspot::{AuthMode, HubSpotConnector};
use extsync::connectors::{Connector, Credentials, Cursor, RequestBudget, WriteOp};
use extsync::simulators::hubspot::limits::LimitsConfig;
use extsync::simulators::hubspot::{self, HubSpotConfig};
use serde_json::{Value, json};

/// Concurrent clients.
const WORKERS: usize = 4;
/// Records written per measurement.
const RECORDS: usize = 40_000;
const BATCH: usize = 100;

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

fn contacts(tag: &str, worker: usize, batch: usize) -> Value {
    let inputs: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({"properties": {
                "email": format!("{tag}-{worker}-{batch}-{i}@bench.example"),
                "firstname": "Bench",
                "lastname": format!("L{i}"),
                "city": "Paris",
            }})
        })
        .collect();
    json!({ "inputs": inputs })
}

/// Runs `f(worker, batch)` for every batch, `WORKERS` at a time; returns the results.
async fn fan_out<F, Fut, T>(batches: usize, f: F) -> Vec<T>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let per_worker = batches / WORKERS;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for b in 0..per_worker {
                out.push(f(w, b).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all
}

pub async fn run() {
    let (running, _sim) = hubspot::start(HubSpotConfig {
        limits: LimitsConfig::unlimited(),
        ..HubSpotConfig::default()
    })
    .await
    .expect("simulator starts");
    let base = running.base_url();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(WORKERS)
        .build()
        .unwrap();
    let objects = format!("{base}/crm/v3/objects/contacts");
    let batches = RECORDS / BATCH;

    // Simulator: batch/create.
    let start = Instant::now();
    let (h, url) = (http.clone(), format!("{objects}/batch/create"));
    let ids: Vec<Vec<String>> = fan_out(batches, move |w, b| {
        let (h, url) = (h.clone(), url.clone());
        async move {
            let r: Value = h
                .post(&url)
                .bearer_auth(hubspot::DEFAULT_PRIVATE_APP_TOKEN)
                .json(&contacts("sim", w, b))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].as_str().unwrap().to_string())
                .collect()
        }
    })
    .await;
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    report("hubspot_sim_batch_create", ids.len(), start.elapsed());

    // Simulator: batch/update.
    let chunks: Arc<Vec<Vec<String>>> = Arc::new(ids.chunks(BATCH).map(|c| c.to_vec()).collect());
    let start = Instant::now();
    let (h, url, c) = (
        http.clone(),
        format!("{objects}/batch/update"),
        chunks.clone(),
    );
    let n: Vec<usize> = fan_out(chunks.len(), move |w, b| {
        let (h, url) = (h.clone(), url.clone());
        let ids = c[w * (c.len() / WORKERS) + b].clone();
        async move {
            let inputs: Vec<Value> = ids
                .iter()
                .map(|id| json!({"id": id, "properties": {"city": "Lyon"}}))
                .collect();
            let r = h
                .post(&url)
                .bearer_auth(hubspot::DEFAULT_PRIVATE_APP_TOKEN)
                .json(&json!({ "inputs": inputs }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            ids.len()
        }
    })
    .await;
    report("hubspot_sim_batch_update", n.iter().sum(), start.elapsed());

    // Simulator: batch/read.
    let start = Instant::now();
    let (h, url, c) = (
        http.clone(),
        format!("{objects}/batch/read"),
        chunks.clone(),
    );
    let n: Vec<usize> = fan_out(chunks.len(), move |w, b| {
        let (h, url) = (h.clone(), url.clone());
        let ids = c[w * (c.len() / WORKERS) + b].clone();
        async move {
            let inputs: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
            let r: Value = h
                .post(&url)
                .bearer_auth(hubspot::DEFAULT_PRIVATE_APP_TOKEN)
                .json(&json!({"properties": ["email", "city"], "inputs": inputs}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["results"].as_array().unwrap().len()
        }
    })
    .await;
    report("hubspot_sim_batch_read", n.iter().sum(), start.elapsed());

    // Connector: write_batch of creates, WORKERS calls in flight.
    let connector = Arc::new(HubSpotConnector::new(
        base.clone(),
        AuthMode::OAuth(Credentials {
            client_id: hubspot::DEFAULT_CLIENT_ID.into(),
            client_secret: hubspot::DEFAULT_CLIENT_SECRET.into(),
            refresh_token: Some(hubspot::DEFAULT_REFRESH_TOKEN.into()),
            webhook_secret: None,
        }),
        RequestBudget::unlimited(),
    ));
    connector.authenticate().await.unwrap();
    let start = Instant::now();
    let c = connector.clone();
    let written: Vec<usize> = fan_out(batches, move |w, b| {
        let c = c.clone();
        async move {
            let ops: Vec<WriteOp> = (0..BATCH)
                .map(|i| WriteOp::Create {
                    fields: json!({
                        "email": format!("conn-{w}-{b}-{i}@bench.example"),
                        "firstname": "Conn",
                        "city": "Nantes",
                    })
                    .as_object()
                    .unwrap()
                    .clone(),
                })
                .collect();
            let r = c.write_batch("contacts", ops).await.unwrap();
            r.iter().filter(|x| x.is_ok()).count()
        }
    })
    .await;
    report(
        "hubspot_connector_write_batch",
        written.iter().sum(),
        start.elapsed(),
    );

    // Connector: read_many, 100 ids per call.
    let start = Instant::now();
    let (c, ch) = (connector.clone(), chunks.clone());
    let n: Vec<usize> = fan_out(chunks.len(), move |w, b| {
        let c = c.clone();
        let ids = ch[w * (ch.len() / WORKERS) + b].clone();
        async move { c.read_many("contacts", &ids).await.unwrap().len() }
    })
    .await;
    report(
        "hubspot_connector_read_many",
        n.iter().sum(),
        start.elapsed(),
    );

    // Connector: list_changes over every contact (search, 200 per page).
    let start = Instant::now();
    let mut n = 0;
    let mut page: Option<String> = None;
    loop {
        let p = connector
            .list_changes("contacts", &Cursor::start(), page.as_deref())
            .await
            .unwrap();
        n += p.records.len();
        match p.next_page {
            Some(t) => page = Some(t),
            None => break,
        }
    }
    report("hubspot_connector_list_changes", n, start.elapsed());
}
