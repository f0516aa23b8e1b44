//! Shared setup of the HubSpot tests: a simulated portal on a free port and
//! connectors to it.
#![allow(dead_code)]

use extsync::connectors::hubspot::{AuthMode, HubSpotConnector};
use extsync::connectors::{Credentials, RequestBudget};
use extsync::simulators::RunningSimulator;
use extsync::simulators::hubspot::limits::LimitsConfig;
use extsync::simulators::hubspot::{self, HubSpotConfig, HubSpotSim};
use serde_json::{Map, Value, json};

/// A portal whose budgets no test reaches unless it lowers them.
pub async fn portal() -> (RunningSimulator, HubSpotSim) {
    portal_with(HubSpotConfig {
        limits: LimitsConfig::unlimited(),
        ..HubSpotConfig::default()
    })
    .await
}

pub async fn portal_with(config: HubSpotConfig) -> (RunningSimulator, HubSpotSim) {
    hubspot::start(config).await.expect("simulator starts")
}

pub fn oauth_credentials() -> Credentials {
    Credentials {
        client_id: hubspot::DEFAULT_CLIENT_ID.into(),
        client_secret: hubspot::DEFAULT_CLIENT_SECRET.into(),
        refresh_token: Some(hubspot::DEFAULT_REFRESH_TOKEN.into()),
        webhook_secret: None,
    }
}

/// A connector authenticating as the simulator's OAuth app.
pub fn connector(sim: &RunningSimulator) -> HubSpotConnector {
    HubSpotConnector::new(
        sim.base_url(),
        AuthMode::OAuth(oauth_credentials()),
        RequestBudget::unlimited(),
    )
}

/// A connector using the simulator's private-app token (writes look like people's).
pub fn private_connector(sim: &RunningSimulator) -> HubSpotConnector {
    HubSpotConnector::new(
        sim.base_url(),
        AuthMode::PrivateApp(hubspot::DEFAULT_PRIVATE_APP_TOKEN.into()),
        RequestBudget::unlimited(),
    )
}

pub fn fields(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// POSTs `body` to an admin route and returns the answer.
pub async fn admin(sim: &RunningSimulator, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .expect("admin call");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap_or(Value::Null)
}

pub async fn admin_get(sim: &RunningSimulator, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", sim.base_url()))
        .send()
        .await
        .expect("admin call")
        .json()
        .await
        .expect("admin JSON")
}

/// A raw API call with the private-app token: (status, headers, body).
pub async fn api(
    sim: &RunningSimulator,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", sim.base_url()))
        .bearer_auth(hubspot::DEFAULT_PRIVATE_APP_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("API call");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Creates `n` contacts through batch/create (100 per call); returns their ids.
pub async fn seed_contacts(sim: &RunningSimulator, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(100) {
        let inputs: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"properties": {"email": format!("{prefix}{i}@example.com"), "firstname": format!("F{i}")}}))
            .collect();
        let (status, _, body) = api(
            sim,
            reqwest::Method::POST,
            "/crm/v3/objects/contacts/batch/create",
            Some(json!({ "inputs": inputs })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        for r in body["results"].as_array().unwrap() {
            ids.push(r["id"].as_str().unwrap().to_string());
        }
    }
    ids
}
