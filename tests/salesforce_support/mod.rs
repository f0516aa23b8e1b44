//! Shared setup for the Salesforce tests: a simulator in-process on a free
//! loopback port and a connector logged in to it with the demo app.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use extsync::connectors::Credentials;
use extsync::connectors::RequestBudget;
use extsync::connectors::salesforce::{SalesforceConnector, SalesforceSettings};
use extsync::simulators::RunningSimulator;
use extsync::simulators::salesforce::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN, SalesforceSim, SalesforceSimConfig,
};
use serde_json::{Map, Value};

/// The wait the tests' connectors report after `REQUEST_LIMIT_EXCEEDED`.
pub const LIMIT_WAIT: Duration = Duration::from_secs(42);

pub struct Org {
    pub sim: SalesforceSim,
    pub running: RunningSimulator,
    pub connector: Arc<SalesforceConnector>,
}

impl Org {
    pub fn url(&self) -> String {
        self.running.base_url()
    }

    /// A person's tool writing to the org: its changes name another client
    /// than extsync's in `changeOrigin`.
    pub fn person(&self) -> SalesforceConnector {
        let mut s = settings(&self.url(), demo_credentials());
        s.call_client = "person".into();
        SalesforceConnector::new(s)
    }
}

pub fn demo_credentials() -> Credentials {
    Credentials {
        client_id: DEMO_CLIENT_ID.into(),
        client_secret: DEMO_CLIENT_SECRET.into(),
        refresh_token: Some(DEMO_REFRESH_TOKEN.into()),
        webhook_secret: None,
    }
}

pub fn settings(base_url: &str, credentials: Credentials) -> SalesforceSettings {
    let mut s = SalesforceSettings::new(base_url, credentials);
    s.budget = RequestBudget::unlimited();
    s.limit_wait = LIMIT_WAIT;
    s
}

pub async fn start_with(config: SalesforceSimConfig) -> Org {
    let sim = SalesforceSim::new(config).expect("simulator config");
    let running = sim
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds");
    let connector = Arc::new(SalesforceConnector::new(settings(
        &running.base_url(),
        demo_credentials(),
    )));
    Org {
        sim,
        running,
        connector,
    }
}

pub async fn start() -> Org {
    start_with(SalesforceSimConfig::default()).await
}

/// A JSON object literal as a field map.
pub fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("expected an object, got {other}"),
    }
}
