//! Telemetry for every stage: `tracing` logs (human or JSON) and a Prometheus
//! `/metrics` endpoint fed by the `metrics` crate.
//!
//! ```text
//!  capture / ingest / processor / delivery ──metrics!──► recorder ──► GET /metrics
//!                                          ──tracing!──► stderr (text | json)
//! ```
//!
//! Metric names follow `extsync_<stage>_<name>_<unit>` and are declared as
//! constants next to the stage that emits them; labels stay low-cardinality
//! (integration, entity, stage, error_type) — never a record id.

use std::net::SocketAddr;

use anyhow::Context;
use clap::ValueEnum;
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global tracing subscriber. The filter comes from `EXTSYNC_LOG`
/// (then `RUST_LOG`), else `default` (e.g. `info`).
pub fn init_logging(format: LogFormat, default: &str) {
    let filter = std::env::var("EXTSYNC_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(EnvFilter::new)
        .unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Starts the Prometheus exporter on `address` (serving `/metrics`). An empty
/// address disables it. Must be called inside a Tokio runtime.
pub fn init_metrics(address: &str) -> anyhow::Result<Option<SocketAddr>> {
    if address.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = address.parse().with_context(|| {
        format!("telemetry.metricsAddress {address:?} is not a host:port address")
    })?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("starting the Prometheus exporter on {addr}"))?;
    metrics::describe_gauge!(BUILD_INFO, "extsync build information (value is always 1)");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(Some(addr))
}

/// Gauge set to 1 with the running version as label.
pub const BUILD_INFO: &str = "extsync_build_info";
