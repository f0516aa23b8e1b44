//! Handover: what the processor's consumers do when their group moves
//! partitions (a process joined or left). Before partitions are revoked,
//! the work this process started is finished and committed, with the
//! generation it was taken in, which stays valid until the group rejoins.
//! Messages taken but not started are dropped: the next owner reads them
//! again from the committed offsets. When partitions are assigned, cached
//! states are forgotten: another owner may have changed those records.
//!
//! ```text
//!  rebalance ──revoke──► wait (bounded) until every part started is committed ──► rejoin
//!            ──────────► messages waiting in the lanes, or taken in a batch before it: dropped
//!            ──assign──► cached states forgotten
//! ```
//!
//! Without this, the parts under way would commit with a fenced
//! generation: their transactions would abort (their sync events lost, the
//! records re-run as `skipped`) and the session would restart, leaving and
//! joining the group again, which moves partitions once more.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};

use super::state::StateStore;

/// Longest a revoke waits for the started work to commit. Past it, that
/// work commits with a fenced generation and its session restarts.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(15);

/// Metric: revokes, by whether the started work was committed in time
/// (`drained`) or not (`timed_out`).
pub const HANDOVERS_TOTAL: &str = "extsync_processor_handovers_total";

/// Registers the handover's metric description.
pub fn describe_metrics() {
    metrics::describe_counter!(
        HANDOVERS_TOTAL,
        "Partitions revoked from a processor loop, by whether the work it had started was committed first"
    );
}

/// The work started and not committed yet, and the revokes so far.
#[derive(Default)]
pub struct Handover {
    in_flight: Mutex<usize>,
    idle: Condvar,
    revokes: AtomicU64,
}

impl Handover {
    /// Counts a part as started until the returned guard is dropped, once
    /// its batch is committed (or given up).
    pub fn start(self: &Arc<Self>) -> InFlight {
        *self.in_flight.lock().expect("in-flight count") += 1;
        InFlight(self.clone())
    }

    /// Revokes so far: messages taken before the latest one are stale.
    pub fn revokes(&self) -> u64 {
        self.revokes.load(Ordering::Acquire)
    }

    /// Waits until nothing started is left uncommitted, at most `within`;
    /// whether it got there.
    fn drain(&self, within: Duration) -> bool {
        let wait = || {
            let count = self.in_flight.lock().expect("in-flight count");
            let (count, _) = self
                .idle
                .wait_timeout_while(count, within, |n| *n > 0)
                .expect("in-flight count");
            *count == 0
        };
        if *self.in_flight.lock().expect("in-flight count") == 0 {
            return true;
        }
        // The callback runs inside the consumer's poll, on an async worker:
        // the parts and the committer must go on meanwhile.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// Partitions are about to go: drops what is taken and not started (see
    /// [`Handover::revokes`]) and waits for what is started.
    fn revoke(&self) {
        self.revokes.fetch_add(1, Ordering::AcqRel);
        let t0 = std::time::Instant::now();
        let drained = self.drain(HANDOVER_WAIT);
        let outcome = if drained { "drained" } else { "timed_out" };
        metrics::counter!(HANDOVERS_TOTAL, "outcome" => outcome).increment(1);
        if drained {
            tracing::debug!(waited = ?t0.elapsed(), "partitions handed over with their started work committed");
        } else {
            tracing::warn!(waited = ?t0.elapsed(), "partitions revoked before the started work was committed; it will be fenced and run again");
        }
    }
}

/// A started part, until its batch is committed.
pub struct InFlight(Arc<Handover>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock().expect("in-flight count");
        *n -= 1;
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// The loops' consumer context (see the module doc).
#[derive(Default)]
pub struct Ownership {
    pub state: Option<StateStore>,
    pub handover: Arc<Handover>,
}

impl ClientContext for Ownership {}

impl ConsumerContext for Ownership {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            self.handover.revoke();
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Some(state), Rebalance::Assign(_)) = (&self.state, rebalance) {
            state.forget_cached();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoke_waits_for_started_work_and_marks_what_was_taken_before() {
        let handover = Arc::new(Handover::default());
        let started = handover.start();
        let before = handover.revokes();
        let finishing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(started);
        });
        let t0 = std::time::Instant::now();
        handover.revoke();
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "waited for the part"
        );
        assert_ne!(handover.revokes(), before);
        finishing.await.unwrap();
        assert!(handover.drain(Duration::ZERO), "nothing left in flight");
    }

    #[test]
    fn a_part_that_never_commits_holds_a_revoke_only_so_long() {
        let handover = Arc::new(Handover::default());
        let _stuck = handover.start();
        assert!(!handover.drain(Duration::from_millis(50)));
    }
}
