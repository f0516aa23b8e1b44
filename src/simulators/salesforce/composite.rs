//! sObject collections at `/services/data/vXX.X/composite/sobjects`: create
//! (POST), update (PATCH), delete (DELETE `?ids=`), retrieve (GET or POST
//! `/{object}`) and upsert (PATCH `/{object}/{externalIdField}`), at most
//! 200 records per call. With `allOrNone` one failure rolls every record
//! back; without it each record succeeds or fails on its own. The answer is
//! always 200 with one `{id, success, errors[, created]}` per record, in order.

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiErrors};
use super::sobjects::json_object;
use super::store::{Store, Upserted, WriteCtx};
use super::{CallOptions, Shared};

/// Records accepted per collection call.
pub const MAX_RECORDS: usize = 200;

fn too_many() -> ApiError {
    ApiError::bad_request(
        "EXCEEDED_ID_LIMIT",
        "record limit reached. cannot submit more than 200 records into this call",
    )
}

fn rolled_back() -> ApiError {
    ApiError::bad_request(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
    )
}

struct Item {
    id: Option<String>,
    /// The record did not exist before this call (its id means nothing if rolled back).
    new_record: bool,
    created: Option<bool>,
    errors: Option<ApiErrors>,
}

fn parse_records(body: &[u8]) -> Result<(bool, Vec<Value>), ApiError> {
    let body = json_object(body)?;
    let all_or_none = body
        .get("allOrNone")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let records = match body.get("records") {
        Some(Value::Array(r)) => r.clone(),
        _ => {
            return Err(ApiError::json_parse(
                "Cannot deserialize request: 'records' must be an array",
            ));
        }
    };
    if records.len() > MAX_RECORDS {
        return Err(too_many());
    }
    Ok((all_or_none, records))
}

fn record_type(rec: &Map<String, Value>) -> Result<String, ApiError> {
    rec.get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("INVALID_TYPE", "Must send a concrete entity type."))
}

/// Applies `op` to every record in one transaction and builds the answer.
fn run(
    sim: &Shared,
    all_or_none: bool,
    records: Vec<Value>,
    op: impl Fn(&mut Store, Map<String, Value>) -> Item,
) -> Response {
    let items = sim.write(|store| {
        let items: Vec<Item> = records
            .into_iter()
            .map(|r| match r {
                Value::Object(m) => op(store, m),
                _ => Item {
                    id: None,
                    new_record: false,
                    created: None,
                    errors: Some(ApiError::json_parse("record must be an object").into()),
                },
            })
            .collect();
        let failed = items.iter().any(|i| i.errors.is_some());
        let commit = !(all_or_none && failed);
        (items, commit)
    });
    let failed = items.iter().any(|i| i.errors.is_some());
    let out: Vec<Value> = items
        .into_iter()
        .map(|i| {
            let errors = match (&i.errors, all_or_none && failed) {
                (Some(e), _) => Some(e.0.iter().map(ApiError::composite_json).collect::<Vec<_>>()),
                (None, true) => Some(vec![rolled_back().composite_json()]),
                (None, false) => None,
            };
            let mut v = Map::new();
            match errors {
                Some(errs) => {
                    if let Some(id) = i.id.filter(|_| !i.new_record) {
                        v.insert("id".into(), json!(id));
                    }
                    v.insert("success".into(), json!(false));
                    v.insert("errors".into(), json!(errs));
                }
                None => {
                    v.insert("id".into(), json!(i.id));
                    v.insert("success".into(), json!(true));
                    v.insert("errors".into(), json!([]));
                    if let Some(c) = i.created {
                        v.insert("created".into(), json!(c));
                    }
                }
            }
            Value::Object(v)
        })
        .collect();
    Json(Value::Array(out)).into_response()
}

impl Item {
    /// A record saved: `new_record` when the call made it, `created` for upserts.
    fn saved(id: String, new_record: bool, created: Option<bool>) -> Item {
        Item {
            id: Some(id),
            new_record,
            created,
            errors: None,
        }
    }
}

fn fail(id: Option<String>, e: impl Into<ApiErrors>) -> Item {
    Item {
        id,
        new_record: false,
        created: None,
        errors: Some(e.into()),
    }
}

