//! A HubSpot portal: CRM v3 objects (contacts, companies, deals) with single
//! and batch writes, search with its 10,000-result cap, OAuth2 and
//! private-app tokens, rate limits, validation and signed outgoing webhooks.
//!
//! ```text
//!  connector / hubspot-api-client ──► guard (faults, auth, limits) ──► objects | batch | search ──► Store
//!                                                                                    │
//!  /__admin/* (faults, written, webhooks, limits, clock, schema) ◄── tests      Applied ─► webhooks ──signed POST──► receiver
//! ```

pub mod admin;
pub mod batch;
pub mod errors;
pub mod limits;
pub mod oauth;
pub mod objects;
pub mod search;
pub mod store;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value};

use self::admin::WrittenLog;
use self::errors::ApiError;
use self::limits::{Limits, LimitsConfig};
use self::oauth::{Caller, OAuth};
use self::store::{Applied, Store};
use self::webhooks::{WebhookPatch, Webhooks};
use super::{Faults, RunningSimulator};

/// Access-token lifetime HubSpot announces (`expires_in`).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(1800);
pub const DEFAULT_CLIENT_ID: &str = "extsync-sim-client";
pub const DEFAULT_CLIENT_SECRET: &str = "extsync-sim-secret";
pub const DEFAULT_REFRESH_TOKEN: &str = "na1-extsync-sim-refresh";
pub const DEFAULT_PRIVATE_APP_TOKEN: &str = "pat-na1-extsync-sim";
pub const DEFAULT_APP_ID: u64 = 4_242_001;
pub const DEFAULT_PORTAL_ID: u64 = 62_515;
/// Header that lets a caller say how its writes appear in webhooks
/// (`changeSource`), e.g. `CRM_UI`, `IMPORT`, `INTEGRATION`.
pub const CHANGE_SOURCE_HEADER: &str = "x-simulator-change-source";

/// How a simulated portal is set up.
#[derive(Debug, Clone)]
pub struct HubSpotConfig {
    pub client_id: String,
    /// The app's client secret: OAuth and the webhook signature key.
    pub client_secret: String,
    pub app_id: u64,
    pub portal_id: u64,
    pub token_ttl: Duration,
    /// Refresh tokens valid from the start (as if the portal had installed the app).
    pub refresh_tokens: Vec<String>,
    /// Private-app tokens (never expire; writes appear as `CRM_UI` changes).
    pub private_app_tokens: Vec<String>,
    pub limits: LimitsConfig,
    /// Webhook target and delivery settings applied at start.
    pub webhooks: WebhookPatch,
}

/// The settings file of `extsync simulate hubspot --config FILE` (YAML or JSON);
/// every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    client_id: Option<String>,
    client_secret: Option<String>,
    app_id: Option<u64>,
    portal_id: Option<u64>,
    token_ttl_secs: Option<u64>,
    refresh_tokens: Option<Vec<String>>,
    private_app_tokens: Option<Vec<String>>,
    limits: Option<LimitsConfig>,
    webhooks: Option<WebhookPatch>,
}

impl HubSpotConfig {
    /// Reads a settings file; unknown fields are errors naming the file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: FileConfig =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let d = HubSpotConfig::default();
        Ok(HubSpotConfig {
            client_id: f.client_id.unwrap_or(d.client_id),
            client_secret: f.client_secret.unwrap_or(d.client_secret),
            app_id: f.app_id.unwrap_or(d.app_id),
            portal_id: f.portal_id.unwrap_or(d.portal_id),
            token_ttl: f
                .token_ttl_secs
                .map(Duration::from_secs)
                .unwrap_or(d.token_ttl),
            refresh_tokens: f.refresh_tokens.unwrap_or(d.refresh_tokens),
            private_app_tokens: f.private_app_tokens.unwrap_or(d.private_app_tokens),
            limits: f.limits.unwrap_or(d.limits),
            webhooks: f.webhooks.unwrap_or_default(),
        })
    }
}

impl Default for HubSpotConfig {
    fn default() -> Self {
        HubSpotConfig {
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            app_id: DEFAULT_APP_ID,
            portal_id: DEFAULT_PORTAL_ID,
            token_ttl: DEFAULT_TOKEN_TTL,
            refresh_tokens: vec![DEFAULT_REFRESH_TOKEN.into()],
            private_app_tokens: vec![DEFAULT_PRIVATE_APP_TOKEN.into()],
            limits: LimitsConfig::default(),
            webhooks: WebhookPatch::default(),
        }
    }
}

/// A running portal's state; cloning shares it.
#[derive(Clone)]
pub struct HubSpotSim(Arc<Inner>);

