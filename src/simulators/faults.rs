//! Fault injection shared by all simulators, driven by tests and demos through
//! `/__admin/faults`: the next N requests fail with a 5xx, every request is
//! delayed, all issued tokens expire now, the rate budget is exhausted, or
//! refresh tokens are refused (as when a user revoked the app's access).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde::{Deserialize, Serialize};

/// Faults to apply to the next requests. Cloning shares them.
#[derive(Clone, Default)]
pub struct Faults(Arc<Inner>);

#[derive(Default)]
struct Inner {
    fail_next: AtomicU32,
    fail_status: AtomicU32,
    latency_ms: AtomicU64,
    expire_tokens: AtomicBool,
    exhaust_limits: AtomicBool,
    refuse_refresh: AtomicBool,
}

/// The admin request body and response: every field is optional on input.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsSnapshot {
    /// Fail this many of the next API requests with `failStatus`.
    #[serde(default)]
    pub fail_next: Option<u32>,
    /// Status of injected failures (default 503).
    #[serde(default)]
    pub fail_status: Option<u16>,
    /// Delay added to every API request, in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Expire every token issued so far.
    #[serde(default)]
    pub expire_tokens: Option<bool>,
    /// Answer every API request with the vendor's rate-limit error.
    #[serde(default)]
    pub exhaust_limits: Option<bool>,
    /// Refuse every `refresh_token` grant with the vendor's answer for a
    /// revoked or expired refresh token, until set back to `false`.
    #[serde(default)]
    pub refuse_refresh: Option<bool>,
}

impl Faults {
    /// Applies the fields present in `s`.
    pub fn set(&self, s: &FaultsSnapshot) {
        if let Some(n) = s.fail_next {
            self.0.fail_next.store(n, Ordering::SeqCst);
        }
        if let Some(st) = s.fail_status {
            self.0.fail_status.store(st as u32, Ordering::SeqCst);
        }
        if let Some(ms) = s.latency_ms {
            self.0.latency_ms.store(ms, Ordering::SeqCst);
        }
        if let Some(e) = s.expire_tokens {
            self.0.expire_tokens.store(e, Ordering::SeqCst);
        }
        if let Some(e) = s.exhaust_limits {
            self.0.exhaust_limits.store(e, Ordering::SeqCst);
        }
        if let Some(r) = s.refuse_refresh {
            self.0.refuse_refresh.store(r, Ordering::SeqCst);
        }
    }

    pub fn snapshot(&self) -> FaultsSnapshot {
        FaultsSnapshot {
            fail_next: Some(self.0.fail_next.load(Ordering::SeqCst)),
            fail_status: Some(self.fail_status()),
            latency_ms: Some(self.0.latency_ms.load(Ordering::SeqCst)),
            expire_tokens: Some(self.0.expire_tokens.load(Ordering::SeqCst)),
            exhaust_limits: Some(self.0.exhaust_limits.load(Ordering::SeqCst)),
            refuse_refresh: Some(self.0.refuse_refresh.load(Ordering::SeqCst)),
        }
    }

    /// Waits the configured latency, then says whether this request must fail
    /// with an injected status (consuming one of `fail_next`).
    pub async fn before_request(&self) -> Option<u16> {
        let ms = self.0.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let took = self
            .0
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        took.then(|| self.fail_status())
    }

    fn fail_status(&self) -> u16 {
        match self.0.fail_status.load(Ordering::Relaxed) {
            0 => 503,
            s => s as u16,
        }
    }

    /// True once after `expireTokens` was set: the simulator then revokes
    /// every token it issued so far.
    pub fn take_expire_tokens(&self) -> bool {
        self.0.expire_tokens.swap(false, Ordering::SeqCst)
    }

    pub fn limits_exhausted(&self) -> bool {
        self.0.exhaust_limits.load(Ordering::Relaxed)
    }

    /// Whether `refresh_token` grants are refused.
    pub fn refresh_refused(&self) -> bool {
        self.0.refuse_refresh.load(Ordering::Relaxed)
    }
}

/// `POST /__admin/faults` (set, returns the current faults) routes over `faults`.
pub fn admin_router<S>(faults: Faults) -> axum::Router<S> {
    axum::Router::new()
        .route("/__admin/faults", post(set_faults).get(get_faults))
        .with_state(faults)
}

async fn set_faults(
    State(f): State<Faults>,
    Json(s): Json<FaultsSnapshot>,
) -> Json<FaultsSnapshot> {
    f.set(&s);
    Json(f.snapshot())
}

async fn get_faults(State(f): State<Faults>) -> Json<FaultsSnapshot> {
    Json(f.snapshot())
}
