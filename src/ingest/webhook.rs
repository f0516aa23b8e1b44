//! The webhook receiver: one route per integration, `POST /webhooks/<id>`.
//!
//! ```text
//!  vendor ──POST──► verify signature ──► parse ──► drop own ──► hydrate ids (batched reads)
//!                      │ 401                │ 400                  └──► Emitter ──► Kafka ──► 200
//! ```
//!
//! Events the system marks as extsync's own writes ([`WebhookEvent::own`])
//! are echoes: they are dropped here, before any read or Kafka write. The
//! processor already holds what it wrote; changes others make arrive as
//! events of their own. Polls carry no origin; their echoes are recognised
//! by the processor (content hash).
//!
//! The answer waits until the events are durably in Kafka, so a 200 means
//! nothing can be lost and any failure makes the vendor deliver again.
//! Bodies are never logged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use serde_json::json;

use super::emitter::{EmitError, EmitStats, Emitter};
use super::event::{ChangeSource, ExternalChange};
use super::target::IngestTarget;
use crate::connectors::record::ChangeOp;
use crate::connectors::{ConnectorError, ErrorClass, WebhookEvent, WebhookRequest};

/// Metric: webhook requests rejected, by integration and reason.
pub const REJECTED_TOTAL: &str = "extsync_ingest_webhook_rejected_total";
/// Metric: webhook requests accepted, by integration.
pub const ACCEPTED_TOTAL: &str = "extsync_ingest_webhook_accepted_total";
/// Metric: events of extsync's own writes dropped, by integration.
pub const OWN_DROPPED_TOTAL: &str = "extsync_ingest_own_changes_dropped_total";
/// Metric: seconds from request to acknowledgement.
pub const ACK_SECONDS: &str = "extsync_ingest_webhook_ack_seconds";

/// Everything the receiver needs, shared by all requests.
pub struct Receiver {
    pub targets: HashMap<String, Arc<IngestTarget>>,
    pub emitter: Arc<Emitter>,
    /// Public base URL vendors call; `None`: from the Host header.
    pub public_url: Option<String>,
}

/// The receiver's routes, with `max_body_bytes` as the body limit.
pub fn router(receiver: Arc<Receiver>, max_body_bytes: usize) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/{integration}", post(receive))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(receiver)
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Path(integration): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let Some(target) = rx.targets.get(&integration).cloned() else {
        return reject(
            "unknown",
            StatusCode::NOT_FOUND,
            format!("unknown integration {integration:?}"),
        );
    };
    if !is_json(&headers) {
        return reject(
            &integration,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json".into(),
        );
    }
    let base = public_base(rx.public_url.as_deref(), &headers);
    let request = WebhookRequest {
        method: "POST".into(),
        url: format!("{base}{uri}"),
        headers,
        body,
        received_at: Utc::now(),
    };
    let events = match target.connector.verify_webhook(&request) {
        Ok(events) => events,
        Err(e) if e.class == ErrorClass::Unauthenticated => {
            return reject(&integration, StatusCode::UNAUTHORIZED, e.message);
        }
        Err(e) => {
            return reject(
                &integration,
                StatusCode::BAD_REQUEST,
                format!("malformed payload: {}", e.message),
            );
        }
    };
    let changes = match hydrate(&target, events, ChangeSource::Webhook).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(integration, error = %e, "reading webhook records failed; the vendor will retry");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": e.to_string()})),
            )
                .into_response();
        }
    };
    let stored = rx.emitter.emit(changes).await;
    acknowledge(integration, started, stored)
}

/// Whether the request's content type is `application/json`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// The URL the vendor called, up to the path: the configured public URL,
/// else the request's `Host` and `X-Forwarded-Proto`. Signatures that
/// cover the URL are checked against it.
fn public_base(public_url: Option<&str>, headers: &HeaderMap) -> String {
    if let Some(u) = public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// The answer once the events are stored (200: the vendor stops sending
/// them) or could not be (503: the vendor retries).
fn acknowledge(
    integration: String,
    started: std::time::Instant,
    stored: Result<EmitStats, EmitError>,
) -> Response {
    match stored {
        Ok(stats) => {
            metrics::counter!(ACCEPTED_TOTAL, "integration" => integration.clone()).increment(1);
            metrics::histogram!(ACK_SECONDS, "integration" => integration)
                .record(started.elapsed().as_secs_f64());
            (
                StatusCode::OK,
                Json(json!({"accepted": stats.emitted, "duplicates": stats.collapsed})),
            )
                .into_response()
        }
        Err(e @ (EmitError::Kafka(_) | EmitError::State(_))) => {
            tracing::error!(integration, error = %e, "webhook events not stored; the vendor will retry");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "events could not be stored; retry"})),
            )
                .into_response()
        }
    }
}

