//! A faithful stand-in for Salesforce's REST API (Account, Contact,
//! Opportunity): OAuth 2.0 token endpoint, sObject CRUD and upsert by
//! external id, composite sObject collections, SOQL queries with
//! `nextRecordsUrl` paging, validation and duplicate rules, the org's API
//! quota, and Change Data Capture over CometD. The Python SDK
//! `simple-salesforce` and extsync's connector both run against it.
//!
//! ```text
//!  client ──/services/oauth2/token──► oauth ──► access token (lifetime configurable)
//!         ──/services/data/vXX.X/*──► guard (faults, session, quota) ──► sobjects | composite | query | limits
//!                                                                              └─► store ──► change events
//!         ──/cometd/XX.X──────────► cometd (handshake, subscribe + replay, long-poll connect) ◄───┘
//!  tests ──/__admin/*──────────────► admin (faults, written log, token expiry, clock, quota)
//! ```

pub mod admin;
pub mod cometd;
pub mod composite;
pub mod errors;
pub mod limits;
pub mod oauth;
pub mod query;
pub mod schema;
pub mod sobjects;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Faults, RunningSimulator};
use errors::ApiError;
pub use oauth::{OAuthApp, SimUser};
pub use schema::{CustomField, FieldType};
pub use store::{DuplicateRule, ValidationRule, Written};

/// Default session lifetime: the org's 2-hour timeout.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 7_200;
/// Default rolling 24-hour API quota (Enterprise edition base).
pub const DEFAULT_API_REQUEST_LIMIT: u64 = 100_000;
/// Records per query page (Salesforce's maximum batch size).
pub const DEFAULT_QUERY_PAGE_SIZE: usize = 2_000;
/// Change events kept for replay.
pub const DEFAULT_EVENT_RETENTION: usize = 200_000;
/// Entries kept in the written log.
pub const DEFAULT_WRITTEN_RETENTION: usize = 200_000;
/// How long a CometD `/meta/connect` waits for events (Salesforce: 110 s).
pub const DEFAULT_COMETD_TIMEOUT_MS: u64 = 110_000;
/// Demo connected app.
pub const DEMO_CLIENT_ID: &str = "extsync-demo-client";
pub const DEMO_CLIENT_SECRET: &str = "extsync-demo-secret";
pub const DEMO_REFRESH_TOKEN: &str = "extsync-demo-refresh-token";
pub const DEMO_USERNAME: &str = "demo@extsync.test";
pub const DEMO_PASSWORD: &str = "extsync-demo-password";

/// How the simulated org is set up. Every field has a default; a file given
/// to `extsync simulate salesforce --config` overrides them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SalesforceSimConfig {
    /// Seconds an access token stays valid after it is issued.
    pub token_lifetime_secs: u64,
    /// API calls allowed per rolling 24 hours.
    pub api_request_limit: u64,
    /// Records per query page unless `Sforce-Query-Options: batchSize=` asks for fewer.
    pub query_page_size: usize,
    /// Connected apps (client id, secret, refresh tokens).
    pub apps: Vec<OAuthApp>,
    /// Users for the username-password grant.
    pub users: Vec<SimUser>,
    /// Custom `__c` fields; writes naming undeclared fields fail with `INVALID_FIELD`.
    pub custom_fields: Vec<CustomField>,
    pub validation_rules: Vec<ValidationRule>,
    pub duplicate_rules: Vec<DuplicateRule>,
    /// `instance_url` returned by the token endpoint; default `http://<Host header>`.
    pub instance_url: Option<String>,
    pub event_retention: usize,
    pub written_retention: usize,
    pub cometd_timeout_ms: u64,
}

impl Default for SalesforceSimConfig {
    fn default() -> Self {
        let field = |object: &str, name: &str, kind: FieldType, external_id: bool| CustomField {
            object: object.into(),
            name: name.into(),
            kind,
            external_id,
            unique: external_id,
            required: false,
        };
        SalesforceSimConfig {
            token_lifetime_secs: DEFAULT_TOKEN_LIFETIME_SECS,
            api_request_limit: DEFAULT_API_REQUEST_LIMIT,
            query_page_size: DEFAULT_QUERY_PAGE_SIZE,
            apps: vec![OAuthApp {
                client_id: DEMO_CLIENT_ID.into(),
                client_secret: DEMO_CLIENT_SECRET.into(),
                refresh_tokens: vec![DEMO_REFRESH_TOKEN.into()],
            }],
            users: vec![SimUser {
                username: DEMO_USERNAME.into(),
                password: DEMO_PASSWORD.into(),
            }],
            custom_fields: vec![
                field("Account", "Email__c", FieldType::Email, false),
                field("Account", "MRR__c", FieldType::Currency, false),
                field("Account", "Alguna_Id__c", FieldType::String, true),
                field("Contact", "Alguna_Id__c", FieldType::String, true),
                field("Opportunity", "Product__c", FieldType::String, false),
                field("Opportunity", "MRR__c", FieldType::Currency, false),
                field("Opportunity", "Alguna_Id__c", FieldType::String, true),
            ],
            validation_rules: Vec::new(),
            duplicate_rules: Vec::new(),
            instance_url: None,
            event_retention: DEFAULT_EVENT_RETENTION,
            written_retention: DEFAULT_WRITTEN_RETENTION,
            cometd_timeout_ms: DEFAULT_COMETD_TIMEOUT_MS,
        }
    }
}

