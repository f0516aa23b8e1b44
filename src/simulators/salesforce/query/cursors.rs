//! Query results page by page: open cursors behind `nextRecordsUrl`
//! locators, the page size from `Sforce-Query-Options: batchSize`, and the
//! rendering of one page of records for `/query` and `/queryAll`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::super::Shared;
use super::super::store::Store;

/// Open query cursors (`nextRecordsUrl` locators), oldest evicted first.
#[derive(Default)]
pub struct Cursors {
    inner: Mutex<CursorsInner>,
}

#[derive(Default)]
struct CursorsInner {
    next: u64,
    open: HashMap<String, Arc<Cursor>>,
    order: VecDeque<String>,
}

pub(super) struct Cursor {
    pub(super) object: String,
    pub(super) fields: Vec<String>,
    pub(super) ids: Vec<String>,
}

/// Open cursors kept at most; older ones answer `INVALID_QUERY_LOCATOR`.
const MAX_CURSORS: usize = 64;

impl Cursors {
    pub(super) fn open(&self, c: Arc<Cursor>) -> String {
        let mut inner = self.inner.lock().expect("cursors lock");
        inner.next += 1;
        let locator = super::super::store::make_id("01g", inner.next);
        inner.open.insert(locator.clone(), c);
        inner.order.push_back(locator.clone());
        while inner.order.len() > MAX_CURSORS {
            if let Some(old) = inner.order.pop_front() {
                inner.open.remove(&old);
            }
        }
        locator
    }

    pub(super) fn get(&self, locator: &str) -> Option<Arc<Cursor>> {
        self.inner
            .lock()
            .expect("cursors lock")
            .open
            .get(locator)
            .cloned()
    }

    pub(super) fn close(&self, locator: &str) {
        let mut inner = self.inner.lock().expect("cursors lock");
        inner.open.remove(locator);
        inner.order.retain(|l| l != locator);
    }
}

pub(super) fn batch_size(headers: &HeaderMap, default: usize) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| {
            s.split(',')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("batchSize"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        })
        .map(|n| n.clamp(200, 2000))
        .unwrap_or(default)
}

pub(super) fn page(
    sim: &Shared,
    version: &str,
    endpoint: &str,
    locator: &str,
    cursor: &Cursor,
    offset: usize,
    size: usize,
) -> Value {
    let end = (offset + size).min(cursor.ids.len());
    let store = sim.store.lock().expect("store lock");
    let schema = store.schema(&cursor.object).expect("cursor object").clone();
    let records: Vec<Value> = cursor.ids[offset..end]
        .iter()
        .filter_map(|id| {
            store
                .raw(&cursor.object, id)
                .map(|r| Store::render(&schema, r, Some(&cursor.fields), version))
        })
        .collect();
    drop(store);
    let done = end >= cursor.ids.len();
    let mut body = json!({
        "totalSize": cursor.ids.len(),
        "done": done,
        "records": records,
    });
    if done {
        sim.cursors.close(locator);
    } else {
        body["nextRecordsUrl"] = json!(format!(
            "/services/data/{version}/{endpoint}/{locator}-{end}"
        ));
    }
    body
}
