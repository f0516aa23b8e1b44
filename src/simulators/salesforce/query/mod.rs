//! SOQL: a parser for the subset connectors and SDK users send
//! (`SELECT f, … | COUNT() FROM obj [WHERE …] [ORDER BY f [ASC|DESC]
//! [NULLS FIRST|LAST], …] [LIMIT n] [OFFSET n]`, with `AND`, `OR`, `NOT`,
//! parentheses, `= != <> < <= > >=`, `IN`, `NOT IN`, `LIKE`, string,
//! number, boolean, `null`, date and datetime literals), its evaluation over
//! the store, and `/query`, `/queryAll` with `nextRecordsUrl` paging.
//!
//! ```text
//!  GET /query?q=… ──parse──► Query ──bind(schema)──► Cond ──scan+sort──► ids (cursor)
//!  GET /query/<locator>-<offset> ──────────────────────────────────────► next page
//! ```
//!
//! Text comparisons ignore case, as SOQL's do; `Id` and references compare
//! byte-wise, and datetimes compare as instants (stored normalized to UTC).

mod condition;
mod cursors;
mod lexer;
mod parser;
mod select;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::errors::ApiError;
use cursors::{Cursor, batch_size, page};

pub use condition::{Bound, Cond, bind};
pub use cursors::Cursors;
pub use parser::{Expr, Literal, OrderKey, Query, parse, parse_condition};
pub use select::select_ids;

#[derive(Deserialize)]
pub struct QueryArgs {
    q: Option<String>,
}

fn run_query(
    sim: &Shared,
    version: &str,
    headers: &HeaderMap,
    soql: &str,
    all: bool,
) -> Result<Value, ApiError> {
    let q = parse(soql).map_err(|e| ApiError::bad_request("MALFORMED_QUERY", e))?;
    let ids = {
        let store = sim.store.lock().expect("store lock");
        select_ids(&store, &q, all)?
    };
    if q.count {
        return Ok(json!({ "totalSize": ids.len(), "done": true, "records": [] }));
    }
    let object = sim
        .store
        .lock()
        .expect("store lock")
        .schema(&q.object)
        .map(|s| s.name.clone())
        .unwrap_or(q.object.clone());
    let cursor = Cursor {
        object,
        fields: q.fields.clone(),
        ids,
    };
    let size = batch_size(headers, sim.config.query_page_size);
    let endpoint = if all { "queryAll" } else { "query" };
    if cursor.ids.len() <= size {
        return Ok(page(sim, version, endpoint, "", &cursor, 0, size));
    }
    let cursor = Arc::new(cursor);
    let locator = sim.cursors.open(cursor.clone());
    Ok(page(sim, version, endpoint, &locator, &cursor, 0, size))
}

fn more(
    sim: &Shared,
    version: &str,
    headers: &HeaderMap,
    locator: &str,
    endpoint: &str,
) -> Result<Value, ApiError> {
    let invalid = || ApiError::bad_request("INVALID_QUERY_LOCATOR", "invalid query locator");
    let (loc, offset) = locator.rsplit_once('-').ok_or_else(invalid)?;
    let offset: usize = offset.parse().map_err(|_| invalid())?;
    let cursor = sim.cursors.get(loc).ok_or_else(invalid)?;
    if offset > cursor.ids.len() {
        return Err(invalid());
    }
    let size = batch_size(headers, sim.config.query_page_size);
    Ok(page(sim, version, endpoint, loc, &cursor, offset, size))
}

fn respond(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /services/data/vXX.X/query?q=…`
pub async fn query(
    State(sim): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    QueryParams(args): QueryParams<QueryArgs>,
) -> Response {
    respond(query_of(&sim, &version, &headers, args, false))
}

/// `GET /services/data/vXX.X/queryAll?q=…` (deleted records included).
pub async fn query_all(
    State(sim): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    QueryParams(args): QueryParams<QueryArgs>,
) -> Response {
    respond(query_of(&sim, &version, &headers, args, true))
}

/// Runs the `q` of a query call; deleted records only with `all`.
fn query_of(
    sim: &Shared,
    version: &str,
    headers: &HeaderMap,
    args: QueryArgs,
    all: bool,
) -> Result<Value, ApiError> {
    match args.q {
        Some(q) => run_query(sim, version, headers, &q, all),
        None => Err(ApiError::bad_request(
            "MALFORMED_QUERY",
            "A query string must be provided as the value of the 'q' parameter",
        )),
    }
}

/// `GET /services/data/vXX.X/query/<locator>-<offset>`
pub async fn query_more(
    State(sim): State<Shared>,
    Path((version, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(more(&sim, &version, &headers, &locator, "query"))
}

/// `GET /services/data/vXX.X/queryAll/<locator>-<offset>`
pub async fn query_all_more(
    State(sim): State<Shared>,
    Path((version, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(more(&sim, &version, &headers, &locator, "queryAll"))
}