/// `POST /composite/sobjects`: create.
pub async fn create(
    State(sim): State<Shared>,
    Path(version): Path<String>,
    Extension(opts): Extension<CallOptions>,
    body: axum::body::Bytes,
) -> Response {
    let (all_or_none, records) = match parse_records(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let ctx = opts.ctx(&version);
    run(&sim, all_or_none, records, |store, rec| {
        let object = match record_type(&rec) {
            Ok(t) => t,
            Err(e) => return fail(None, e),
        };
        match store.create(&ctx, &object, &rec) {
            Ok(id) => Item::saved(id, true, None),
            Err(e) => fail(None, e),
        }
    })
}

/// `PATCH /composite/sobjects`: update (each record carries its `Id`).
pub async fn update(
    State(sim): State<Shared>,
    Path(version): Path<String>,
    Extension(opts): Extension<CallOptions>,
    body: axum::body::Bytes,
) -> Response {
    let (all_or_none, records) = match parse_records(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let ctx = opts.ctx(&version);
    run(&sim, all_or_none, records, |store, mut rec| {
        let object = match record_type(&rec) {
            Ok(t) => t,
            Err(e) => return fail(None, e),
        };
        let id_key = rec.keys().find(|k| k.eq_ignore_ascii_case("Id")).cloned();
        let Some(id) = id_key
            .and_then(|k| rec.remove(&k))
            .and_then(|v| v.as_str().map(str::to_string))
        else {
            return fail(
                None,
                ApiError::bad_request("MISSING_ARGUMENT", "Id not specified in an update call"),
            );
        };
        match store.update(&ctx, &object, &id, &rec) {
            Ok(()) => Item::saved(id, false, None),
            Err(e) => fail(Some(id), e),
        }
    })
}

#[derive(Deserialize)]
pub struct DeleteArgs {
    ids: Option<String>,
    #[serde(rename = "allOrNone")]
    all_or_none: Option<bool>,
}

/// `DELETE /composite/sobjects?ids=…&allOrNone=…`
pub async fn delete(
    State(sim): State<Shared>,
    Path(version): Path<String>,
    Extension(opts): Extension<CallOptions>,
    Query(args): Query<DeleteArgs>,
) -> Response {
    let ids: Vec<Value> = args
        .ids
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| json!({ "Id": s }))
        .collect();
    if ids.is_empty() {
        return ApiError::bad_request("MISSING_ARGUMENT", "ids parameter is required")
            .into_response();
    }
    if ids.len() > MAX_RECORDS {
        return too_many().into_response();
    }
    let ctx: WriteCtx = opts.ctx(&version);
    run(
        &sim,
        args.all_or_none.unwrap_or(false),
        ids,
        |store, rec| {
            let id = rec["Id"].as_str().unwrap_or_default().to_string();
            match store.delete(&ctx, &id) {
                Ok(id) => Item::saved(id, false, None),
                Err(e) => fail(Some(id), e),
            }
        },
    )
}

/// `PATCH /composite/sobjects/{object}/{externalIdField}`: upsert.
pub async fn upsert(
    State(sim): State<Shared>,
    Path((version, object, field)): Path<(String, String, String)>,
    Extension(opts): Extension<CallOptions>,
    body: axum::body::Bytes,
) -> Response {
    let (all_or_none, records) = match parse_records(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    {
        let store = sim.store.lock().expect("store lock");
        let known = store
            .schema(&object)
            .and_then(|s| s.field(&field))
            .is_some_and(|f| f.external_id || f.name == "Id");
        if !known {
            return ApiError::field(
                "INVALID_FIELD",
                format!("Field name provided, {field} is not an External ID or indexed field for {object}"),
                vec![field],
            )
            .into_response();
        }
    }
    let ctx = opts.ctx(&version);
    run(&sim, all_or_none, records, |store, mut rec| {
        if let Err(e) = record_type(&rec) {
            return fail(None, e);
        }
        let key = rec.keys().find(|k| k.eq_ignore_ascii_case(&field)).cloned();
        let value = key.and_then(|k| rec.remove(&k)).and_then(|v| match v {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        let Some(value) = value else {
            return fail(
                None,
                ApiError::field(
                    "MISSING_ARGUMENT",
                    format!("{field} not specified"),
                    vec![field.clone()],
                ),
            );
        };
        match store.upsert(&ctx, &object, &field, &value, &rec) {
            Ok(Upserted::Created(id)) => Item::saved(id, true, Some(true)),
            Ok(Upserted::Updated(id)) => Item::saved(id, false, Some(false)),
            Ok(Upserted::Multiple(ids)) => fail(
                None,
                ApiError::field(
                    "DUPLICATE_EXTERNAL_ID",
                    format!(
                        "{field}: more than one record found for external id field: [{}]",
                        ids.join(", ")
                    ),
                    vec![field.clone()],
                ),
            ),
            Err(e) => fail(None, e),
        }
    })
}

#[derive(Deserialize)]
pub struct RetrieveArgs {
    ids: Option<String>,
    fields: Option<String>,
}

#[derive(Deserialize)]
pub struct RetrieveBody {
    ids: Vec<String>,
    fields: Vec<String>,
}

fn retrieve_ids(
    sim: &Shared,
    version: &str,
    object: &str,
    ids: &[String],
    fields: &[String],
) -> Response {
    if ids.len() > 2000 {
        return too_many().into_response();
    }
    let store = sim.store.lock().expect("store lock");
    let Some(schema) = store.schema(object).cloned() else {
        return ApiError::not_found().into_response();
    };
    for f in fields {
        if schema.field(f).is_none() {
            return ApiError::bad_request(
                "INVALID_FIELD",
                format!("No such column '{f}' on entity '{}'.", schema.name),
            )
            .into_response();
        }
    }
    let out: Vec<Value> = ids
        .iter()
        .map(|id| match store.get(object, id) {
            Ok(rec) => Store::render(&schema, rec, Some(fields), version),
            Err(_) => Value::Null,
        })
        .collect();
    Json(Value::Array(out)).into_response()
}

fn split(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// `GET /composite/sobjects/{object}?ids=…&fields=…`: `null` for missing ids.
pub async fn retrieve(
    State(sim): State<Shared>,
    Path((version, object)): Path<(String, String)>,
    Query(args): Query<RetrieveArgs>,
) -> Response {
    retrieve_ids(
        &sim,
        &version,
        &object,
        &split(&args.ids),
        &split(&args.fields),
    )
}

/// `POST /composite/sobjects/{object}` with `{ids, fields}`.
pub async fn retrieve_post(
    State(sim): State<Shared>,
    Path((version, object)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    match serde_json::from_slice::<RetrieveBody>(&body) {
        Ok(b) => retrieve_ids(&sim, &version, &object, &b.ids, &b.fields),
        Err(e) => ApiError::json_parse(e.to_string()).into_response(),
    }
}
