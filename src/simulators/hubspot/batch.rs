//! Batch endpoints: `POST /crm/v3/objects/{type}/batch/{create|read|update|upsert|archive}`
//! with at most 100 `inputs`. Answers `{status, results, startedAt, completedAt}`
//! (201 for create, 200 otherwise, 204 for archive); when some inputs fail,
//! 207 Multi-Status with an `errors` list whose `context` names the failed
//! inputs (`ids`, or the caller's `objectWriteTraceId`).

use std::collections::HashSet;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::{ApiError, batch_error};
use super::oauth::Caller;
use super::objects::{ReadParams, object_type};
use super::store::{ChangeKind, ObjectType, Selection, WriteError, iso_millis};
use super::{HubSpotSim, parse_body};

/// Most inputs one batch call accepts.
pub const MAX_BATCH_INPUTS: usize = 100;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchInput {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    id_property: Option<String>,
    #[serde(default)]
    properties: Map<String, Value>,
    #[serde(default)]
    object_write_trace_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchRequest {
    inputs: Vec<BatchInput>,
    /// batch/read: properties to return.
    #[serde(default)]
    properties: Vec<String>,
    /// batch/read: look records up by this unique property.
    #[serde(default)]
    id_property: Option<String>,
}

/// Collects results and errors of one batch call.
struct Outcome {
    started: String,
    results: Vec<Value>,
    errors: Vec<Value>,
}

impl Outcome {
    fn new() -> Self {
        Outcome {
            started: iso_millis(Utc::now().timestamp_millis()),
            results: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn finish(self, ok: StatusCode) -> Response {
        let status = if self.errors.is_empty() {
            ok
        } else {
            StatusCode::MULTI_STATUS
        };
        let mut body = json!({
            "status": "COMPLETE",
            "results": self.results,
            "startedAt": self.started,
            "completedAt": iso_millis(Utc::now().timestamp_millis()),
        });
        if !self.errors.is_empty() {
            body["numErrors"] = json!(self.errors.len());
            body["errors"] = Value::Array(self.errors);
        }
        (status, Json(body)).into_response()
    }
}

fn context(id: Option<&str>, trace: Option<&str>) -> Value {
    let mut ctx = Map::new();
    if let Some(id) = id {
        ctx.insert("ids".into(), json!([id]));
    }
    if let Some(t) = trace {
        ctx.insert("objectWriteTraceId".into(), json!([t]));
    }
    Value::Object(ctx)
}

fn with_trace(mut v: Value, trace: Option<&str>) -> Value {
    if let Some(t) = trace {
        v["objectWriteTraceId"] = Value::String(t.to_string());
    }
    v
}

/// `POST /crm/v3/objects/{type}/batch/{action}`.
pub async fn batch(
    State(sim): State<HubSpotSim>,
    Path((object, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ty = object_type(&object)?;
    let req: BatchRequest = parse_body(&body)?;
    if req.inputs.len() > MAX_BATCH_INPUTS {
        return Err(ApiError::validation(format!(
            "Too many inputs: {}. The maximum number of inputs is {MAX_BATCH_INPUTS}.",
            req.inputs.len()
        )));
    }
    if matches!(action.as_str(), "update" | "archive" | "read") {
        let mut seen = HashSet::new();
        let dups: Vec<&str> = req
            .inputs
            .iter()
            .filter_map(|i| i.id.as_deref())
            .filter(|id| !seen.insert(*id))
            .collect();
        if !dups.is_empty() {
            return Err(ApiError::validation(format!(
                "Duplicate IDs found in batch input: {dups:?}. IDs must be unique"
            )));
        }
    }
    match action.as_str() {
        "create" => Ok(create(&sim, ty, &caller, req)),
        "read" => read(&sim, ty, req, query.as_deref()),
        "update" => Ok(update(&sim, ty, &caller, req)),
        "upsert" => upsert(&sim, ty, &caller, req),
        "archive" => Ok(archive(&sim, ty, &caller, req)),
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            format!("Unknown batch action: {other}"),
        )),
    }
}

fn create(sim: &HubSpotSim, ty: ObjectType, caller: &Caller, req: BatchRequest) -> Response {
    let mut out = Outcome::new();
    for input in req.inputs {
        let trace = input.object_write_trace_id.as_deref();
        match sim.store().create(ty, &input.properties) {
            Ok(applied) => {
                sim.record(caller, &applied, Some(&input.properties));
                out.results.push(with_trace(
                    applied.record.to_json(ty, Selection::All),
                    trace,
                ));
            }
            Err(e) => out.errors.push(batch_error(ty, &e, context(None, trace))),
        }
    }
    out.finish(StatusCode::CREATED)
}

fn read(
    sim: &HubSpotSim,
    ty: ObjectType,
    req: BatchRequest,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(query)?;
    let sel = if req.properties.is_empty() {
        Selection::Default
    } else {
        Selection::Only(&req.properties)
    };
    let mut out = Outcome::new();
    let mut missing = Vec::new();
    for input in &req.inputs {
        let id = input.id.as_deref().unwrap_or("");
        match sim
            .store()
            .get(ty, id, req.id_property.as_deref(), params.archived)
        {
            Some(rec) => out.results.push(rec.to_json(ty, sel)),
            None => missing.push(id.to_string()),
        }
    }
    if !missing.is_empty() {
        out.errors.push(json!({
            "status": "error",
            "category": "OBJECT_NOT_FOUND",
            "message": format!(
                "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
                ty.upper()
            ),
            "context": {"ids": missing},
            "errors": [],
            "links": {},
        }));
    }
    Ok(out.finish(StatusCode::OK))
}

fn update(sim: &HubSpotSim, ty: ObjectType, caller: &Caller, req: BatchRequest) -> Response {
    let mut out = Outcome::new();
    for input in req.inputs {
        let trace = input.object_write_trace_id.as_deref();
        let id = input.id.clone().unwrap_or_default();
        match sim
            .store()
            .update(ty, &id, input.id_property.as_deref(), &input.properties)
        {
            Ok(applied) => {
                sim.record(caller, &applied, Some(&input.properties));
                out.results.push(with_trace(
                    applied.record.to_json(ty, Selection::All),
                    trace,
                ));
            }
            Err(e) => out
                .errors
                .push(batch_error(ty, &e, context(Some(&id), trace))),
        }
    }
    out.finish(StatusCode::OK)
}

fn upsert(
    sim: &HubSpotSim,
    ty: ObjectType,
    caller: &Caller,
    req: BatchRequest,
) -> Result<Response, ApiError> {
    let mut out = Outcome::new();
    for input in req.inputs {
        let trace = input.object_write_trace_id.as_deref();
        let (Some(id), Some(id_property)) = (input.id.as_deref(), input.id_property.as_deref())
        else {
            return Err(ApiError::validation(
                "Each upsert input needs \"id\" and \"idProperty\"",
            ));
        };
        if !sim.store().known_property(ty, id_property) {
            out.errors.push(batch_error(
                ty,
                &WriteError::Validation(vec![super::store::PropertyError {
                    name: id_property.to_string(),
                    code: "PROPERTY_DOESNT_EXIST".into(),
                    message: format!("Property \"{id_property}\" does not exist"),
                }]),
                context(Some(id), trace),
            ));
            continue;
        }
        match sim.store().upsert(ty, id_property, id, &input.properties) {
            Ok(applied) => {
                sim.record(caller, &applied, Some(&input.properties));
                let mut v = with_trace(applied.record.to_json(ty, Selection::All), trace);
                v["new"] = json!(applied.kind == ChangeKind::Creation);
                out.results.push(v);
            }
            Err(e) => out
                .errors
                .push(batch_error(ty, &e, context(Some(id), trace))),
        }
    }
    Ok(out.finish(StatusCode::OK))
}

fn archive(sim: &HubSpotSim, ty: ObjectType, caller: &Caller, req: BatchRequest) -> Response {
    for input in &req.inputs {
        if let Some(id) = input.id.as_deref()
            && let Some(applied) = sim.store().archive(ty, id)
        {
            sim.record(caller, &applied, None);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
