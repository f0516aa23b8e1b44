//! The store's clock: record timestamps come from it, and tests freeze it
//! through `/__admin/clock` so that many writes share one millisecond.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::Utc;

/// A clock that tests can freeze, so that many writes share one timestamp.
#[derive(Debug)]
pub struct Clock {
    frozen: AtomicI64,
}

const NOT_FROZEN: i64 = i64::MIN;

impl Default for Clock {
    fn default() -> Self {
        Clock {
            frozen: AtomicI64::new(NOT_FROZEN),
        }
    }
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        match self.frozen.load(Ordering::Relaxed) {
            NOT_FROZEN => Utc::now().timestamp_millis(),
            ms => ms,
        }
    }

    /// Freezes record timestamps at `ms`, or lets them run again with `None`.
    pub fn freeze(&self, ms: Option<i64>) {
        self.frozen
            .store(ms.unwrap_or(NOT_FROZEN), Ordering::SeqCst);
    }

    pub fn frozen(&self) -> Option<i64> {
        match self.frozen.load(Ordering::Relaxed) {
            NOT_FROZEN => None,
            ms => Some(ms),
        }
    }
}