/// State shared by every handler.
pub struct SimState {
    pub config: SalesforceSimConfig,
    pub store: Mutex<store::Store>,
    pub tokens: oauth::Tokens,
    pub usage: limits::ApiUsage,
    pub faults: Faults,
    pub cursors: query::Cursors,
    pub cometd: cometd::Hub,
}

pub type Shared = Arc<SimState>;

impl SimState {
    /// Runs `f` as one transaction: committed when it returns `true` with its
    /// value, rolled back otherwise; then wakes CometD subscribers.
    pub fn write<T>(&self, f: impl FnOnce(&mut store::Store) -> (T, bool)) -> T {
        let mut store = self.store.lock().expect("store lock");
        store.begin();
        let (value, commit) = f(&mut store);
        if commit {
            store.commit();
        } else {
            store.rollback();
        }
        let last = store.last_replay_id();
        drop(store);
        self.cometd.notify(last);
        value
    }
}

/// Options of the `Sforce-Call-Options` header.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub client: Option<String>,
}

impl CallOptions {
    fn from_headers(headers: &HeaderMap) -> Self {
        let client = headers
            .get("sforce-call-options")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| {
                s.split(',')
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| k.trim() == "client")
                    .map(|(_, v)| v.trim().to_string())
            });
        CallOptions { client }
    }

    /// The write context of one API request.
    pub fn ctx(&self, version: &str) -> store::WriteCtx {
        store::WriteCtx {
            api_version: version.trim_start_matches('v').to_string(),
            client: self.client.clone(),
            transaction_key: uuid::Uuid::new_v4().to_string(),
        }
    }
}

fn valid_version(v: &str) -> bool {
    v.strip_prefix('v')
        .and_then(|n| n.split_once('.'))
        .is_some_and(|(major, minor)| {
            major.parse::<u32>().is_ok_and(|m| (20..=70).contains(&m)) && minor == "0"
        })
}

/// A Salesforce simulator (in-process handle).
#[derive(Clone)]
pub struct SalesforceSim {
    state: Shared,
}

impl SalesforceSim {
    pub fn new(config: SalesforceSimConfig) -> Result<Self, String> {
        let schemas = schema::build(&config.custom_fields)?;
        let store = store::Store::new(
            schemas,
            config.validation_rules.clone(),
            config.duplicate_rules.clone(),
            store::StoreLimits {
                written: config.written_retention,
                events: config.event_retention,
            },
        )?;
        let state = Arc::new(SimState {
            tokens: oauth::Tokens::new(
                Duration::from_secs(config.token_lifetime_secs),
                &config.apps,
            ),
            usage: limits::ApiUsage::new(config.api_request_limit),
            faults: Faults::default(),
            cursors: query::Cursors::default(),
            cometd: cometd::Hub::new(Duration::from_millis(config.cometd_timeout_ms)),
            store: Mutex::new(store),
            config,
        });
        Ok(SalesforceSim { state })
    }

