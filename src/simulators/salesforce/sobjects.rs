//! `/services/data/vXX.X/sobjects/…`: describe, create, read, update,
//! delete, and read / upsert / delete by external id, with Salesforce's
//! status codes (201 created, 204 updated or deleted, 200/201/300 upsert).

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiErrors};
use super::schema::ObjectSchema;
use super::store::{Store, Upserted};
use super::{CallOptions, Shared};

/// Parses a JSON object body the way Salesforce reports bad JSON.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::json_parse(
            "Cannot deserialize instance of sObject from a non-object value",
        )),
        Err(e) => Err(ApiError::json_parse(format!(
            "Unexpected character at [line:{}, column:{}]",
            e.line(),
            e.column()
        ))),
    }
}

fn schema_of(sim: &Shared, object: &str) -> Result<std::sync::Arc<ObjectSchema>, ApiError> {
    sim.store
        .lock()
        .expect("store lock")
        .schema(object)
        .cloned()
        .ok_or_else(ApiError::not_found)
}

fn describe_field(f: &super::schema::FieldDef) -> Value {
    json!({
        "name": f.name,
        "label": f.label,
        "type": f.kind,
        "length": f.length.unwrap_or(0),
        "nillable": !f.required && f.name != "Id",
        "createable": f.writable,
        "updateable": f.writable,
        "custom": f.name.ends_with("__c"),
        "externalId": f.external_id,
        "unique": f.unique,
        "idLookup": f.name == "Id" || f.external_id,
        "referenceTo": f.reference_to.iter().collect::<Vec<_>>(),
        "compoundFieldName": f.compound.map(|(c, _)| c),
        "defaultedOnCreate": !f.writable || f.name == "OwnerId",
    })
}

fn object_summary(s: &ObjectSchema, version: &str) -> Value {
    json!({
        "name": s.name,
        "label": s.label,
        "keyPrefix": s.key_prefix,
        "custom": false,
        "createable": true,
        "updateable": true,
        "deletable": true,
        "queryable": true,
        "urls": {
            "sobject": format!("/services/data/{version}/sobjects/{}", s.name),
            "describe": format!("/services/data/{version}/sobjects/{}/describe", s.name),
            "rowTemplate": format!("/services/data/{version}/sobjects/{}/{{ID}}", s.name),
        },
    })
}

/// `GET /services/data`: the API versions offered.
pub async fn versions() -> Json<Value> {
    Json(json!([
        { "label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0" },
        { "label": "Spring '24", "url": "/services/data/v60.0", "version": "60.0" },
        { "label": "Summer '24", "url": "/services/data/v61.0", "version": "61.0" },
        { "label": "Winter '25", "url": "/services/data/v62.0", "version": "62.0" },
    ]))
}

/// `GET /sobjects`
pub async fn describe_global(State(sim): State<Shared>, Path(version): Path<String>) -> Response {
    let store = sim.store.lock().expect("store lock");
    let objects: Vec<Value> = store
        .schemas()
        .map(|s| object_summary(s, &version))
        .collect();
    Json(json!({ "encoding": "UTF-8", "maxBatchSize": 200, "sobjects": objects })).into_response()
}

