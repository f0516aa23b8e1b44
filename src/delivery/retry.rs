//! How long delivery keeps trying a write that failed for a reason that can
//! pass (`transient`, `rate_limit`): exponential backoff with full jitter,
//! never shorter than the wait the vendor asked for, bounded in attempts and
//! in time.
//!
//! ```text
//!  call ─► transient / rate_limit ─► wait max(retry_after, rand(0, min(cap, base·2^n))) ─► call …
//!                                     └─ attempts or time spent ─► give up: "retry later"
//! ```

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default number of calls for one batch, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Default backoff before the first retry (before jitter).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Default ceiling of one backoff (before jitter).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Default time one batch may spend retrying.
pub const DEFAULT_MAX_ELAPSED: Duration = Duration::from_secs(120);

/// Retry bounds for one batch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls for one batch, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// Backoff ceiling before the first retry; doubles with each retry.
    pub initial_backoff: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
    /// Total time a batch may spend waiting to retry. A vendor wait that
    /// would end past it gives up at once instead of sleeping in vain.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_elapsed: DEFAULT_MAX_ELAPSED,
        }
    }
}

impl RetryPolicy {
    /// Backoff ceiling before retry number `retry` (0 = the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The wait before retry number `retry`: uniformly random up to the
    /// ceiling (full jitter), and at least the vendor's `retry_after`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = self.ceiling(retry).mul_f64(unit_random());
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

/// Retry bookkeeping of one batch: attempts made and when it started.
#[derive(Debug)]
pub(crate) struct Attempts {
    retries: u32,
    started: Instant,
}

impl Attempts {
    pub(crate) fn start() -> Self {
        Attempts {
            retries: 0,
            started: Instant::now(),
        }
    }

    /// The wait before the next retry, or `None` when the policy's attempts
    /// or time are spent (counting the wait itself).
    pub(crate) fn next_delay(
        &mut self,
        policy: &RetryPolicy,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if self.retries + 1 >= policy.max_attempts.max(1) {
            return None;
        }
        let delay = policy.delay(self.retries, retry_after);
        if self.started.elapsed() + delay > policy.max_elapsed {
            return None;
        }
        self.retries += 1;
        Some(delay)
    }
}

/// A number in `[0, 1)`, different on every call; enough for jitter.
fn unit_random() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = std::collections::hash_map::RandomState::new().hash_one(n);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
        };
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(4), Duration::from_secs(1));
        assert_eq!(p.ceiling(40), Duration::from_secs(1));
    }

    #[test]
    fn delay_is_jittered_below_the_ceiling_and_honours_the_vendor_wait() {
        let p = RetryPolicy::default();
        let delays: Vec<Duration> = (0..200).map(|_| p.delay(2, None)).collect();
        assert!(delays.iter().all(|d| *d <= p.ceiling(2)));
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter varies");
        let wait = Duration::from_secs(7);
        assert!((0..50).all(|_| p.delay(0, Some(wait)) >= wait));
    }

    #[test]
    fn attempts_stop_at_the_bounds() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            max_elapsed: Duration::from_secs(5),
        };
        let mut a = Attempts::start();
        assert!(a.next_delay(&p, None).is_some());
        assert!(a.next_delay(&p, None).is_some());
        assert!(a.next_delay(&p, None).is_none(), "three calls in all");
        let mut b = Attempts::start();
        assert!(
            b.next_delay(&p, Some(Duration::from_secs(10))).is_none(),
            "a vendor wait past max_elapsed gives up at once"
        );
    }
}
