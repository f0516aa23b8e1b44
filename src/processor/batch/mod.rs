//! One batch of routed changes through link → map → resolve → deliver →
//! record. Changes of one record are handled in order, parents' changes
//! before their children's; writes are grouped so each integration gets one
//! batched call per phase (parents, then children waiting for their
//! parent's new id). A child whose parent is not linked elsewhere waits for
//! it (bounded), then fails `parent_not_linked` and is retried once the
//! parent is linked ([`super::retry`]). A child whose parent's change is
//! queued on this processor, not started ([`super::queued`]), does not
//! wait: it is deferred (`awaiting_parent`) and retried the same way. Every change considered yields a
//! `sync.record` event: written, skipped (with the reason) or failed.
//!
//! ```text
//!  changes ──expand per entity──► load states, billing rows, candidates   (gather)
//!          ──decide in order────► writes (external, billing), resolutions, events   (plan)
//!          ──deliver────────────► outcomes   (deliver)
//!          ──fold───────────────► states, events, failures   (outcomes, report)
//! ```
//!
//! `Run` holds what one batch has gathered and decided so far; each step
//! above is a file of its own. The reads the steps need (billing rows, match
//! candidates, records found existing) are in `lookups`.

mod deliver;
mod gather;
mod lookups;
mod outcomes;
mod plan;
mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::bookkeeping::{Bookkeeping, Failure};
use super::change::Change;
use super::events::{Counts, SyncEvent};
use super::mapping::{EntityMap, Mappings};
use super::merge::{Parked, Resolution};
use super::queued::Queued;
use super::retry::Requeue;
use super::sinks::{BillingSink, ExternalSink, SinkError};
use super::state::{RecordKey, RecordState, StateStore};
use crate::delivery::{BillingWrite, ExternalWrite, ExternalWriteOp};
use crate::ingest::ExternalChange;
use crate::store::Db;

/// How long a child waits, in total, for its parent to be linked, unless
/// the processor is given another wait.
pub const PARENT_WAIT: Duration = Duration::from_secs(10);
/// Error type of a record whose parent was not linked within the wait; it is
/// retried once the parent is linked.
pub const PARENT_NOT_LINKED: &str = "parent_not_linked";
/// Kind of a record deferred because its parent's change is queued on this
/// processor, not started yet: no error, it is retried once the parent is
/// linked, like a `parent_not_linked` failure.
pub const AWAITING_PARENT: &str = "awaiting_parent";
/// Most unlinked records considered when matching.
pub const MATCH_CANDIDATES: i64 = 10_000;

/// Metric: changes processed, by integration and entity.
pub const PROCESSED_TOTAL: &str = "extsync_processor_changes_total";
/// Metric: conflicts resolved, by integration, entity and winner.
pub const CONFLICTS_TOTAL: &str = "extsync_processor_conflicts_total";
/// Metric: records that failed, by integration, entity and error type.
pub const FAILURES_TOTAL: &str = "extsync_processor_failures_total";

/// Errors that make the whole batch retry.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("processor state: {0}")]
    State(#[from] tokio_postgres::Error),
}

/// A processed batch: the sync events to publish and what to save first.
pub struct Processed {
    pub events: Vec<SyncEvent>,
    pub bookkeeping: Bookkeeping,
}

/// Everything a batch needs.
pub struct Processor {
    pub mappings: Arc<Mappings>,
    pub state: StateStore,
    /// The billing database (rows, candidates) — the same as the state's.
    pub billing: Db,
    /// The connection the billing rows of a batch are read over, beside
    /// the state's saves on `billing`.
    pub reads: Db,
    pub external: HashMap<String, Arc<dyn ExternalSink>>,
    pub billing_sink: Arc<dyn BillingSink>,
    /// How long a child waits, in total, for its parent to be linked.
    pub parent_wait: Duration,
    /// Re-queues records that failed waiting for a link (a child's parent,
    /// or their own once a create found them existing) once it is saved.
    pub requeue: Requeue,
    /// Primary keys of the billing tables, read once per table.
    pub primary_keys: dashmap::DashMap<String, PrimaryKey>,
    /// Records whose changes the lanes hold, not started yet.
    pub queued: Arc<Queued>,
}

/// A billing table's single primary-key column.
#[derive(Debug, Clone)]
pub struct PrimaryKey {
    /// The column, quoted.
    column: String,
    /// Its SQL type, to compare with ids given as text (so its index serves).
    sql_type: String,
}

impl Processor {
    /// Processes `changes` (in order), saves its bookkeeping and returns
    /// the sync events to publish.
    pub async fn process(&self, changes: &[Change]) -> Result<Vec<SyncEvent>, BatchError> {
        let done = self.process_unsaved(changes, &[]).await?;
        self.save(&done.bookkeeping).await?;
        Ok(done.events)
    }

    /// Saves a processed batch's bookkeeping, then re-queues the records
    /// waiting for a link that is saved now (see [`super::retry`]).
    pub async fn save(&self, bookkeeping: &Bookkeeping) -> Result<(), tokio_postgres::Error> {
        bookkeeping
            .save(&self.state, &*self.billing.client().await?)
            .await?;
        if bookkeeping.parents_linked || bookkeeping.failures.iter().any(|f| f.waiting.is_some()) {
            self.requeue.wake();
        }
        self.requeue.run_if_due(&self.billing).await;
        Ok(())
    }