/// `GET /sobjects/{object}`
pub async fn basic_info(
    State(sim): State<Shared>,
    Path((version, object)): Path<(String, String)>,
) -> Response {
    match schema_of(&sim, &object) {
        Ok(s) => Json(json!({ "objectDescribe": object_summary(&s, &version), "recentItems": [] }))
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /sobjects/{object}/describe`
pub async fn describe(
    State(sim): State<Shared>,
    Path((version, object)): Path<(String, String)>,
) -> Response {
    match schema_of(&sim, &object) {
        Ok(s) => {
            let mut v = object_summary(&s, &version);
            v["fields"] = Value::Array(s.fields.iter().map(describe_field).collect());
            Json(v).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /sobjects/{object}` → 201 `{id, success, errors}`.
pub async fn create(
    State(sim): State<Shared>,
    Path((version, object)): Path<(String, String)>,
    Extension(opts): Extension<CallOptions>,
    body: axum::body::Bytes,
) -> Response {
    let result = json_object(&body)
        .map_err(ApiErrors::from)
        .and_then(|body| {
            let ctx = opts.ctx(&version);
            sim.write(|store| {
                let r = store.create(&ctx, &object, &body);
                let ok = r.is_ok();
                (r, ok)
            })
        });
    match result {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({ "id": id, "success": true, "errors": [] })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct FieldsArg {
    fields: Option<String>,
}

fn fields_list(arg: &FieldsArg) -> Option<Vec<String>> {
    arg.fields.as_ref().map(|f| {
        f.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn render_one(
    store: &Store,
    object: &str,
    rec: &Map<String, Value>,
    fields: Option<&[String]>,
    version: &str,
) -> Result<Value, ApiError> {
    let schema = store.schema(object).ok_or_else(ApiError::not_found)?;
    if let Some(fs) = fields {
        for f in fs {
            if schema.field(f).is_none() {
                return Err(ApiError::bad_request(
                    "INVALID_FIELD",
                    format!("No such column '{f}' on entity '{}'.", schema.name),
                ));
            }
        }
    }
    Ok(Store::render(schema, rec, fields, version))
}

/// `GET /sobjects/{object}/{id}[?fields=…]`
pub async fn read(
    State(sim): State<Shared>,
    Path((version, object, id)): Path<(String, String, String)>,
    Query(arg): Query<FieldsArg>,
) -> Response {
    let store = sim.store.lock().expect("store lock");
    let fields = fields_list(&arg);
    match store
        .get(&object, &id)
        .and_then(|rec| render_one(&store, &object, rec, fields.as_deref(), &version))
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `PATCH /sobjects/{object}/{id}` → 204; with `If-Unmodified-Since`,
/// 412 `PRECONDITION_FAILED` when the record changed after that time.
pub async fn update(
    State(sim): State<Shared>,
    Path((version, object, id)): Path<(String, String, String)>,
    Extension(opts): Extension<CallOptions>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let since = headers
        .get(header::IF_UNMODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
        .map(|t| t.timestamp());
    let result = json_object(&body)
        .map_err(ApiErrors::from)
        .and_then(|body| {
            let ctx = opts.ctx(&version);
            sim.write(|store| {
                if let Some(since) = since {
                    let modified = store
                        .get(&object, &id)
                        .ok()
                        .and_then(|r| r.get("LastModifiedDate").and_then(Value::as_str))
                        .and_then(super::store::parse_datetime)
                        .map(|t| t.timestamp());
                    if modified.is_some_and(|m| m > since) {
                        let e = ApiError::new(
                            StatusCode::PRECONDITION_FAILED,
                            "PRECONDITION_FAILED",
                            "The requested resource has been modified since the If-Unmodified-Since date",
                        );
                        return (Err(e.into()), false);
                    }
                }
                let r = store.update(&ctx, &object, &id, &body);
                let ok = r.is_ok();
                (r, ok)
            })
        });
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /sobjects/{object}/{id}` → 204.
pub async fn delete(
    State(sim): State<Shared>,
    Path((version, object, id)): Path<(String, String, String)>,
    Extension(opts): Extension<CallOptions>,
) -> Response {
    let ctx = opts.ctx(&version);
    let result = sim.write(|store| {
        let r = store
            .schema(&object)
            .map(|s| s.key_prefix)
            .ok_or_else(ApiError::not_found)
            .and_then(|prefix| {
                if id.starts_with(prefix) {
                    store.delete(&ctx, &id)
                } else {
                    Err(ApiError::not_found())
                }
            });
        let ok = r.is_ok();
        (r, ok)
    });
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

fn multiple(version: &str, object: &str, ids: &[String]) -> Response {
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("/services/data/{version}/sobjects/{object}/{id}"))
        .collect();
    (StatusCode::MULTIPLE_CHOICES, Json(json!(urls))).into_response()
}

/// `GET /sobjects/{object}/{field}/{value}`: 200, 404, or 300 with the
/// matching records' URLs.
pub async fn read_by_external_id(
    State(sim): State<Shared>,
    Path((version, object, field, value)): Path<(String, String, String, String)>,
    Query(arg): Query<FieldsArg>,
) -> Response {
    let store = sim.store.lock().expect("store lock");
    let ids = match store.find_by_external_id(&object, &field, &value) {
        Ok(ids) => ids,
        Err(e) => return e.into_response(),
    };
    match ids.as_slice() {
        [] => ApiError::not_found().into_response(),
        [id] => {
            let fields = fields_list(&arg);
            match store
                .get(&object, id)
                .and_then(|rec| render_one(&store, &object, rec, fields.as_deref(), &version))
            {
                Ok(v) => Json(v).into_response(),
                Err(e) => e.into_response(),
            }
        }
        _ => multiple(&version, &object, &ids),
    }
}

/// `PATCH /sobjects/{object}/{field}/{value}`: upsert → 201 created,
/// 200 updated (`created: false`), 300 several matches.
pub async fn upsert(
    State(sim): State<Shared>,
    Path((version, object, field, value)): Path<(String, String, String, String)>,
    Extension(opts): Extension<CallOptions>,
    body: axum::body::Bytes,
) -> Response {
    let result = json_object(&body)
        .map_err(ApiErrors::from)
        .and_then(|body| {
            let ctx = opts.ctx(&version);
            sim.write(|store| {
                let r = store.upsert(&ctx, &object, &field, &value, &body);
                let ok = r.is_ok();
                (r, ok)
            })
        });
    match result {
        Ok(Upserted::Created(id)) => (
            StatusCode::CREATED,
            Json(json!({ "id": id, "success": true, "errors": [], "created": true })),
        )
            .into_response(),
        Ok(Upserted::Updated(id)) => {
            Json(json!({ "id": id, "success": true, "errors": [], "created": false }))
                .into_response()
        }
        Ok(Upserted::Multiple(ids)) => {
            let name = schema_of(&sim, &object)
                .map(|s| s.name.clone())
                .unwrap_or(object);
            multiple(&version, &name, &ids)
        }
        Err(e) => e.into_response(),
    }
}

/// `DELETE /sobjects/{object}/{field}/{value}` → 204.
pub async fn delete_by_external_id(
    State(sim): State<Shared>,
    Path((version, object, field, value)): Path<(String, String, String, String)>,
    Extension(opts): Extension<CallOptions>,
) -> Response {
    let ctx = opts.ctx(&version);
    let result = sim.write(|store| {
        let r = match store.find_by_external_id(&object, &field, &value) {
            Err(e) => Err(e.into_response()),
            Ok(ids) => match ids.as_slice() {
                [] => Err(ApiError::not_found().into_response()),
                [id] => store.delete(&ctx, id).map_err(IntoResponse::into_response),
                _ => Err(multiple(&version, &object, &ids)),
            },
        };
        let ok = r.is_ok();
        (r, ok)
    });
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}
