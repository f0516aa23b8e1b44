//! The HTTP client every connector uses: pooled connections, bounded
//! timeouts, and helpers to read the vendors' wait hints.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Default time allowed for one request, connect included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled client whose requests may take at most `request_timeout`
/// (connect included); a request that takes longer fails as a timeout.
pub fn client(request_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(concat!("extsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("HTTP client builds")
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these vendors).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// A header as a string, if present and visible ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}
