//! Read access to one object type for the search handler: records by id
//! range or by last-modified range (the store's index), under the table's
//! read lock.

use std::ops::RangeInclusive;
use std::sync::RwLockReadGuard;

use super::Record;
use super::table::{ModifiedKey, Table};

/// One type's records under the read lock, for queries: every record in id
/// order, and live ones by last-modified date.
pub struct TableView<'a>(pub(super) RwLockReadGuard<'a, Table>);

impl TableView<'_> {
    /// Every record, archived ones included, in id order.
    pub fn all(&self) -> impl DoubleEndedIterator<Item = &Record> {
        self.0.records.values()
    }

    /// Records (archived ones included) whose id is in `ids`, in id order.
    pub fn by_id(&self, ids: RangeInclusive<u64>) -> impl DoubleEndedIterator<Item = &Record> {
        let (lo, hi) = ids.into_inner();
        (lo <= hi)
            .then(|| self.0.records.range(lo..=hi))
            .into_iter()
            .flatten()
            .map(|(_, r)| r)
    }

    /// Live records last modified within `ms`, by date then [`tie_rank`](super::table::tie_rank).
    pub fn by_modified(&self, ms: RangeInclusive<i64>) -> impl DoubleEndedIterator<Item = &Record> {
        self.modified_keys(ms)
            .map(|(_, _, id)| self.0.records.get(id).expect("indexed record exists"))
    }

    /// How many live records were last modified within `ms`.
    pub fn count_modified(&self, ms: RangeInclusive<i64>) -> usize {
        self.modified_keys(ms).count()
    }

    fn modified_keys(
        &self,
        ms: RangeInclusive<i64>,
    ) -> impl DoubleEndedIterator<Item = &ModifiedKey> {
        let (lo, hi) = ms.into_inner();
        let range = (lo <= hi).then_some((lo, 0, 0)..=(hi, u64::MAX, u64::MAX));
        range.into_iter().flat_map(|r| self.0.by_modified.range(r))
    }
}
