//! Heartbeats and slot-lag metrics: when nothing in the publication changes,
//! a non-transactional logical message gives the stream a position to
//! acknowledge, so the slot advances and WAL does not pile up.
//!
//! ```text
//!  every heartbeatSecs: pg_logical_emit_message(false, 'extsync.heartbeat', '') ──► WAL ──► stream ─► ack
//!                       pg_replication_slots ──► extsync_capture_slot_lag_bytes
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::metrics as m;
use super::producer::Acks;

/// Prefix of heartbeat messages.
pub const PREFIX: &str = "extsync.heartbeat";

/// Writes heartbeats every `every` and refreshes lag gauges until `stop`.
pub async fn run(
    sql: Client,
    slot: String,
    every: Duration,
    acks: Arc<Acks>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sql
            .execute("SELECT pg_logical_emit_message(false, $1, '')", &[&PREFIX])
            .await
        {
            Ok(_) => metrics::counter!(m::HEARTBEATS_TOTAL).increment(1),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        if let Ok(Some(row)) = sql
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::float8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            && let Some(lag) = row.get::<_, Option<f64>>(0)
        {
            metrics::gauge!(m::SLOT_LAG_BYTES).set(lag);
        }
        metrics::gauge!(m::OLDEST_UNACKED_SECONDS)
            .set(acks.oldest_pending_age().map_or(0.0, |d| d.as_secs_f64()));
    }
}
