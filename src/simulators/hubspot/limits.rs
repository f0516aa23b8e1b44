//! HubSpot's API limits: a rolling ten-second budget per app, a daily budget
//! per account and a per-second budget for search. Every answer carries the
//! `X-HubSpot-RateLimit-*` headers; a spent budget is a 429 with
//! `errorType: RATE_LIMIT` and the policy that tripped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::errors::{ApiError, correlation_id};

/// Requests per rolling ten seconds (Professional tier: 190).
pub const DEFAULT_TEN_SECONDLY: u32 = 190;
/// Requests per day.
pub const DEFAULT_DAILY: u64 = 650_000;
/// Search requests per second.
pub const DEFAULT_SEARCH_PER_SECOND: u32 = 5;

const INTERVAL: Duration = Duration::from_secs(10);
const SECOND: Duration = Duration::from_secs(1);

/// Budgets, settable through `/__admin/limits`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub ten_secondly: u32,
    pub daily: u64,
    pub search_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            ten_secondly: DEFAULT_TEN_SECONDLY,
            daily: DEFAULT_DAILY,
            search_per_second: DEFAULT_SEARCH_PER_SECOND,
        }
    }
}

impl LimitsConfig {
    /// Budgets no test or benchmark reaches.
    pub fn unlimited() -> Self {
        LimitsConfig {
            ten_secondly: u32::MAX,
            daily: u64::MAX,
            search_per_second: u32::MAX,
        }
    }
}

#[derive(Default)]
struct Bucket {
    window: VecDeque<Instant>,
    searches: VecDeque<Instant>,
    day: i32,
    day_count: u64,
}

/// Request budgets per bucket (app).
#[derive(Default)]
pub struct Limits {
    config: RwLock<LimitsConfig>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// The `X-HubSpot-RateLimit-*` headers of one answer.
pub type LimitHeaders = Vec<(&'static str, String)>;

fn trim(q: &mut VecDeque<Instant>, now: Instant, span: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= span) {
        q.pop_front();
    }
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        Limits {
            config: RwLock::new(config),
            buckets: Mutex::default(),
        }
    }

    pub fn config(&self) -> LimitsConfig {
        *self.config.read().expect("limits lock")
    }

    /// New budgets; spending so far is forgotten.
    pub fn set(&self, config: LimitsConfig) {
        *self.config.write().expect("limits lock") = config;
        self.buckets.lock().expect("limits lock").clear();
    }

    /// Spends one request of `bucket`; the headers to send, or the 429.
    pub fn spend(&self, bucket: &str, search: bool) -> Result<LimitHeaders, ApiError> {
        let cfg = self.config();
        let now = Instant::now();
        let today = Utc::now().num_days_from_ce();
        let mut buckets = self.buckets.lock().expect("limits lock");
        let b = buckets.entry(bucket.to_string()).or_default();
        if b.day != today {
            b.day = today;
            b.day_count = 0;
        }
        trim(&mut b.window, now, INTERVAL);
        trim(&mut b.searches, now, SECOND);
        let secondly = (cfg.ten_secondly / 10).max(1);
        let recent = b
            .window
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < SECOND)
            .count() as u32;
        let policy = if b.day_count >= cfg.daily {
            Some(("DAILY", "You have reached your daily limit."))
        } else if b.window.len() as u64 >= cfg.ten_secondly as u64 {
            Some((
                "TEN_SECONDLY_ROLLING",
                "You have reached your ten_secondly_rolling limit.",
            ))
        } else if search && b.searches.len() as u64 >= cfg.search_per_second as u64 {
            Some(("SECONDLY", "You have reached your secondly limit."))
        } else {
            None
        };
        if policy.is_none() {
            b.window.push_back(now);
            b.day_count += 1;
            if search {
                b.searches.push_back(now);
            }
        }
        let used_now = b.window.len() as u64;
        let headers: LimitHeaders = vec![
            ("x-hubspot-ratelimit-daily", cfg.daily.to_string()),
            (
                "x-hubspot-ratelimit-daily-remaining",
                cfg.daily.saturating_sub(b.day_count).to_string(),
            ),
            (
                "x-hubspot-ratelimit-interval-milliseconds",
                INTERVAL.as_millis().to_string(),
            ),
            ("x-hubspot-ratelimit-max", cfg.ten_secondly.to_string()),
            (
                "x-hubspot-ratelimit-remaining",
                (cfg.ten_secondly as u64)
                    .saturating_sub(used_now)
                    .to_string(),
            ),
            ("x-hubspot-ratelimit-secondly", secondly.to_string()),
            (
                "x-hubspot-ratelimit-secondly-remaining",
                secondly
                    .saturating_sub(recent + u32::from(policy.is_none()))
                    .to_string(),
            ),
        ];
        match policy {
            None => Ok(headers),
            Some((policy, message)) => Err(rate_limited(policy, message, headers)),
        }
    }
}

/// HubSpot's 429 body for `policy`.
pub fn rate_limited(policy: &str, message: &str, headers: LimitHeaders) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        body: json!({
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id(),
            "policyName": policy,
        }),
        headers,
    }
}

/// The 429 of an exhausted budget injected through the shared faults.
pub fn exhausted(config: LimitsConfig) -> ApiError {
    let headers = vec![
        ("x-hubspot-ratelimit-daily", config.daily.to_string()),
        (
            "x-hubspot-ratelimit-daily-remaining",
            config.daily.saturating_sub(1).to_string(),
        ),
        (
            "x-hubspot-ratelimit-interval-milliseconds",
            INTERVAL.as_millis().to_string(),
        ),
        ("x-hubspot-ratelimit-max", config.ten_secondly.to_string()),
        ("x-hubspot-ratelimit-remaining", "0".to_string()),
        (
            "x-hubspot-ratelimit-secondly",
            (config.ten_secondly / 10).max(1).to_string(),
        ),
        ("x-hubspot-ratelimit-secondly-remaining", "0".to_string()),
    ];
    rate_limited(
        "TEN_SECONDLY_ROLLING",
        "You have reached your ten_secondly_rolling limit.",
        headers,
    )
}
