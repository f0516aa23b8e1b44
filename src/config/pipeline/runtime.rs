//! The pipeline's `telemetry`, `ingest` and `processor` sections: metrics,
//! the webhook listener and polling, and the processor's state cache.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DEFAULT_METRICS_ADDRESS, DEFAULT_STATE_CACHE_CAPACITY};
use crate::config::env::EnvString;

/// Metrics and logs.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TelemetryConfig {
    /// Address of the Prometheus `/metrics` endpoint, e.g.
    /// `${EXTSYNC_METRICS_ADDR:-127.0.0.1:9464}`; empty disables it.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: EnvString,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics_address: default_metrics_address(),
        }
    }
}

fn default_metrics_address() -> EnvString {
    EnvString::new(DEFAULT_METRICS_ADDRESS)
}

/// How external changes come in: the webhook receiver and the pollers.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngestConfig {
    /// Listen address of the webhook receiver; empty disables it.
    #[serde(default = "default_webhook_address")]
    pub webhook_address: String,
    /// Public base URL vendors call (signatures cover it), e.g.
    /// `https://sync.example.com`; default: taken from each request's Host header.
    #[serde(default)]
    pub public_url: Option<EnvString>,
    /// Largest webhook body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Seconds before the stored cursor that every poll reads again, so late
    /// or equal timestamps never drop a record.
    #[serde(default = "default_overlap_secs")]
    pub poll_overlap_secs: u64,
    /// Seconds between catch-up sweeps of integrations without a `schedule`.
    #[serde(default = "default_sweep_secs")]
    pub sweep_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            webhook_address: default_webhook_address(),
            public_url: None,
            max_body_bytes: default_max_body_bytes(),
            poll_overlap_secs: default_overlap_secs(),
            sweep_secs: default_sweep_secs(),
        }
    }
}

/// Default listen address of the webhook receiver.
pub const DEFAULT_WEBHOOK_ADDRESS: &str = "127.0.0.1:8088";

fn default_webhook_address() -> String {
    DEFAULT_WEBHOOK_ADDRESS.to_string()
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_overlap_secs() -> u64 {
    60
}
fn default_sweep_secs() -> u64 {
    60
}

/// The processor: linking, mapping, conflict resolution and delivery.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProcessorConfig {
    /// Most records whose sync state (link, merge base, versions) is kept in
    /// memory, least recently used evicted first; the rest is read from
    /// Postgres (schema `extsync`) when needed. At least 1.
    #[serde(default = "default_state_cache_capacity")]
    #[schemars(range(min = 1))]
    pub state_cache_capacity: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            state_cache_capacity: default_state_cache_capacity(),
        }
    }
}

fn default_state_cache_capacity() -> u64 {
    DEFAULT_STATE_CACHE_CAPACITY
}
