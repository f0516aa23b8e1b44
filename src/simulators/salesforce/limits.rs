//! The org's API request quota, enforced as Salesforce does: a rolling
//! 24-hour count of API calls, `Sforce-Limit-Info: api-usage=N/M` on every
//! response, and `403 REQUEST_LIMIT_EXCEEDED` (no 429, no Retry-After) once
//! the quota is spent. `/limits` reports it as `DailyApiRequests`.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Shared;

/// Name of the usage header.
pub const LIMIT_INFO: HeaderName = HeaderName::from_static("sforce-limit-info");

const WINDOW_MINUTES: i64 = 24 * 60;

/// Rolling 24-hour request counter in one-minute buckets.
pub struct ApiUsage {
    inner: Mutex<UsageInner>,
}

struct UsageInner {
    limit: u64,
    /// Calls set by the admin surface on top of the counted ones.
    preset: u64,
    buckets: VecDeque<(i64, u64)>,
}

impl UsageInner {
    fn trim(&mut self, minute: i64) {
        while self
            .buckets
            .front()
            .is_some_and(|(m, _)| *m <= minute - WINDOW_MINUTES)
        {
            self.buckets.pop_front();
        }
    }

    fn used(&self) -> u64 {
        self.preset + self.buckets.iter().map(|(_, n)| n).sum::<u64>()
    }
}

fn minute_now() -> i64 {
    chrono::Utc::now().timestamp() / 60
}

impl ApiUsage {
    pub fn new(limit: u64) -> Self {
        ApiUsage {
            inner: Mutex::new(UsageInner {
                limit,
                preset: 0,
                buckets: VecDeque::new(),
            }),
        }
    }

    /// Counts one call; `false` when the quota is already spent.
    pub fn take(&self) -> bool {
        let mut u = self.inner.lock().expect("usage lock");
        let m = minute_now();
        u.trim(m);
        if u.used() >= u.limit {
            return false;
        }
        match u.buckets.back_mut() {
            Some((bm, n)) if *bm == m => *n += 1,
            _ => u.buckets.push_back((m, 1)),
        }
        true
    }

    /// `(used, limit)`.
    pub fn usage(&self) -> (u64, u64) {
        let mut u = self.inner.lock().expect("usage lock");
        u.trim(minute_now());
        (u.used(), u.limit)
    }

    /// Sets the quota and/or the number of calls already used.
    pub fn set(&self, limit: Option<u64>, used: Option<u64>) {
        let mut u = self.inner.lock().expect("usage lock");
        if let Some(l) = limit {
            u.limit = l;
        }
        if let Some(n) = used {
            u.buckets.clear();
            u.preset = n;
        }
    }

    /// The `Sforce-Limit-Info` header value.
    pub fn header(&self) -> HeaderValue {
        let (used, limit) = self.usage();
        HeaderValue::from_str(&format!("api-usage={used}/{limit}")).expect("ascii")
    }
}

/// `GET /services/data/vXX.X/limits`
pub async fn limits(State(sim): State<Shared>) -> Response {
    let (used, max) = sim.usage.usage();
    Json(json!({
        "DailyApiRequests": { "Max": max, "Remaining": max.saturating_sub(used) },
        "ConcurrentAsyncGetReportInstances": { "Max": 200, "Remaining": 200 },
        "DailyStreamingApiEvents": { "Max": 10000, "Remaining": 10000 },
    }))
    .into_response()
}
