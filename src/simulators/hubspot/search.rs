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

use std::cmp::Ordering;
use std::ops::RangeInclusive;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::objects::object_type;
use super::store::{ObjectType, Record, Selection, TableView, parse_millis, tie_rank};
use super::{HubSpotSim, parse_body};

/// Results one query can page through.
pub const MAX_RESULTS: usize = 10_000;
pub const MAX_LIMIT: usize = 200;
const DEFAULT_LIMIT: usize = 10;
const MAX_FILTER_GROUPS: usize = 5;
const MAX_FILTERS_PER_GROUP: usize = 10;
const MAX_FILTERS: usize = 25;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    property_name: String,
    operator: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    high_value: Option<Value>,
    #[serde(default)]
    values: Option<Vec<Value>>,
    /// `value`, `highValue` and `values` parsed once per request.
    #[serde(skip)]
    want: Option<Key>,
    #[serde(skip)]
    high: Option<Key>,
    #[serde(skip)]
    keys: Vec<Key>,
    /// The candidate range already enforces this filter.
    #[serde(skip)]
    covered: bool,
}

#[derive(Deserialize)]
struct FilterGroup {
    #[serde(default)]
    filters: Vec<Filter>,
}

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

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A comparable form of a property value.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Key {
    Num(f64),
    Str(String),
}

fn key_of(name: &str, raw: &str) -> Key {
    if ObjectType::is_date_property(name)
        && let Some(ms) = parse_millis(raw)
    {
        return Key::Num(ms as f64);
    }
    match raw.parse::<f64>() {
        Ok(n) if n.is_finite() => Key::Num(n),
        _ => Key::Str(raw.to_lowercase()),
    }
}

fn record_key(ty: ObjectType, rec: &Record, name: &str) -> Option<Key> {
    if let Some(ms) = rec.property_millis(ty, name)
        && (ObjectType::is_date_property(name) || name == "hs_object_id")
    {
        return Some(Key::Num(ms as f64));
    }
    rec.property(ty, name).map(|v| key_of(name, &v))
}

fn compare(a: &Key, b: &Key) -> Option<Ordering> {
    match (a, b) {
        (Key::Num(x), Key::Num(y)) => x.partial_cmp(y),
        (Key::Str(x), Key::Str(y)) => Some(x.cmp(y)),
        (Key::Num(x), Key::Str(y)) => Some(x.to_string().cmp(y)),
        (Key::Str(x), Key::Num(y)) => Some(x.cmp(&y.to_string())),
    }
}

impl Filter {
    fn check(&self) -> Result<(), ApiError> {
        let needs_value = matches!(
            self.operator.as_str(),
            "EQ" | "NEQ" | "GT" | "GTE" | "LT" | "LTE" | "CONTAINS_TOKEN" | "NOT_CONTAINS_TOKEN"
        );
        let known = needs_value
            || matches!(
                self.operator.as_str(),
                "BETWEEN" | "IN" | "NOT_IN" | "HAS_PROPERTY" | "NOT_HAS_PROPERTY"
            );
        if !known {
            return Err(ApiError::validation(format!(
                "Invalid operator: {}",
                self.operator
            )));
        }
        if needs_value && self.value.is_none() {
            return Err(ApiError::validation(format!(
                "Filter on {} with operator {} needs a value",
                self.property_name, self.operator
            )));
        }
        if self.operator == "BETWEEN" && (self.value.is_none() || self.high_value.is_none()) {
            return Err(ApiError::validation("BETWEEN needs value and highValue"));
        }
        if matches!(self.operator.as_str(), "IN" | "NOT_IN") && self.values.is_none() {
            return Err(ApiError::validation(format!(
                "{} needs values",
                self.operator
            )));
        }
        Ok(())
    }

    /// Parses the filter's values once, before the scan.
    fn prepare(&mut self) {
        let name = self.property_name.as_str();
        self.want = self.value.as_ref().map(|v| key_of(name, &text(v)));
        self.high = self.high_value.as_ref().map(|v| key_of(name, &text(v)));
        self.keys = self
            .values
            .iter()
            .flatten()
            .map(|v| key_of(name, &text(v)))
            .collect();
    }

