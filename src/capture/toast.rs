//! Unchanged TOAST values: PostgreSQL does not resend a large value that an
//! update left untouched, so capture remembers the last image of large
//! values per row and fills them in.
//!
//! ```text
//!  insert/update/snapshot row ──large values──► ToastCache (bounded by bytes)
//!  update with 'u' cell ──lookup (table, key)──► value │ miss ► "unavailable": [col]
//! ```

use std::sync::Arc;

use moka::sync::Cache;

use super::pgoutput::Cell;
use super::relations::Table;
use super::values;
use crate::config::NumericEncoding;

/// Values shorter than this are never stored out of line, so never cached.
pub const MIN_CACHED_VALUE_BYTES: usize = 1024;
/// Memory bound of the cache.
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;

type Entry = Arc<Vec<(usize, Arc<[u8]>)>>;

/// Last seen large values, keyed by table oid and key JSON.
#[derive(Clone)]
pub struct ToastCache {
    cache: Cache<(u32, Vec<u8>), Entry>,
}

impl Default for ToastCache {
    fn default() -> Self {
        Self::new(CACHE_BYTES)
    }
}

impl ToastCache {
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &(u32, Vec<u8>), v: &Entry| {
                let n = k.1.len() + v.iter().map(|(_, b)| b.len() + 16).sum::<usize>() + 64;
                u32::try_from(n).unwrap_or(u32::MAX)
            })
            .build();
        Self { cache }
    }

    /// The JSON of column `col` as last seen for this row.
    pub fn lookup(&self, table: &Table, key: &[u8], col: usize) -> Option<Arc<[u8]>> {
        let e = self.cache.get(&(table.oid, key.to_vec()))?;
        e.iter().find(|(c, _)| *c == col).map(|(_, v)| v.clone())
    }

    /// Remembers the large values of a row image; `filled` carries values
    /// that were filled from the cache for unchanged cells.
    pub fn remember_with(
        &self,
        table: &Table,
        key: &[u8],
        cells: &[Cell],
        numeric: NumericEncoding,
        filled: &[(usize, Arc<[u8]>)],
    ) {
        let mut entry: Vec<(usize, Arc<[u8]>)> = filled.to_vec();
        for (i, cell) in cells.iter().enumerate() {
            if let Cell::Text(b) = cell
                && b.len() >= MIN_CACHED_VALUE_BYTES
            {
                let mut out = Vec::with_capacity(b.len() + 8);
                values::write_value(&mut out, &table.columns[i].kind, b, numeric);
                entry.push((i, Arc::from(out)));
            }
        }
        let k = (table.oid, key.to_vec());
        if entry.is_empty() {
            self.cache.invalidate(&k);
        } else {
            self.cache.insert(k, Arc::new(entry));
        }
    }

    pub fn remember(&self, table: &Table, key: &[u8], cells: &[Cell], numeric: NumericEncoding) {
        if cells
            .iter()
            .any(|c| matches!(c, Cell::Text(b) if b.len() >= MIN_CACHED_VALUE_BYTES))
        {
            self.remember_with(table, key, cells, numeric, &[]);
        }
    }

    /// Rows remembered (approximate).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn forget(&self, table: &Table, key: &[u8]) {
        self.cache.invalidate(&(table.oid, key.to_vec()));
    }
}
