//! `POST /crm/v3/objects/{type}/search`: filter groups (OR of ANDs), one
//! sorting rule, `limit` ≤ 200, `after` offsets and `total`, with HubSpot's
//! cap: no query pages past 10,000 results (a 400). Records that tie on the
//! sort property come back in an order that is stable but unrelated to
//! their ids, as HubSpot promises nothing there either.
//!
//! A single filter group's range filters on the last-modified date (or else
//! on `hs_object_id`) pick the records to look at from the store's indexes;
//! when nothing else filters and the sort follows the index, a page is a
//! range walk, so paging through a portal costs no full scan per page.

mod filters;
mod find;
mod plan;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::objects::object_type;
use super::store::{ObjectType, Record, Selection};
use super::{HubSpotSim, parse_body};
use filters::{FilterGroup, text};
use find::Search;
use plan::plan;

/// Results one query can page through.
pub const MAX_RESULTS: usize = 10_000;

pub const MAX_LIMIT: usize = 200;
const DEFAULT_LIMIT: usize = 10;

const MAX_FILTER_GROUPS: usize = 5;
const MAX_FILTERS_PER_GROUP: usize = 10;

const MAX_FILTERS: usize = 25;
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sort {
    property_name: String,
    #[serde(default)]
    direction: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchRequest {
    #[serde(default)]
    filter_groups: Vec<FilterGroup>,
    #[serde(default)]
    sorts: Vec<Sort>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<Value>,
    #[serde(default)]
    query: Option<String>,
}

/// `POST /crm/v3/objects/{type}/search`.
pub async fn search(
    State(sim): State<HubSpotSim>,
    Path(object): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ty = object_type(&object)?;
    let mut req: SearchRequest = parse_body(&body)?;
    let limit = page_limit(req.limit)?;
    let after = page_start(req.after.as_ref())?;
    check_filter_counts(&req.filter_groups)?;
    prepare_filters(&sim, ty, &mut req.filter_groups)?;
    let source = plan(ty, &mut req.filter_groups);
    let search = Search::new(ty, source, &req);
    let view = sim.store().view(ty);
    let (total, hits) = search.find(&view, after + limit);
    let page = render_page(ty, &hits, after, limit, &req.properties);
    drop(view);
    Ok(Json(search_response(total, page, after, limit)).into_response())
}

/// The requested page size, at most [`MAX_LIMIT`].
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::validation(format!(
            "limit must be less than or equal to {MAX_LIMIT}"
        )));
    }
    Ok(limit)
}

/// The offset `after` names; no page starts past [`MAX_RESULTS`].
fn page_start(after: Option<&Value>) -> Result<usize, ApiError> {
    let after = match after {
        None | Some(Value::Null) => 0,
        Some(v) => text(v)
            .parse::<usize>()
            .map_err(|_| ApiError::validation(format!("Invalid after: {}", text(v))))?,
    };
    if after >= MAX_RESULTS {
        return Err(ApiError::validation(
            "There was a problem with the request.",
        ));
    }
    Ok(after)
}

/// HubSpot's caps on filter groups, filters per group and filters in total.
fn check_filter_counts(groups: &[FilterGroup]) -> Result<(), ApiError> {
    if groups.len() > MAX_FILTER_GROUPS
        || groups
            .iter()
            .any(|g| g.filters.len() > MAX_FILTERS_PER_GROUP)
        || groups.iter().map(|g| g.filters.len()).sum::<usize>() > MAX_FILTERS
    {
        return Err(ApiError::validation(format!(
            "Too many filters: at most {MAX_FILTER_GROUPS} filterGroups, {MAX_FILTERS_PER_GROUP} filters per group and {MAX_FILTERS} in total."
        )));
    }
    Ok(())
}

/// Checks each filter's operator, values and property, and parses its values.
fn prepare_filters(
    sim: &HubSpotSim,
    ty: ObjectType,
    groups: &mut [FilterGroup],
) -> Result<(), ApiError> {
    for f in groups.iter_mut().flat_map(|g| &mut g.filters) {
        f.check()?;
        f.prepare();
        if !sim.store().known_property(ty, &f.property_name) {
            return Err(ApiError::validation(format!(
                "Property \"{}\" does not exist",
                f.property_name
            )));
        }
    }
    Ok(())
}

/// The records of the page, as `SimplePublicObject`s with the requested
/// properties (the type's defaults when none are named).
fn render_page(
    ty: ObjectType,
    hits: &[&Record],
    after: usize,
    limit: usize,
    properties: &[String],
) -> Vec<Value> {
    let sel = if properties.is_empty() {
        Selection::Default
    } else {
        Selection::Only(properties)
    };
    hits.iter()
        .skip(after)
        .take(limit)
        .map(|r| r.to_json(ty, sel))
        .collect()
}

/// The response body: `total`, `results`, and `paging.next` while more remain.
fn search_response(total: usize, page: Vec<Value>, after: usize, limit: usize) -> Value {
    let mut out = json!({ "total": total, "results": page });
    let next = after + limit;
    if next < total {
        out["paging"] = json!({ "next": { "after": next.to_string() } });
    }
    out
}