    fn matches(&self, ty: ObjectType, rec: &Record) -> bool {
        let name = self.property_name.as_str();
        let actual = record_key(ty, rec, name);
        let cmp =
            |want: &Option<Key>| -> Option<Ordering> { compare(actual.as_ref()?, want.as_ref()?) };
        let in_values = || {
            let Some(a) = actual.as_ref() else {
                return false;
            };
            self.keys
                .iter()
                .any(|k| compare(a, k) == Some(Ordering::Equal))
        };
        match self.operator.as_str() {
            "EQ" => cmp(&self.want) == Some(Ordering::Equal),
            "NEQ" => cmp(&self.want) != Some(Ordering::Equal),
            "GT" => cmp(&self.want) == Some(Ordering::Greater),
            "GTE" => matches!(cmp(&self.want), Some(Ordering::Greater | Ordering::Equal)),
            "LT" => cmp(&self.want) == Some(Ordering::Less),
            "LTE" => matches!(cmp(&self.want), Some(Ordering::Less | Ordering::Equal)),
            "BETWEEN" => {
                matches!(cmp(&self.want), Some(Ordering::Greater | Ordering::Equal))
                    && matches!(cmp(&self.high), Some(Ordering::Less | Ordering::Equal))
            }
            "IN" => in_values(),
            "NOT_IN" => !in_values(),
            "HAS_PROPERTY" => actual.is_some(),
            "NOT_HAS_PROPERTY" => actual.is_none(),
            "CONTAINS_TOKEN" | "NOT_CONTAINS_TOKEN" => {
                let token = text(self.value.as_ref().unwrap_or(&Value::Null))
                    .trim_matches('*')
                    .to_lowercase();
                let found = rec
                    .property(ty, name)
                    .is_some_and(|v| v.to_lowercase().contains(&token));
                found == (self.operator == "CONTAINS_TOKEN")
            }
            _ => false,
        }
    }
}

/// A matching record: its sort key, its tie-break rank, the record.
type Hit<'a> = (Option<Key>, u64, &'a Record);

/// Where a query's candidate records come from.
#[derive(Debug)]
enum Source {
    All,
    /// Live records last modified in this range (epoch ms).
    Modified(RangeInclusive<i64>),
    /// Records whose id is in this range.
    Ids(RangeInclusive<u64>),
}

/// The last-modified date property of `ty`, as search sorts and filters it.
fn is_modified(ty: ObjectType, name: &str) -> bool {
    name == "hs_lastmodifieddate" || (ty == ObjectType::Contacts && name == "lastmodifieddate")
}

/// The integers `[lo, hi]` a filter accepts, when it is a range on whole numbers.
fn int_bounds(f: &Filter) -> Option<(i64, i64)> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let int = |k: &Option<Key>| match k {
        Some(Key::Num(x)) if x.fract() == 0.0 && x.abs() < EXACT => Some(*x as i64),
        _ => None,
    };
    match f.operator.as_str() {
        "EQ" => int(&f.want).map(|x| (x, x)),
        "GT" => int(&f.want).map(|x| (x + 1, i64::MAX)),
        "GTE" => int(&f.want).map(|x| (x, i64::MAX)),
        "LT" => int(&f.want).map(|x| (i64::MIN, x - 1)),
        "LTE" => int(&f.want).map(|x| (i64::MIN, x)),
        "BETWEEN" => Some((int(&f.want)?, int(&f.high)?)),
        _ => None,
    }
}

/// Picks the candidate range of a single filter group and marks the
/// filters that range enforces; several groups (an OR) scan everything.
fn plan(ty: ObjectType, groups: &mut [FilterGroup]) -> Source {
    let [group] = groups else {
        return Source::All;
    };
    let narrow = |filters: &mut [Filter], indexed: &dyn Fn(&str) -> bool| {
        let mut range: Option<(i64, i64)> = None;
        for f in filters.iter_mut().filter(|f| indexed(&f.property_name)) {
            if let Some((lo, hi)) = int_bounds(f) {
                let (a, b) = range.unwrap_or((i64::MIN, i64::MAX));
                range = Some((a.max(lo), b.min(hi)));
                f.covered = true;
            }
        }
        range
    };
    if let Some((lo, hi)) = narrow(&mut group.filters, &|p| is_modified(ty, p)) {
        return Source::Modified(lo..=hi);
    }
    if let Some((lo, hi)) = narrow(&mut group.filters, &|p| p == "hs_object_id") {
        // Ids are positive: a negative upper bound leaves nothing to look at.
        let lo = u64::try_from(lo).unwrap_or(0).max(1);
        let hi = u64::try_from(hi).unwrap_or(0);
        return Source::Ids(lo..=hi);
    }
    Source::All
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

/// A checked search: where its candidates come from, the filters left to
/// apply, the free-text query and the first sorting rule.
struct Search<'r> {
    ty: ObjectType,
    source: Source,
    groups: &'r [FilterGroup],
    /// The `query` text, lowercased.
    query: Option<String>,
    sort: Option<&'r Sort>,
    descending: bool,
}

impl<'r> Search<'r> {
    fn new(ty: ObjectType, source: Source, req: &'r SearchRequest) -> Self {
        let sort = req.sorts.first();
        let descending = sort
            .and_then(|s| s.direction.as_deref())
            .is_some_and(|d| d.eq_ignore_ascii_case("DESCENDING"));
        Search {
            ty,
            source,
            groups: &req.filter_groups,
            query: req.query.as_deref().map(str::to_lowercase),
            sort,
            descending,
        }
    }