    /// Processes `changes` (in order), taken from the partitions the caller
    /// `holds` (none for a caller outside the lanes). Its states are
    /// visible to the next batch at once; its bookkeeping must be saved,
    /// with [`Processor::save`], before its offsets commit.
    pub async fn process_unsaved(
        &self,
        changes: &[Change],
        holds: &[i32],
    ) -> Result<Processed, BatchError> {
        let t0 = Instant::now();
        let mut run = Run::expand(self, changes, holds).await?;
        run.link().await?;
        let t_link = t0.elapsed();
        run.load().await?;
        let t_load = t0.elapsed();
        run.decide_all().await?;
        let t_decide = t0.elapsed();
        let delivered = run.deliver().await?;
        let t_deliver = t0.elapsed();
        run.fold(&delivered);
        run.report();
        let done = run.finish(&delivered).await;
        tracing::debug!(changes = changes.len(), ?t_link, ?t_load, ?t_decide, ?t_deliver, total = ?t0.elapsed(), "batch processed (times since its start)");
        Ok(done)
    }
}

/// One unit of work: one change for one entity of one integration.
struct Work<'a> {
    entity: &'a EntityMap,
    key: Option<RecordKey>,
    change: &'a Change,
}

/// A decided write waiting for delivery.
struct Pending {
    /// Position of the work that made it.
    seq: usize,
    key: RecordKey,
    before: RecordState,
    external: Option<ExternalWrite>,
    billing: Option<BillingWrite>,
    /// Children wait for this parent key's create.
    waits_for: Option<RecordKey>,
    /// Billing view paths the billing write sets.
    billing_paths: Vec<String>,
}

impl Pending {
    /// Whether it creates the external record.
    fn creates(&self) -> bool {
        self.external
            .as_ref()
            .is_some_and(|x| x.op == ExternalWriteOp::Create)
    }

    /// The fields it would set, on whichever side.
    fn written_fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = self
            .external
            .iter()
            .flat_map(|x| x.fields.keys().cloned())
            .collect();
        fields.extend(self.billing.iter().flat_map(|b| b.columns.keys().cloned()));
        fields
    }
}

/// Unlinked external records of one (integration, entity): id and fields.
type Candidates = Vec<(String, Map<String, Value>)>;
/// Candidate billing ids of a match, with their scores, best first.
type Scored = Vec<(String, f64)>;
/// Current billing rows, by table and billing id, as billing views.
type Views = HashMap<(String, String), Map<String, Value>>;
/// (integration, entity).
type EntityOf = (String, String);

/// One batch on its way: what it gathered, decided and delivered so far.
/// Events and failures carry the position of the work that made them, so
/// that each record's events keep the order of its changes.
struct Run<'a> {
    processor: &'a Processor,
    now: DateTime<Utc>,
    work: Vec<Work<'a>>,
    /// For each unit of work, the record's newer changes from the other side.
    later: Vec<Later<'a>>,
    states: HashMap<RecordKey, RecordState>,
    /// Billing rows external changes merge with, updated by planned writes.
    views: Views,
    /// Records found carrying the billing id of a record to create again.
    existing: HashMap<EntityOf, Candidates>,
    /// External edits not seen yet of records billing changes would update.
    unseen: HashMap<RecordKey, ExternalChange>,
    /// Unlinked external records, read once per entity when a rule matches.
    candidates: HashMap<EntityOf, Candidates>,
    /// Parents not linked when the batch began: linking one may ready a
    /// waiting child.
    unlinked_parents: HashSet<RecordKey>,
    /// Open `manual` conflicts when the batch began.
    parked_before: HashMap<RecordKey, BTreeMap<String, Parked>>,
    /// Parents whose wait ran out in this batch: their other children fail at once.
    gave_up: HashSet<RecordKey>,
    /// The partitions whose messages this batch holds: a parent's change
    /// queued on one of them starts only after the batch.
    holds: &'a [i32],
    counts: BTreeMap<EntityOf, Counts>,
    /// Writes planned so far; [`Run::deliver`] moves them into its [`deliver::Delivered`].
    pending: Vec<Pending>,
    resolutions: Vec<(usize, RecordKey, Option<String>, Resolution)>,
    reviews: Vec<(usize, &'a ExternalChange, Scored)>,
    failures: Vec<(usize, Failure)>,
    /// Retries that wrote nothing: their record's wait ended.
    waits_ended: Vec<(RecordKey, DateTime<Utc>)>,
    events: Vec<(usize, SyncEvent)>,
}

/// The newest change of a record from the other side later in a batch.
#[derive(Clone, Copy, Default)]
struct Later<'a> {
    /// The record's last external change after a billing change.
    external: Option<&'a ExternalChange>,
    /// Commit time of the record's last billing change after an external one.
    billing_at: Option<DateTime<Utc>>,
}

fn key_of(e: &EntityMap, billing_id: &str) -> RecordKey {
    RecordKey {
        integration: e.integration.clone(),
        entity: e.entity.clone(),
        billing_id: billing_id.to_string(),
    }
}

fn entity_of(e: &EntityMap) -> EntityOf {
    (e.integration.clone(), e.entity.clone())
}

fn entity_of_key(key: &RecordKey) -> EntityOf {
    (key.integration.clone(), key.entity.clone())
}

fn dedup<T: Ord + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort();
    v.dedup();
    v
}
