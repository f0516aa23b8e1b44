//! Pollers: the catch-up sweep beside webhooks and streams. Each integration
//! and object has one durable `(modified_at, id)` cursor; every sweep reads
//! again from `poll_overlap_secs` before it, so records that share a
//! timestamp or show up late in the system's index are never skipped, and the
//! emitter collapses what was already seen.
//!
//! ```text
//!  cron tick / sweep ──► list_changes(cursor − overlap) ─page─► Emitter ──► Kafka
//!                                 ▲                                 │ acked
//!                                 └── extsync.poll_cursors ◄── advance
//! ```

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::cursor::CursorStore;
use super::emitter::{EmitError, Emitter};
use super::event::ChangeSource;
use super::lease::Lease;
use super::target::IngestTarget;
use crate::config::CronSchedule;
use crate::connectors::record::ChangeOp;
use crate::connectors::{ConnectorError, Cursor};

/// Metric: records read by polls.
pub const POLLED_TOTAL: &str = "extsync_ingest_polled_records_total";
/// Metric: failed sweeps, by integration.
pub const SWEEP_ERRORS_TOTAL: &str = "extsync_ingest_sweep_errors_total";

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("listing changes: {0}")]
    Connector(#[from] ConnectorError),
    #[error(transparent)]
    Emit(#[from] EmitError),
    #[error("polling cursor: {0}")]
    Cursor(#[from] tokio_postgres::Error),
}

/// Polls one object of one integration.
pub struct Poller {
    pub target: Arc<IngestTarget>,
    pub entity: String,
    pub object: String,
    pub cursors: CursorStore,
    pub emitter: Arc<Emitter>,
    pub overlap: Duration,
}

/// Counts of one sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub pages: usize,
    pub read: usize,
    pub emitted: usize,
}

impl Poller {
    /// Reads every change since the stored cursor (minus the overlap), page
    /// by page, advancing the cursor after each page is in Kafka.
    pub async fn sweep(&self) -> Result<SweepStats, PollError> {
        let stored = self
            .cursors
            .load(&self.target.id, &self.object)
            .await?
            .unwrap_or_else(Cursor::start);
        let overlap = chrono::Duration::from_std(self.overlap).unwrap_or_default();
        let since = Cursor {
            modified_at: stored.modified_at - overlap,
            id: String::new(),
        };
        let mut stats = SweepStats::default();
        let mut page: Option<String> = None;
        loop {
            let result = self
                .target
                .connector
                .list_changes(&self.object, &since, page.as_deref())
                .await?;
            stats.pages += 1;
            stats.read += result.records.len();
            let high = result.records.iter().map(Cursor::of).max();
            let changes = result
                .records
                .into_iter()
                .map(|r| {
                    self.target.change_from_record(
                        &self.entity,
                        r,
                        ChangeOp::Update,
                        ChangeSource::Poll,
                        Vec::new(),
                        None,
                    )
                })
                .collect();
            stats.emitted += self.emitter.emit(changes).await?.emitted;
            if let Some(high) = high {
                self.cursors
                    .advance(&self.target.id, &self.object, &high)
                    .await?;
            }
            match result.next_page {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        metrics::counter!(POLLED_TOTAL, "integration" => self.target.id.clone())
            .increment(stats.read as u64);
        Ok(stats)
    }

    /// Sweeps at start, then on every `schedule` tick (or every `every`
    /// without a schedule) until `stop`: the ticks at which this process
    /// holds `lease` (another process sweeps at the others).
    pub async fn run(
        self,
        schedule: Option<CronSchedule>,
        every: Duration,
        lease: Lease,
        stop: CancellationToken,
    ) {
        let cron = schedule.map(|s| s.cron());
        loop {
            let swept = if lease.held().await {
                Some(self.sweep().await)
            } else {
                None
            };
            match swept {
                None => {}
                Some(Ok(s)) => {
                    tracing::debug!(integration = %self.target.id, object = %self.object, read = s.read, emitted = s.emitted, "sweep done")
                }
                Some(Err(e)) => {
                    metrics::counter!(SWEEP_ERRORS_TOTAL, "integration" => self.target.id.clone())
                        .increment(1);
                    tracing::warn!(integration = %self.target.id, object = %self.object, error = %e, "sweep failed; retrying at the next tick");
                }
            }
            let wait = cron
                .as_ref()
                .and_then(|c| c.find_next_occurrence(&Utc::now(), false).ok())
                .and_then(|next| (next - Utc::now()).to_std().ok())
                .unwrap_or(every);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
