//! Search planning: which store index a query's candidates come from, and
//! which filters that index range already enforces.

use std::ops::RangeInclusive;

use super::super::store::ObjectType;
use super::filters::{Filter, FilterGroup, Key};

/// Where a query's candidate records come from.
#[derive(Debug)]
pub(super) enum Source {
    All,
    /// Live records last modified in this range (epoch ms).
    Modified(RangeInclusive<i64>),
    /// Records whose id is in this range.
    Ids(RangeInclusive<u64>),
}

/// The last-modified date property of `ty`, as search sorts and filters it.
pub(super) fn is_modified(ty: ObjectType, name: &str) -> bool {
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
pub(super) fn plan(ty: ObjectType, groups: &mut [FilterGroup]) -> Source {
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
