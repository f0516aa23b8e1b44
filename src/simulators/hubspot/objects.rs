//! Single-record endpoints: `POST /crm/v3/objects/{type}` (201),
//! `GET …/{id}?properties=&idProperty=&archived=`, `PATCH …/{id}`,
//! `DELETE …/{id}` (204, also for records that don't exist) and
//! `GET /crm/v3/objects/{type}?limit=&after=` (paged by id).

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::oauth::Caller;
use super::store::{ObjectType, Selection};
use super::{HubSpotSim, parse_body};

/// Largest page of the list endpoint.
const MAX_LIST_LIMIT: usize = 100;
const DEFAULT_LIST_LIMIT: usize = 10;

/// Query parameters shared by the read endpoints.
#[derive(Default)]
pub struct ReadParams {
    /// `properties=a,b` or `properties=a&properties=b`.
    pub properties: Option<Vec<String>>,
    pub id_property: Option<String>,
    pub archived: bool,
    pub limit: Option<usize>,
    pub after: Option<String>,
}

impl ReadParams {
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut p = ReadParams::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "properties" => p.properties.get_or_insert_with(Vec::new).extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                ),
                "idProperty" => p.id_property = Some(v.into_owned()),
                "archived" => p.archived = v == "true",
                "limit" => {
                    p.limit =
                        Some(v.parse().map_err(|_| {
                            ApiError::validation(format!("Unable to parse limit: {v}"))
                        })?)
                }
                "after" => p.after = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(p)
    }

    pub fn selection(&self) -> Selection<'_> {
        match &self.properties {
            Some(p) => Selection::Only(p),
            None => Selection::Default,
        }
    }
}

pub fn object_type(name: &str) -> Result<ObjectType, ApiError> {
    ObjectType::from_path(name).ok_or_else(|| ApiError::unknown_object(name))
}

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    properties: Map<String, Value>,
}

/// `POST /crm/v3/objects/{type}` → 201 `SimplePublicObject`.
pub async fn create(
    State(sim): State<HubSpotSim>,
    Path(object): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ty = object_type(&object)?;
    let input: Input = parse_body(&body)?;
    let applied = sim
        .store()
        .create(ty, &input.properties)
        .map_err(|e| ApiError::from_write(ty, &e))?;
    sim.record(&caller, &applied, Some(&input.properties));
    Ok((
        StatusCode::CREATED,
        Json(applied.record.to_json(ty, Selection::All)),
    )
        .into_response())
}

/// `GET /crm/v3/objects/{type}/{id}`.
pub async fn get_one(
    State(sim): State<HubSpotSim>,
    Path((object, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let ty = object_type(&object)?;
    let params = ReadParams::parse(query.as_deref())?;
    let rec = sim
        .store()
        .get(ty, &id, params.id_property.as_deref(), params.archived)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(rec.to_json(ty, params.selection())).into_response())
}

/// `PATCH /crm/v3/objects/{type}/{id}` → 200 `SimplePublicObject`.
pub async fn update(
    State(sim): State<HubSpotSim>,
    Path((object, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ty = object_type(&object)?;
    let params = ReadParams::parse(query.as_deref())?;
    let input: Input = parse_body(&body)?;
    let applied = sim
        .store()
        .update(ty, &id, params.id_property.as_deref(), &input.properties)
        .map_err(|e| ApiError::from_write(ty, &e))?;
    sim.record(&caller, &applied, Some(&input.properties));
    Ok(Json(applied.record.to_json(ty, Selection::All)).into_response())
}

/// `DELETE /crm/v3/objects/{type}/{id}` → 204, whether or not it existed.
pub async fn archive(
    State(sim): State<HubSpotSim>,
    Path((object, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let ty = object_type(&object)?;
    if let Some(applied) = sim.store().archive(ty, &id) {
        sim.record(&caller, &applied, None);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /crm/v3/objects/{type}?limit=&after=&properties=&archived=`.
pub async fn list(
    State(sim): State<HubSpotSim>,
    Path(object): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let ty = object_type(&object)?;
    let params = ReadParams::parse(query.as_deref())?;
    let limit = params
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    let after = match params.after.as_deref() {
        None | Some("") => 0,
        Some(a) => a
            .parse::<u64>()
            .map_err(|_| ApiError::validation(format!("Invalid after cursor: {a}")))?
            .saturating_sub(1),
    };
    let (page, more) = sim.store().page(ty, after, limit, params.archived);
    let results: Vec<Value> = page
        .iter()
        .map(|r| r.to_json(ty, params.selection()))
        .collect();
    let mut out = json!({ "results": results });
    if more && let Some(last) = page.last() {
        let next = (last.id + 1).to_string();
        out["paging"] = json!({
            "next": {
                "after": next,
                "link": format!("?after={next}"),
            }
        });
    }
    Ok(Json(out).into_response())
}
