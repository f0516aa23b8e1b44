//! Capture's metric names, described once. Emitted per batch on the hot path.
//!
//! ```text
//!  stream ──► extsync_capture_events_total{op}        (rate = events/s)
//!  heartbeat ─► extsync_capture_slot_lag_bytes, extsync_capture_oldest_unacked_seconds
//! ```

/// Change events produced to Kafka, by `op`.
pub const EVENTS_TOTAL: &str = "extsync_capture_events_total";
/// Source transactions seen, by `outcome` (`emitted`, `dropped_own_write`).
pub const TRANSACTIONS_TOTAL: &str = "extsync_capture_transactions_total";
/// Snapshot rows produced (initial and incremental).
pub const SNAPSHOT_ROWS_TOTAL: &str = "extsync_capture_snapshot_rows_total";
/// WAL bytes between the server's current position and the slot's confirmed flush.
pub const SLOT_LAG_BYTES: &str = "extsync_capture_slot_lag_bytes";
/// Age of the oldest source transaction whose events Kafka has not acknowledged.
pub const OLDEST_UNACKED_SECONDS: &str = "extsync_capture_oldest_unacked_seconds";
/// Last LSN acknowledged to PostgreSQL.
pub const ACKED_LSN: &str = "extsync_capture_acked_lsn";
/// Heartbeat messages written.
pub const HEARTBEATS_TOTAL: &str = "extsync_capture_heartbeats_total";
/// Times capture started again after a transient failure.
pub const RESTARTS_TOTAL: &str = "extsync_capture_restarts_total";

/// Registers descriptions with the recorder.
pub fn describe() {
    metrics::describe_counter!(EVENTS_TOTAL, "Change events produced to Kafka, by op");
    metrics::describe_counter!(TRANSACTIONS_TOTAL, "Source transactions seen, by outcome");
    metrics::describe_counter!(SNAPSHOT_ROWS_TOTAL, "Snapshot rows produced");
    metrics::describe_gauge!(
        SLOT_LAG_BYTES,
        metrics::Unit::Bytes,
        "WAL retained by the capture slot"
    );
    metrics::describe_gauge!(
        OLDEST_UNACKED_SECONDS,
        metrics::Unit::Seconds,
        "Age of the oldest unacknowledged commit"
    );
    metrics::describe_gauge!(ACKED_LSN, "LSN acknowledged to PostgreSQL");
    metrics::describe_counter!(HEARTBEATS_TOTAL, "Heartbeat messages written to the WAL");
    metrics::describe_counter!(
        RESTARTS_TOTAL,
        "Times capture resumed from its slot after a transient failure"
    );
}
