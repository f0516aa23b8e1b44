//! Test and demo controls beside the shared `/__admin/faults`:
//!
//! | route | does |
//! |---|---|
//! | `GET/DELETE /__admin/written` | what API callers wrote (bounded log), or clear it |
//! | `GET/POST /__admin/webhooks` | target URL, secret, drop switch, retry pacing; stats and attempts |
//! | `GET/POST /__admin/limits` | `tenSecondly`, `daily`, `searchPerSecond` budgets |
//! | `POST /__admin/clock` | `{"frozenAtMs": n}` freezes record timestamps, `null` releases |
//! | `POST /__admin/schema` | custom properties, required properties and validation rules per type |
//! | `GET/POST /__admin/oauth` | `{"tokenTtlSecs": n}`, tokens issued; `POST /__admin/oauth/code` mints an authorization code |

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::HubSpotSim;
use super::errors::ApiError;
use super::limits::LimitsConfig;
use super::oauth::Caller;
use super::store::{Applied, ChangeKind, ObjectType, Rule, iso_millis};
use super::webhooks::WebhookPatch;

/// Writes kept in the log, at most (oldest dropped first).
const WRITTEN_CAP: usize = 100_000;

/// One write an API caller made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    pub object: &'static str,
    pub id: String,
    pub kind: ChangeKind,
    /// The properties the caller sent.
    pub properties: Option<Map<String, Value>>,
    pub at: String,
    pub change_source: String,
    pub source_id: String,
}

#[derive(Default)]
pub struct WrittenLog(Mutex<VecDeque<Written>>);

impl WrittenLog {
    pub fn push(&self, caller: &Caller, applied: &Applied, sent: Option<&Map<String, Value>>) {
        let mut log = self.0.lock().expect("written lock");
        if log.len() >= WRITTEN_CAP {
            log.pop_front();
        }
        log.push_back(Written {
            object: applied.ty.path(),
            id: applied.record.id.to_string(),
            kind: applied.kind,
            properties: sent.cloned(),
            at: iso_millis(applied.record.updated_ms),
            change_source: caller.change_source.clone(),
            source_id: caller.source_id.clone(),
        });
    }

    pub fn all(&self) -> Vec<Written> {
        self.0
            .lock()
            .expect("written lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().expect("written lock").clear();
    }
}

pub fn router() -> Router<HubSpotSim> {
    Router::new()
        .route("/__admin/written", get(written).delete(clear_written))
        .route("/__admin/webhooks", get(webhooks).post(set_webhooks))
        .route("/__admin/limits", get(limits).post(set_limits))
        .route("/__admin/clock", post(set_clock))
        .route("/__admin/schema", post(set_schema))
        .route("/__admin/oauth", get(oauth_state).post(set_oauth))
        .route("/__admin/oauth/code", post(mint_code))
}

#[derive(Deserialize)]
struct WrittenQuery {
    object: Option<String>,
}

async fn written(State(sim): State<HubSpotSim>, Query(q): Query<WrittenQuery>) -> Json<Value> {
    let all: Vec<Written> = sim
        .written()
        .all()
        .into_iter()
        .filter(|w| q.object.as_deref().is_none_or(|o| o == w.object))
        .collect();
    Json(json!({ "written": all }))
}

async fn clear_written(State(sim): State<HubSpotSim>) -> StatusCode {
    sim.written().clear();
    StatusCode::NO_CONTENT
}

fn webhook_state(sim: &HubSpotSim) -> Value {
    let mut settings = serde_json::to_value(sim.webhooks().settings()).unwrap_or_default();
    if let Some(o) = settings.as_object_mut() {
        o.remove("clientSecret");
    }
    json!({
        "settings": settings,
        "stats": sim.webhooks().stats(),
        "attempts": sim.webhooks().attempts(),
    })
}

async fn webhooks(State(sim): State<HubSpotSim>) -> Json<Value> {
    Json(webhook_state(&sim))
}

async fn set_webhooks(State(sim): State<HubSpotSim>, Json(p): Json<WebhookPatch>) -> Json<Value> {
    sim.webhooks().configure(p);
    Json(webhook_state(&sim))
}

async fn limits(State(sim): State<HubSpotSim>) -> Json<LimitsConfig> {
    Json(sim.limits().config())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitsPatch {
    ten_secondly: Option<u32>,
    daily: Option<u64>,
    search_per_second: Option<u32>,
}

async fn set_limits(
    State(sim): State<HubSpotSim>,
    Json(p): Json<LimitsPatch>,
) -> Json<LimitsConfig> {
    let mut c = sim.limits().config();
    if let Some(v) = p.ten_secondly {
        c.ten_secondly = v;
    }
    if let Some(v) = p.daily {
        c.daily = v;
    }
    if let Some(v) = p.search_per_second {
        c.search_per_second = v;
    }
    sim.limits().set(c);
    Json(c)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClockPatch {
    frozen_at_ms: Option<i64>,
}

async fn set_clock(State(sim): State<HubSpotSim>, Json(p): Json<ClockPatch>) -> Json<Value> {
    sim.store().clock.freeze(p.frozen_at_ms);
    Json(json!({ "frozenAtMs": sim.store().clock.frozen() }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SchemaPatch {
    object: String,
    #[serde(default)]
    add_properties: Vec<String>,
    #[serde(default)]
    required: Option<Vec<String>>,
    #[serde(default)]
    rules: Option<Vec<Rule>>,
}

async fn set_schema(
    State(sim): State<HubSpotSim>,
    Json(p): Json<SchemaPatch>,
) -> Result<StatusCode, ApiError> {
    let ty = ObjectType::from_path(&p.object).ok_or_else(|| ApiError::unknown_object(&p.object))?;
    sim.store()
        .configure(ty, &p.add_properties, p.required, p.rules);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OAuthPatch {
    token_ttl_secs: Option<u64>,
}

async fn set_oauth(State(sim): State<HubSpotSim>, Json(p): Json<OAuthPatch>) -> Json<Value> {
    if let Some(s) = p.token_ttl_secs {
        sim.oauth().set_ttl(Duration::from_secs(s));
    }
    oauth_state(State(sim)).await
}

async fn oauth_state(State(sim): State<HubSpotSim>) -> Json<Value> {
    Json(json!({
        "tokenTtlSecs": sim.oauth().ttl().as_secs(),
        "issued": sim.oauth().issued(),
    }))
}

async fn mint_code(State(sim): State<HubSpotSim>) -> Json<Value> {
    Json(json!({ "code": sim.oauth().mint_code() }))
}