    /// Reads a configuration file (YAML or JSON).
    pub fn config_from_file(path: &std::path::Path) -> Result<SalesforceSimConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The HTTP surface: API, OAuth, CometD and admin routes.
    pub fn router(&self) -> Router {
        let data = Router::new()
            .route("/sobjects", get(sobjects::describe_global))
            .route("/sobjects/", get(sobjects::describe_global))
            .route(
                "/sobjects/{object}",
                get(sobjects::basic_info).post(sobjects::create),
            )
            .route(
                "/sobjects/{object}/",
                get(sobjects::basic_info).post(sobjects::create),
            )
            .route("/sobjects/{object}/describe", get(sobjects::describe))
            .route("/sobjects/{object}/describe/", get(sobjects::describe))
            .route(
                "/sobjects/{object}/{id}",
                get(sobjects::read)
                    .patch(sobjects::update)
                    .delete(sobjects::delete),
            )
            .route(
                "/sobjects/{object}/{field}/{value}",
                get(sobjects::read_by_external_id)
                    .patch(sobjects::upsert)
                    .delete(sobjects::delete_by_external_id),
            )
            .route("/query", get(query::query))
            .route("/query/", get(query::query))
            .route("/query/{locator}", get(query::query_more))
            .route("/queryAll", get(query::query_all))
            .route("/queryAll/", get(query::query_all))
            .route("/queryAll/{locator}", get(query::query_all_more))
            .route(
                "/composite/sobjects",
                post(composite::create)
                    .patch(composite::update)
                    .delete(composite::delete),
            )
            .route(
                "/composite/sobjects/{object}",
                get(composite::retrieve).post(composite::retrieve_post),
            )
            .route(
                "/composite/sobjects/{object}/{field}",
                axum::routing::patch(composite::upsert),
            )
            .route("/limits", get(limits::limits))
            .route("/limits/", get(limits::limits));
        let data = Router::new()
            .nest("/services/data/{version}", data)
            .layer(middleware::from_fn_with_state(self.state.clone(), guard));
        Router::new()
            .route("/services/data", get(sobjects::versions))
            .route("/services/data/", get(sobjects::versions))
            .route("/services/oauth2/token", post(oauth::token))
            .route("/services/oauth2/authorize", get(oauth::authorize))
            .route("/cometd/{version}", post(cometd::handle))
            .route("/cometd/{version}/", post(cometd::handle))
            .merge(admin::router())
            .with_state(self.state.clone())
            .merge(super::admin_router(self.state.faults.clone()))
            .merge(data.with_state(self.state.clone()))
    }

    /// Serves on `addr` (port 0 picks one) until the handle is dropped.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<RunningSimulator> {
        super::serve(self.router(), addr).await
    }

    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Revokes every access token issued so far.
    pub fn expire_tokens(&self) -> usize {
        self.state.tokens.expire_all()
    }

    /// Issues an access token for the demo app, as a login would.
    pub fn issue_token(&self) -> String {
        let client = self
            .state
            .config
            .apps
            .first()
            .map(|a| a.client_id.clone())
            .unwrap_or_default();
        self.state.tokens.issue(&client)
    }

    /// Makes every write stamp `at` (or the real time again with `None`).
    pub fn freeze_clock(&self, at: Option<DateTime<Utc>>) {
        self.state
            .store
            .lock()
            .expect("store lock")
            .freeze_clock(at);
    }

    /// Sets the API quota and/or the calls already used in the window.
    pub fn set_api_usage(&self, limit: Option<u64>, used: Option<u64>) {
        self.state.usage.set(limit, used);
    }

    /// `(used, limit)` of the API quota.
    pub fn api_usage(&self) -> (u64, u64) {
        self.state.usage.usage()
    }

    /// What was written after entry `after` (0 for everything kept).
    pub fn written(&self, after: u64) -> Vec<Written> {
        self.state
            .store
            .lock()
            .expect("store lock")
            .written_since(after, None)
    }
}

/// Every `/services/data/vXX.X/…` call: injected faults, then the session,
/// then the quota; `Sforce-Limit-Info` on every answer.
async fn guard(State(sim): State<Shared>, mut req: Request, next: Next) -> Response {
    let version = req
        .uri()
        .path()
        .strip_prefix("/services/data/")
        .and_then(|p| p.split('/').next())
        .unwrap_or_default()
        .to_string();
    let mut resp = if !valid_version(&version) {
        ApiError::not_found().into_response()
    } else if let Some(status) = sim.faults.before_request().await {
        injected(status)
    } else {
        match oauth::authenticate(&sim, req.headers()) {
            Err(e) => {
                let mut r = e.into_response();
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Token"),
                );
                r
            }
            Ok(session) => {
                if sim.faults.limits_exhausted() || !sim.usage.take() {
                    ApiError::limit_exceeded().into_response()
                } else {
                    let opts = CallOptions::from_headers(req.headers());
                    req.extensions_mut().insert(session);
                    req.extensions_mut().insert(opts);
                    next.run(req).await
                }
            }
        }
    };
    resp.headers_mut()
        .insert(limits::LIMIT_INFO, sim.usage.header());
    resp
}

fn injected(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let (code, message) = if status == StatusCode::SERVICE_UNAVAILABLE {
        ("SERVER_UNAVAILABLE", "Server temporarily unavailable")
    } else {
        (
            "UNKNOWN_EXCEPTION",
            "An unexpected error occurred. Please include this ErrorId if you contact support: 1234567890-12345 (-123456789)",
        )
    };
    ApiError::new(status, code, message).into_response()
}
