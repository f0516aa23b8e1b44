//! One request budget per integration, shared by ingest reads and delivery
//! writes, so extsync stays inside the vendor's limits instead of learning
//! them from 429s.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};

use crate::config::Provider;

/// A shared rate limiter; cloning shares the budget.
#[derive(Clone)]
pub struct RequestBudget {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl RequestBudget {
    /// `requests` per `period`, allowing bursts of up to `burst`.
    pub fn new(requests: u32, period: Duration, burst: u32) -> Self {
        let requests = NonZeroU32::new(requests.max(1)).expect("non-zero");
        let per_request = period / requests.get();
        let quota = Quota::with_period(per_request.max(Duration::from_nanos(1)))
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("non-zero"));
        Self {
            limiter: Arc::new(DefaultDirectRateLimiter::direct(quota)),
        }
    }

    /// The vendor's documented default limits.
    pub fn for_provider(provider: Provider) -> Self {
        match provider {
            // 100,000 per rolling 24 h (Enterprise); spread evenly, modest bursts.
            Provider::Salesforce => Self::new(100_000, Duration::from_secs(86_400), 25),
            // 100 per 10 s (lowest tier).
            Provider::Hubspot => Self::new(100, Duration::from_secs(10), 10),
            // 500 per minute per company.
            Provider::Quickbooks => Self::new(500, Duration::from_secs(60), 10),
            // Concurrency-bound; 15 in flight ~ a few per second.
            Provider::Netsuite => Self::new(10, Duration::from_secs(1), 5),
            // 60 per minute per tenant.
            Provider::Xero => Self::new(60, Duration::from_secs(60), 5),
        }
    }

    /// A budget that never waits (simulators, benchmarks).
    pub fn unlimited() -> Self {
        Self::new(u32::MAX, Duration::from_secs(1), u32::MAX)
    }

    /// Waits until one request may be sent.
    pub async fn acquire(&self) {
        self.limiter.until_ready().await;
    }
}

impl std::fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBudget")
    }
}
