//! The simulator's admin surface for tests and demos, next to the shared
//! `/__admin/faults`: `GET /__admin/written` (what was written),
//! `POST /__admin/tokens/expire` (end every session now),
//! `POST /__admin/clock` (freeze the modification time) and
//! `GET|POST /__admin/limits` (read or set the API quota).

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/__admin/written", get(written))
        .route("/__admin/tokens/expire", post(expire_tokens))
        .route("/__admin/clock", post(clock))
        .route("/__admin/limits", get(get_limits).post(set_limits))
}

#[derive(Deserialize)]
struct WrittenArgs {
    #[serde(default)]
    after: u64,
    object: Option<String>,
}

async fn written(State(sim): State<Shared>, Query(args): Query<WrittenArgs>) -> Json<Value> {
    let store = sim.store.lock().expect("store lock");
    let entries = store.written_since(args.after, args.object.as_deref());
    Json(json!({ "written": entries }))
}

async fn expire_tokens(State(sim): State<Shared>) -> Json<Value> {
    Json(json!({ "revoked": sim.tokens.expire_all() }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClockArgs {
    /// Every write stamps this time; `null` returns to the real clock.
    frozen_at: Option<DateTime<Utc>>,
}

async fn clock(State(sim): State<Shared>, Json(args): Json<ClockArgs>) -> Json<Value> {
    sim.store
        .lock()
        .expect("store lock")
        .freeze_clock(args.frozen_at);
    Json(json!({ "frozenAt": args.frozen_at }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitArgs {
    limit: Option<u64>,
    used: Option<u64>,
}

async fn get_limits(State(sim): State<Shared>) -> Json<Value> {
    let (used, limit) = sim.usage.usage();
    Json(json!({ "used": used, "limit": limit }))
}

async fn set_limits(State(sim): State<Shared>, Json(args): Json<LimitArgs>) -> Json<Value> {
    sim.usage.set(args.limit, args.used);
    get_limits(State(sim)).await
}