struct Inner {
    config: HubSpotConfig,
    store: Store,
    oauth: OAuth,
    limits: Limits,
    webhooks: Webhooks,
    written: WrittenLog,
    faults: Faults,
}

impl HubSpotSim {
    /// A new portal. Needs a Tokio runtime (webhook delivery runs on it).
    pub fn new(config: HubSpotConfig) -> Self {
        let oauth = OAuth::new(config.token_ttl, &config.refresh_tokens);
        let limits = Limits::new(config.limits);
        let webhooks = Webhooks::new(
            config.client_secret.clone(),
            config.portal_id,
            config.app_id,
        );
        HubSpotSim(Arc::new(Inner {
            config,
            store: Store::default(),
            oauth,
            limits,
            webhooks,
            written: WrittenLog::default(),
            faults: Faults::default(),
        }))
    }

    pub fn config(&self) -> &HubSpotConfig {
        &self.0.config
    }
    pub fn store(&self) -> &Store {
        &self.0.store
    }
    pub fn oauth(&self) -> &OAuth {
        &self.0.oauth
    }
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }
    pub fn webhooks(&self) -> &Webhooks {
        &self.0.webhooks
    }
    pub fn written(&self) -> &WrittenLog {
        &self.0.written
    }
    pub fn faults(&self) -> &Faults {
        &self.0.faults
    }

    /// Records a successful write: the written log and webhook events.
    pub fn record(&self, caller: &Caller, applied: &Applied, sent: Option<&Map<String, Value>>) {
        self.0.written.push(caller, applied, sent);
        self.0.webhooks.publish(caller, applied);
    }

    /// The HTTP surface: API, OAuth and admin routes.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route(
                "/crm/v3/objects/{object}",
                get(objects::list).post(objects::create),
            )
            .route("/crm/v3/objects/{object}/search", post(search::search))
            .route(
                "/crm/v3/objects/{object}/batch/{action}",
                post(batch::batch),
            )
            .route(
                "/crm/v3/objects/{object}/{id}",
                get(objects::get_one)
                    .patch(objects::update)
                    .delete(objects::archive),
            )
            .route_layer(middleware::from_fn_with_state(self.clone(), guard));
        Router::new()
            .merge(api)
            .route("/oauth/v1/token", post(oauth::token))
            .merge(admin::router())
            .with_state(self.clone())
            .merge(super::admin_router(self.0.faults.clone()))
    }

    /// Serves this portal on `addr` (port 0 picks one) until dropped.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<RunningSimulator> {
        super::serve(self.router(), addr).await
    }
}

/// Starts a portal on a free loopback port.
pub async fn start(config: HubSpotConfig) -> std::io::Result<(RunningSimulator, HubSpotSim)> {
    let sim = HubSpotSim::new(config);
    let running = sim.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    Ok((running, sim))
}

/// Faults, authentication and rate limits, in HubSpot's order, before every API call.
async fn guard(State(sim): State<HubSpotSim>, mut req: Request, next: Next) -> Response {
    if let Some(status) = sim.faults().before_request().await {
        let status = axum::http::StatusCode::from_u16(status)
            .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
        return ApiError::new(status, "INTERNAL_ERROR", "internal error").into_response();
    }
    if sim.faults().take_expire_tokens() {
        sim.oauth().expire_all();
    }
    let caller = match authenticate(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if sim.faults().limits_exhausted() {
        return limits::exhausted(sim.limits().config()).into_response();
    }
    let search = req.uri().path().ends_with("/search");
    let headers = match sim.limits().spend(&caller.bucket, search) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(caller);
    let mut resp = next.run(req).await;
    for (name, value) in headers {
        if let Ok(v) = value.parse() {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

fn authenticate(sim: &HubSpotSim, req: &Request) -> Result<Caller, ApiError> {
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| oauth::AuthFailure::Missing.into_error())?;
    let cfg = sim.config();
    let source_override = req
        .headers()
        .get(CHANGE_SOURCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if cfg.private_app_tokens.iter().any(|t| t == token) {
        return Ok(Caller {
            bucket: format!("portal-{}", cfg.portal_id),
            change_source: source_override.unwrap_or_else(|| "CRM_UI".into()),
            source_id: "userId:1".into(),
        });
    }
    sim.oauth().check(token).map_err(|f| f.into_error())?;
    Ok(Caller {
        bucket: format!("app-{}", cfg.app_id),
        change_source: source_override.unwrap_or_else(|| "INTEGRATION".into()),
        source_id: cfg.app_id.to_string(),
    })
}

/// Parses a JSON body, answering HubSpot's 400 on malformed input.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_json(&e))
}
