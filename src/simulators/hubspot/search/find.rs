//! Search execution: the planned candidates, read off an index when the sort
//! follows it or else tested and ordered, down to the records of a page.

use std::cmp::Ordering;
use std::ops::RangeInclusive;

use super::super::store::{ObjectType, Record, TableView, tie_rank};
use super::filters::{FilterGroup, Key, compare, record_key};
use super::plan::{Source, is_modified};
use super::{SearchRequest, Sort};

/// A matching record: its sort key, its tie-break rank, the record.
type Hit<'a> = (Option<Key>, u64, &'a Record);

/// A checked search: where its candidates come from, the filters left to
/// apply, the free-text query and the first sorting rule.
pub(super) struct Search<'r> {
    ty: ObjectType,
    source: Source,
    groups: &'r [FilterGroup],
    /// The `query` text, lowercased.
    query: Option<String>,
    sort: Option<&'r Sort>,
    descending: bool,
}

impl<'r> Search<'r> {
    pub(super) fn new(ty: ObjectType, source: Source, req: &'r SearchRequest) -> Self {
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
    pub(super) fn find<'v>(
        &self,
        view: &'v TableView<'_>,
        wanted: usize,
    ) -> (usize, Vec<&'v Record>) {
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
