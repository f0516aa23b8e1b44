//! Delivery's metric names, described once. Emitted per batch call, never
//! per record; labels are integration, object or table, outcome and
//! error_type — never a record id.
//!
//! ```text
//!  external writer ─► extsync_delivery_writes_total{integration,object,outcome}, …_calls_total, …_retries_total
//!  billing writer  ─► extsync_delivery_billing_writes_total{table,outcome}, …_billing_batch_duration_seconds
//! ```

/// External writes finished, by `integration`, `object` and `outcome`
/// (`created`, `updated`, `deleted`, `skipped`, `failed`).
pub const WRITES_TOTAL: &str = "extsync_delivery_writes_total";
/// Failed external writes, by `integration` and `error_type`.
pub const ERRORS_TOTAL: &str = "extsync_delivery_errors_total";
/// Batch calls to a connector, by `integration` and `object`.
pub const CALLS_TOTAL: &str = "extsync_delivery_calls_total";
/// Duration of one batch call, by `integration`.
pub const CALL_DURATION_SECONDS: &str = "extsync_delivery_call_duration_seconds";
/// Retries of a batch call, by `integration` and `error_type`.
pub const RETRIES_TOTAL: &str = "extsync_delivery_retries_total";
/// 1 while an integration's writes are paused (credentials refused), by `integration`.
pub const PAUSED: &str = "extsync_delivery_paused";
/// Billing writes finished, by `table` and `outcome`.
pub const BILLING_WRITES_TOTAL: &str = "extsync_delivery_billing_writes_total";
/// Duration of one billing transaction, commit included.
pub const BILLING_BATCH_DURATION_SECONDS: &str = "extsync_delivery_billing_batch_duration_seconds";

/// Registers descriptions with the recorder.
pub fn describe() {
    metrics::describe_counter!(WRITES_TOTAL, "External writes finished, by outcome");
    metrics::describe_counter!(ERRORS_TOTAL, "Failed external writes, by error_type");
    metrics::describe_counter!(CALLS_TOTAL, "Batch calls to external systems");
    metrics::describe_histogram!(
        CALL_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one batch call to an external system"
    );
    metrics::describe_counter!(RETRIES_TOTAL, "Retried batch calls, by error_type");
    metrics::describe_gauge!(PAUSED, "1 while an integration's writes are paused");
    metrics::describe_counter!(BILLING_WRITES_TOTAL, "Billing writes finished, by outcome");
    metrics::describe_histogram!(
        BILLING_BATCH_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one billing write transaction"
    );
}

/// The label value of an outcome.
pub(crate) fn outcome_label(kind: super::OutcomeKind) -> &'static str {
    match kind {
        super::OutcomeKind::Created => "created",
        super::OutcomeKind::Updated => "updated",
        super::OutcomeKind::Deleted => "deleted",
        super::OutcomeKind::Skipped => "skipped",
        super::OutcomeKind::Failed => "failed",
    }
}