fn reject(integration: &str, status: StatusCode, message: String) -> Response {
    let reason = match status {
        StatusCode::UNAUTHORIZED => "signature",
        StatusCode::NOT_FOUND => "unknown_integration",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "content_type",
        _ => "malformed",
    };
    metrics::counter!(REJECTED_TOTAL, "integration" => integration.to_string(), "reason" => reason)
        .increment(1);
    tracing::info!(
        integration,
        status = status.as_u16(),
        reason,
        "webhook rejected"
    );
    (status, Json(json!({"error": message}))).into_response()
}

/// Turns events into change events, reading the records of events that carry
/// only ids in the system's batch form. Events for unmapped objects and
/// echoes of extsync's own writes are skipped.
pub async fn hydrate(
    target: &IngestTarget,
    events: Vec<WebhookEvent>,
    source: ChangeSource,
) -> Result<Vec<ExternalChange>, ConnectorError> {
    let (own, events): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.own);
    if !own.is_empty() {
        metrics::counter!(OWN_DROPPED_TOTAL, "integration" => target.id.clone())
            .increment(own.len() as u64);
    }
    let mut changes = Vec::with_capacity(events.len());
    let mut to_read: HashMap<(String, String), Vec<WebhookEvent>> = HashMap::new();
    for ev in events {
        let Some((entity, object)) = target.entity_for(&ev.object) else {
            continue;
        };
        let (entity, object) = (entity.to_string(), object.to_string());
        if ev.op == ChangeOp::Delete {
            changes.push(deletion(target, &entity, &object, ev, source));
        } else {
            to_read.entry((entity, object)).or_default().push(ev);
        }
    }
    for ((entity, object), evs) in to_read {
        let mut ids: Vec<String> = evs.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        ids.dedup();
        let mut records = HashMap::new();
        for chunk in ids.chunks(target.connector.max_batch().max(1)) {
            for r in target.connector.read_many(&object, chunk).await? {
                records.insert(r.id.clone(), r);
            }
        }
        // One change per record: the hydrated record is its latest state;
        // the changed fields of all its events are merged.
        let mut by_id: HashMap<String, (ChangeOp, Vec<String>, Option<String>)> = HashMap::new();
        for ev in evs {
            let slot = by_id
                .entry(ev.id.clone())
                .or_insert((ev.op, Vec::new(), None));
            if ev.op == ChangeOp::Create {
                slot.0 = ChangeOp::Create;
            }
            for f in ev.changed_fields {
                if !slot.1.contains(&f) {
                    slot.1.push(f);
                }
            }
            if ev.origin.is_some() {
                slot.2 = ev.origin;
            }
        }
        for (id, (op, fields, origin)) in by_id {
            // A record gone between the event and the read was deleted; its
            // deletion arrives as its own event.
            if let Some(mut record) = records.remove(&id) {
                record.object = object.clone();
                changes
                    .push(target.change_from_record(&entity, record, op, source, fields, origin));
            }
        }
    }
    Ok(changes)
}

fn deletion(
    target: &IngestTarget,
    entity: &str,
    object: &str,
    ev: WebhookEvent,
    source: ChangeSource,
) -> ExternalChange {
    ExternalChange {
        system: target.provider.as_str().to_string(),
        integration: target.id.clone(),
        entity: entity.to_string(),
        object: object.to_string(),
        external_id: ev.id,
        op: ChangeOp::Delete,
        after: None,
        changed_fields: Vec::new(),
        version: format!("deleted@{}", ev.occurred_at.timestamp_millis()),
        modified_at: ev.occurred_at,
        source,
        origin: ev.origin,
        received_at: Utc::now(),
    }
}