    /// The number of matches and the first `wanted` of them, in order.
    fn find<'v>(&self, view: &'v TableView<'_>, wanted: usize) -> (usize, Vec<&'v Record>) {
        let walked = if self.filtered() || self.query.is_some() {
            None
        } else {
            self.walk_index(view, wanted)
        };
        match walked {
            Some(found) => found,
            None => self.scan(view, wanted),
        }
    }

    /// Whether some filter is not enforced by the candidate range.
    fn filtered(&self) -> bool {
        !self
            .groups
            .iter()
            .all(|g| g.filters.iter().all(|f| f.covered))
    }

    /// Reads a page straight off an index, when the sort follows it:
    /// last-modified date, or the id (also when there is no sort).
    fn walk_index<'v>(
        &self,
        view: &'v TableView<'_>,
        wanted: usize,
    ) -> Option<(usize, Vec<&'v Record>)> {
        let (ty, sort, descending) = (self.ty, self.sort, self.descending);
        let by_date = sort.is_some_and(|s| is_modified(ty, &s.property_name));
        let by_id = sort.is_none_or(|s| s.property_name == "hs_object_id");
        match &self.source {
            Source::All | Source::Modified(_) if by_date => {
                let ms = match &self.source {
                    Source::Modified(ms) => ms.clone(),
                    _ => i64::MIN..=i64::MAX,
                };
                let total = view.count_modified(ms.clone());
                let hits = if descending {
                    newest_first(view, ms, wanted)
                } else {
                    view.by_modified(ms).take(wanted).collect()
                };
                Some((total, hits))
            }
            Source::All | Source::Ids(_) if by_id => {
                let ids = match &self.source {
                    Source::Ids(ids) => ids.clone(),
                    _ => 0..=u64::MAX,
                };
                let live = || view.by_id(ids.clone()).filter(|r| !r.archived);
                let total = live().count();
                let hits = if descending {
                    view.by_id(ids.clone())
                        .rev()
                        .filter(|r| !r.archived)
                        .take(wanted)
                        .collect()
                } else {
                    live().take(wanted).collect()
                };
                Some((total, hits))
            }
            _ => None,
        }
    }

    /// Tests every candidate, then orders the first `wanted` matches.
    fn scan<'v>(&self, view: &'v TableView<'_>, wanted: usize) -> (usize, Vec<&'v Record>) {
        let candidates: Box<dyn Iterator<Item = &Record>> = match &self.source {
            Source::All => Box::new(view.all()),
            Source::Modified(ms) => Box::new(view.by_modified(ms.clone())),
            Source::Ids(ids) => Box::new(view.by_id(ids.clone())),
        };
        let mut hits: Vec<Hit<'_>> = candidates
            .filter(|r| !r.archived)
            .filter(|r| self.passes_filters(r))
            .filter(|r| self.matches_query(r))
            .map(|r| {
                let key = self
                    .sort
                    .and_then(|s| record_key(self.ty, r, &s.property_name));
                (key, tie_rank(r.id), r)
            })
            .collect();
        let order = |a: &Hit<'_>, b: &Hit<'_>| self.order(a, b);
        let total = hits.len();
        // Only the first `after + limit` need ordering: select them, then sort those.
        let wanted = wanted.min(total);
        if wanted > 0 && wanted < total {
            hits.select_nth_unstable_by(wanted - 1, order);
            hits.truncate(wanted);
        }
        hits.sort_by(order);
        (total, hits.into_iter().map(|h| h.2).collect())
    }

    /// Whether `r` passes one filter group (the filters the range does not cover).
    fn passes_filters(&self, r: &Record) -> bool {
        self.groups.is_empty()
            || self
                .groups
                .iter()
                .any(|g| g.filters.iter().all(|f| f.covered || f.matches(self.ty, r)))
    }

    /// Whether one of the default properties contains the `query` text.
    fn matches_query(&self, r: &Record) -> bool {
        self.query.as_ref().is_none_or(|q| {
            self.ty.default_properties().iter().any(|p| {
                r.property(self.ty, p)
                    .is_some_and(|v| v.to_lowercase().contains(q.as_str()))
            })
        })
    }

    /// By the sort key (records without the property last), then the tie
    /// rank; by id when there is no sort.
    fn order(&self, a: &Hit<'_>, b: &Hit<'_>) -> Ordering {
        match self.sort {
            Some(_) => {
                let by_key = match (&a.0, &b.0) {
                    (Some(x), Some(y)) => {
                        let o = compare(x, y).unwrap_or(Ordering::Equal);
                        if self.descending { o.reverse() } else { o }
                    }
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                };
                by_key.then(a.1.cmp(&b.1))
            }
            None => a.2.id.cmp(&b.2.id),
        }
    }
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

/// The first `wanted` live records modified within `ms`, newest first;
/// records sharing a millisecond keep their ascending tie order.
fn newest_first<'a>(
    view: &'a TableView<'_>,
    ms: RangeInclusive<i64>,
    wanted: usize,
) -> Vec<&'a Record> {
    let mut out = Vec::with_capacity(wanted);
    let mut run: Vec<&Record> = Vec::new();
    for r in view.by_modified(ms).rev() {
        if run.last().is_some_and(|l| l.updated_ms != r.updated_ms) {
            out.extend(run.drain(..).rev());
            if out.len() >= wanted {
                break;
            }
        }
        run.push(r);
    }
    out.extend(run.drain(..).rev());
    out.truncate(wanted);
    out
}
