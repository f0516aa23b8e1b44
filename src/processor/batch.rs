//! One batch of routed changes through link → map → resolve → deliver →
//! record. Changes of one record are handled in order, parents' changes
//! before their children's; writes are grouped so each integration gets one
//! batched call per phase (parents, then children waiting for their
//! parent's new id). A child whose parent is not linked elsewhere waits for
//! it (bounded), then fails `parent_not_linked` and is retried once the
//! parent is linked ([`super::retry`]). Every change considered yields a
//! `sync.record` event: written, skipped (with the reason) or failed.
//!
//! ```text
//!  changes ──expand per entity──► load states, billing rows, candidates
//!          ──decide in order────► writes (external, billing), resolutions, events
//!          ──deliver────────────► outcomes ──► states, conflicts, counters, failures (Postgres)
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};
use tokio_postgres::Client;

use super::bookkeeping::{
    Bookkeeping, Failure, ParentWait, parked_changes, strategy_name, winner_name,
};
use super::change::{BillingChange, Change};
use super::decide::{self, Decision, Plan};
use super::events::{Counts, Flow, Outcome, SkipReason, SyncEvent};
use super::link::MatchResult;
use super::mapping::{EntityMap, Mappings};
use super::merge::{Base, Parked, Resolution};
use super::record;
use super::retry::Requeue;
use super::sinks::{BillingSink, ExternalSink, SinkError};
use super::state::{RecordKey, RecordState, StateStore};
use super::unseen;
use crate::connectors::ErrorClass;
use crate::delivery::{BillingWrite, DeliveryOutcome, ExternalWrite, ExternalWriteOp, OutcomeKind};
use crate::ingest::{ChangeSource, ExternalChange};

/// Unlinked external records of one (integration, entity): id and fields.
type Candidates = Vec<(String, Map<String, Value>)>;

/// How long a child waits, in total, for its parent to be linked, unless
/// the processor is given another wait.
pub const PARENT_WAIT: Duration = Duration::from_secs(10);
/// Error type of a record whose parent was not linked within the wait; it is
/// retried once the parent is linked.
pub const PARENT_NOT_LINKED: &str = "parent_not_linked";
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
    pub billing: Arc<Client>,
    /// The connection the billing rows of a batch are read over, beside
    /// the state's saves on `billing`.
    pub reads: Arc<Client>,
    pub external: HashMap<String, Arc<dyn ExternalSink>>,
    pub billing_sink: Arc<dyn BillingSink>,
    /// How long a child waits, in total, for its parent to be linked.
    pub parent_wait: Duration,
    /// Re-queues records that failed waiting for a link (a child's parent,
    /// or their own once a create found them existing) once it is saved.
    pub requeue: Requeue,
    /// Primary keys of the billing tables, read once per table.
    pub primary_keys: dashmap::DashMap<String, PrimaryKey>,
}

/// A billing table's single primary-key column.
#[derive(Debug, Clone)]
pub struct PrimaryKey {
    /// The column, quoted.
    column: String,
    /// Its SQL type, to compare with ids given as text (so its index serves).
    sql_type: String,
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

impl Processor {
    /// Processes `changes` (in order), saves its bookkeeping and returns
    /// the sync events to publish.
    pub async fn process(&self, changes: &[Change]) -> Result<Vec<SyncEvent>, BatchError> {
        let done = self.process_unsaved(changes).await?;
        self.save(&done.bookkeeping).await?;
        Ok(done.events)
    }

    /// Saves a processed batch's bookkeeping, then re-queues the records
    /// waiting for a link that is saved now (see [`super::retry`]).
    pub async fn save(&self, bookkeeping: &Bookkeeping) -> Result<(), tokio_postgres::Error> {
        bookkeeping.save(&self.state, &self.billing).await?;
        if bookkeeping.parents_linked || bookkeeping.failures.iter().any(|f| f.waiting.is_some()) {
            self.requeue.wake();
        }
        self.requeue.run_if_due(&self.billing).await;
        Ok(())
    }

    /// Processes `changes` (in order). Its states are visible to the next
    /// batch at once; its bookkeeping must be saved, with
    /// [`Processor::save`], before its offsets commit.
    pub async fn process_unsaved(&self, changes: &[Change]) -> Result<Processed, BatchError> {
        let now = Utc::now();
        let t0 = std::time::Instant::now();
        // Events with the position of the work that made them, so that each
        // record's events keep the order of its changes.
        let mut events: Vec<(usize, SyncEvent)> = Vec::new();
        let mut counts: BTreeMap<(String, String), Counts> = BTreeMap::new();

        // 1. Expand into per-entity work and find the records involved.
        let mut work = Vec::new();
        for change in changes {
            match change {
                Change::Billing(b) => {
                    for e in self
                        .mappings
                        .for_table(&b.schema, &b.table)
                        .filter(|e| e.on_alguna_change)
                    {
                        work.push(Work {
                            entity: e,
                            key: Some(key_of(e, &b.billing_id())),
                            change,
                        });
                    }
                }
                Change::External(x) => {
                    let Some(e) = self.mappings.for_external(&x.integration, &x.entity) else {
                        continue;
                    };
                    if x.source != ChangeSource::Poll && !e.on_webhook {
                        continue;
                    }
                    let linked = self
                        .state
                        .billing_id_of(&x.integration, &x.entity, &x.external_id)
                        .await?;
                    work.push(Work {
                        entity: e,
                        key: linked.map(|id| key_of(e, &id)),
                        change,
                    });
                }
            }
        }
        // Parents before their children, so that a child whose parent is
        // created in this batch finds it; each record keeps its own order.
        if self.mappings.entities.iter().any(|e| e.parent.is_some()) {
            work.sort_by_cached_key(|w| self.depth(w.entity));
        }

        // 2. Unlinked external records: match them to billing rows or index
        // them; one that fits several rows is listed for review.
        let mut reviews: Vec<(usize, &ExternalChange, Scored)> = Vec::new();
        for (seq, w) in work.iter_mut().enumerate() {
            let (None, Change::External(x)) = (&w.key, w.change) else {
                continue;
            };
            match self.link_external(w.entity, x).await? {
                MatchResult::Linked(id) => w.key = Some(key_of(w.entity, &id)),
                MatchResult::Ambiguous(cands) => reviews.push((seq, x, cands)),
                MatchResult::NoMatch => {}
            }
        }

        // 3. Load states and the billing rows external changes merge with.
        let keys: Vec<RecordKey> = dedup(work.iter().filter_map(|w| w.key.clone()));
        let t_link = t0.elapsed();
        // Independent queries, pipelined on their connections.
        let (loaded, mut views) =
            tokio::try_join!(self.state.load_many(&keys), self.load_views(&work))?;
        let mut states: HashMap<RecordKey, RecordState> =
            keys.iter().cloned().zip(loaded).collect();
        // Parents not linked yet: linking one may ready a waiting child.
        let unlinked_parents: HashSet<RecordKey> = states
            .iter()
            .filter(|(k, s)| s.external_id.is_none() && self.is_parent(k))
            .map(|(k, _)| k.clone())
            .collect();
        let existing = self.existing(&work, &states).await?;
        let later = later_changes(&work);
        let unseen = self.unseen(&work, &states, &later).await?;
        let t_load = t0.elapsed();
        let mut candidates: HashMap<(String, String), Candidates> = HashMap::new();

        // 4. Decide, record by record, in order.
        let mut pending: Vec<Pending> = Vec::new();
        let mut resolutions: Vec<(usize, RecordKey, Option<String>, Resolution)> = Vec::new();
        let mut failures: Vec<(usize, Failure)> = Vec::new();
        // Parents whose wait ran out in this batch: their other children fail at once.
        let mut gave_up: HashSet<RecordKey> = HashSet::new();
        let mut waits_ended: Vec<(RecordKey, chrono::DateTime<Utc>)> = Vec::new();
        let mut decided: Vec<(String, chrono::DateTime<Utc>)> = Vec::new();
        let mut decided_external: Vec<(String, chrono::DateTime<Utc>)> = Vec::new();
        let parked_before: HashMap<RecordKey, BTreeMap<String, Parked>> = states
            .iter()
            .filter(|(_, s)| !s.base.parked.is_empty())
            .map(|(k, s)| (k.clone(), s.base.parked.clone()))
            .collect();
        for (seq, w) in work.iter().enumerate() {
            let Some(key) = w.key.clone() else { continue };
            let e = w.entity;
            let state = states.get(&key).cloned().unwrap_or_default();
            let c = counts
                .entry((e.integration.clone(), e.entity.clone()))
                .or_default();
            c.synced += 1;
            metrics::counter!(PROCESSED_TOTAL, "integration" => e.integration.clone(), "entity" => e.entity.clone()).increment(1);
            let flow = match w.change {
                Change::Billing(_) => Flow::ToExternal,
                Change::External(_) => Flow::ToAlguna,
            };
            let mut waits_for = None;
            let mut parent_wait = None;
            let decision = match w.change {
                Change::Billing(b) => {
                    if state.external_id.is_none()
                        && e.matching.is_some()
                        && !candidates.contains_key(&(e.integration.clone(), e.entity.clone()))
                    {
                        let c = self.candidates(e).await?;
                        candidates.insert((e.integration.clone(), e.entity.clone()), c);
                    }
                    let ie = (e.integration.clone(), e.entity.clone());
                    let mut cands = candidates.get(&ie).map(Vec::as_slice).unwrap_or(&[]);
                    // Records found carrying their billing id join the candidates.
                    let with_existing;
                    if state.external_id.is_none()
                        && let Some(found) = existing.get(&ie)
                    {
                        with_existing = [cands, found.as_slice()].concat();
                        cands = &with_existing;
                    }
                    let parent_ext = self.parent_external_id(e, b, &states).await?;
                    // Merged with the record's newest external image of the batch.
                    let newer = later[seq]
                        .external
                        .or_else(|| unseen.get(&key))
                        .and_then(|x| decide::with_external(e, &state, x));
                    let seen = newer.as_ref().unwrap_or(&state);
                    let mut d = decide::billing_change(
                        &self.mappings,
                        e,
                        seen,
                        b,
                        cands,
                        parent_ext.clone(),
                    );
                    if let Plan::NeedsParent { entity, billing_id } = &d.plan {
                        let parent_key = RecordKey {
                            integration: e.integration.clone(),
                            entity: entity.clone(),
                            billing_id: billing_id.clone(),
                        };
                        // The parent is being created in this batch: plan the child
                        // now and fill in the parent's id after phase one.
                        if pending.iter().any(|p| {
                            p.key == parent_key
                                && matches!(
                                    p.external.as_ref().map(|x| &x.op),
                                    Some(ExternalWriteOp::Create)
                                )
                        }) {
                            d = decide::billing_change(
                                &self.mappings,
                                e,
                                seen,
                                b,
                                cands,
                                Some(String::new()),
                            );
                            waits_for = Some(parent_key);
                        } else {
                            // A parent this batch handled (its changes come
                            // first) and left unlinked will not be linked by
                            // waiting; neither will one whose wait ran out.
                            let linked = if states.contains_key(&parent_key)
                                || gave_up.contains(&parent_key)
                            {
                                None
                            } else {
                                self.wait_for_parent(&parent_key).await?
                            };
                            match linked {
                                Some(ext) => {
                                    d = decide::billing_change(
                                        &self.mappings,
                                        e,
                                        seen,
                                        b,
                                        cands,
                                        Some(ext),
                                    )
                                }
                                None => {
                                    d = Decision {
                                        plan: Plan::Failed {
                                            error_type: PARENT_NOT_LINKED,
                                            message: format!(
                                                "parent {}/{} is not linked to a {} record yet",
                                                parent_key.entity,
                                                parent_key.billing_id,
                                                e.integration
                                            ),
                                        },
                                        state: state.clone(),
                                    };
                                    let mut change = b.clone();
                                    // The retry is a change of its own origin.
                                    if change.is_retry() {
                                        change.origin = None;
                                    }
                                    parent_wait = Some(ParentWait {
                                        entity: parent_key.entity.clone(),
                                        billing_id: parent_key.billing_id.clone(),
                                        change,
                                    });
                                    gave_up.insert(parent_key);
                                }
                            }
                        }
                    }
                    d
                }
                Change::External(x) => {
                    let view = views.get(&(e.table.to_string(), key.billing_id.clone()));
                    let mut st = state.clone();
                    if st.external_id.is_none() {
                        st.external_id = Some(x.external_id.clone());
                    }
                    // The row merged with is at least as new as the record's
                    // last billing change of the batch.
                    st.billing_changed_at = st.billing_changed_at.max(later[seq].billing_at);
                    let d =
                        decide::external_change(&self.mappings, e, &st, &key.billing_id, x, view);
                    match decide::with_external(e, &st, x) {
                        // The row holds a billing edit whose change is still on
                        // its way, so its time is unknown: that change settles
                        // `latest_wins` with both times.
                        Some(seen)
                            if later[seq].billing_at.is_none() && latest_wins_conflict(&d.plan) =>
                        {
                            Decision {
                                plan: Plan::Nothing(SkipReason::AwaitsBillingChange),
                                state: seen,
                            }
                        }
                        _ => d,
                    }
                }
            };
            let external_id = decision
                .state
                .external_id
                .clone()
                .or(state.external_id.clone());
            tracing::trace!(
                integration = %e.integration,
                entity = %e.entity,
                billing_id = %key.billing_id,
                change = %w.change.describe(),
                plan = %decision.plan.summary(),
                "decided"
            );
            match decision.plan {
                Plan::Nothing(reason) => {
                    c.skipped += 1;
                    // A retry that writes nothing ends the record's wait.
                    if let Change::Billing(b) = w.change
                        && b.is_retry()
                    {
                        waits_ended.push((key.clone(), b.committed_at));
                    }
                    events.push((
                        seq,
                        record_event(&key, external_id, flow, Outcome::Skipped, Vec::new(), now)
                            .skipped(reason),
                    ));
                }
                Plan::Review(cands) => {
                    let msg = review_message(&cands);
                    failures.push((
                        seq,
                        Failure {
                            key: key.clone(),
                            external_id: None,
                            error_type: "match_review".into(),
                            message: msg,
                            flow,
                            fields: Vec::new(),
                            waiting: None,
                        },
                    ));
                }
                Plan::NeedsParent { .. } => unreachable!("resolved above"),
                Plan::Failed {
                    error_type,
                    message,
                } => failures.push((
                    seq,
                    Failure {
                        key: key.clone(),
                        external_id: external_id.clone(),
                        error_type: error_type.into(),
                        message,
                        flow,
                        fields: Vec::new(),
                        waiting: parent_wait,
                    },
                )),
                Plan::Write {
                    external,
                    billing,
                    resolutions: rs,
                } => {
                    // Later changes of this record in the batch merge with the
                    // row as this write leaves it.
                    if let (Some(cols), Some(view)) = (
                        &billing,
                        views.get_mut(&(e.table.to_string(), key.billing_id.clone())),
                    ) {
                        for (col, v) in cols {
                            view.insert(record::camel_case(col), v.clone());
                        }
                    }
                    for r in rs {
                        resolutions.push((seq, key.clone(), external_id.clone(), r));
                    }
                    // A create already pending for this record absorbs later writes.
                    if let Some(p) = pending.iter_mut().find(|p| {
                        p.key == key
                            && p.external
                                .as_ref()
                                .is_some_and(|x| x.op == ExternalWriteOp::Create)
                    }) {
                        if let (Some(px), Some(nx)) = (p.external.as_mut(), external.as_ref())
                            && !matches!(nx.op, ExternalWriteOp::Delete { .. })
                        {
                            px.fields.extend(nx.fields.clone());
                        }
                        states.insert(key, decision.state);
                        continue;
                    }
                    // The mapped fields living in the columns the write sets.
                    let billing_paths: Vec<String> = billing
                        .as_ref()
                        .map(|cols| {
                            e.fields
                                .iter()
                                .filter(|f| {
                                    let top = f.alguna.segments().next().unwrap_or_default();
                                    cols.contains_key(&record::snake_case(top))
                                })
                                .map(|f| f.alguna.as_str().to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    let billing = billing.map(|columns| BillingWrite {
                        table: e.table.to_string(),
                        key: pk_of(w.change, &key),
                        columns,
                        // An external change was merged with a row at least
                        // as new as the record's last billing change of the batch.
                        as_of: match w.change {
                            Change::External(x) => later[seq]
                                .billing_at
                                .map_or(x.modified_at, |t| t.max(x.modified_at)),
                            Change::Billing(b) => b.committed_at,
                        },
                    });
                    // Row images of this batch predate the write: they are
                    // stale for its fields until the write's time is known.
                    let decided_at = Utc::now();
                    for path in &billing_paths {
                        decided.push((path.clone(), decided_at));
                    }
                    // Likewise, external images modified before now cannot
                    // hold this write's values: later changes of the record
                    // in this batch must not take them for edits.
                    if let Some(x) = &external {
                        for f in e
                            .fields
                            .iter()
                            .filter(|f| x.fields.contains_key(f.external.as_str()))
                        {
                            decided_external.push((f.alguna.as_str().to_string(), decided_at));
                        }
                    }
                    pending.push(Pending {
                        seq,
                        key: key.clone(),
                        before: state.clone(),
                        external,
                        billing,
                        waits_for,
                        billing_paths,
                    });
                }
            }
            let mut next_state = decision.state;
            for (path, at) in decided.drain(..) {
                next_state.billing_written.insert(path, at);
            }
            for (path, at) in decided_external.drain(..) {
                next_state.external_written.insert(path, at);
            }
            states.insert(key, next_state);
        }

        // 5. Deliver: parents first, then children waiting on a parent's create.
        let (first, second): (Vec<usize>, Vec<usize>) =
            (0..pending.len()).partition(|&i| pending[i].waits_for.is_none());
        let mut outcomes: HashMap<usize, DeliveryOutcome> = HashMap::new();
        let creates: Vec<(&RecordKey, &Base)> = pending
            .iter()
            .filter(|p| {
                p.external
                    .as_ref()
                    .is_some_and(|x| x.op == ExternalWriteOp::Create)
            })
            .filter_map(|p| states.get(&p.key).map(|s| (&p.key, &s.base)))
            .collect();
        let t_decide = t0.elapsed();
        // A create must not be marked before an older state of its record lands.
        if creates.iter().any(|(k, _)| self.state.is_unsaved(k)) {
            self.state.settled().await;
        }
        self.state.mark_create_sent(&creates).await?;
        self.deliver_external(&pending, &first, &mut outcomes)
            .await?;
        let t_ext = t0.elapsed();
        let mut ready = Vec::with_capacity(second.len());
        for i in second {
            let parent = pending[i].waits_for.clone().expect("second phase waits");
            let parent_ext = pending
                .iter()
                .position(|p| p.key == parent)
                .and_then(|j| outcomes.get(&j))
                .and_then(|o| o.external_id.clone());
            let Some(ext) = parent_ext else {
                // The parent's create failed: the child waits for it like
                // any child of an unlinked parent.
                let p = &pending[i];
                states.insert(p.key.clone(), p.before.clone());
                failures.push((
                    p.seq,
                    Failure {
                        key: p.key.clone(),
                        external_id: p.before.external_id.clone(),
                        error_type: PARENT_NOT_LINKED.into(),
                        message: format!(
                            "parent {}/{} could not be written to {}",
                            parent.entity, parent.billing_id, parent.integration
                        ),
                        flow: Flow::ToExternal,
                        fields: written_fields(p),
                        waiting: latest_billing_change(&work, &p.key).map(|b| ParentWait {
                            entity: parent.entity.clone(),
                            billing_id: parent.billing_id.clone(),
                            change: b.clone(),
                        }),
                    },
                ));
                continue;
            };
            if let Some(x) = pending[i].external.as_mut()
                && let Some(p) = &self
                    .mappings
                    .for_external(&x.integration, &x.entity)
                    .and_then(|e| e.parent.clone())
            {
                x.fields.insert(p.external.clone(), Value::String(ext));
            }
            ready.push(i);
        }
        // Children left waiting write nothing, on either side.
        let waiting: HashSet<usize> = (0..pending.len())
            .filter(|&i| pending[i].waits_for.is_some() && !ready.contains(&i))
            .collect();
        let pending = pending;
        self.deliver_external(&pending, &ready, &mut outcomes)
            .await?;
        let billing_idx: Vec<usize> = (0..pending.len())
            .filter(|&i| pending[i].billing.is_some() && !waiting.contains(&i))
            .collect();
        let billing_outcomes = if billing_idx.is_empty() {
            Vec::new()
        } else {
            self.billing_sink
                .apply(
                    billing_idx
                        .iter()
                        .map(|&i| pending[i].billing.clone().expect("filtered"))
                        .collect(),
                )
                .await?
        };

        let adoptable = self.adoptable(&pending, &outcomes).await?;

        // 6. Fold outcomes into states and events.
        for (i, p) in pending.iter().enumerate() {
            if waiting.contains(&i) {
                continue;
            }
            let c = counts
                .entry((p.key.integration.clone(), p.key.entity.clone()))
                .or_default();
            if let (Some(x), Some(o)) = (&p.external, outcomes.get(&i)) {
                let st = states.entry(p.key.clone()).or_default();
                match o.kind {
                    OutcomeKind::Failed => {
                        let (class, msg) = o
                            .error
                            .clone()
                            .map(|(c, m)| (c.as_str().to_string(), m))
                            .unwrap_or(("transient".into(), "failed".into()));
                        *st = p.before.clone();
                        // A create refused because the record exists (a unique
                        // field holds its value there) links to that record.
                        // Once the link is saved, the record's latest change
                        // is re-queued and syncs with it, three-way by the
                        // field strategies, as a matched record would.
                        let adopted = adoptable
                            .contains(&i)
                            .then(|| o.external_id.clone())
                            .flatten();
                        let (message, waiting) = match adopted {
                            Some(id) => {
                                st.external_id = Some(id.clone());
                                (
                                    format!("{msg}; linked to {id}, the record syncs with it next"),
                                    latest_billing_change(&work, &p.key).map(|b| ParentWait {
                                        entity: p.key.entity.clone(),
                                        billing_id: p.key.billing_id.clone(),
                                        change: b.clone(),
                                    }),
                                )
                            }
                            None if class == ErrorClass::AlreadyExists.as_str() => (
                                format!("{msg}; that record is linked to another billing record"),
                                None,
                            ),
                            None => (msg, None),
                        };
                        failures.push((
                            p.seq,
                            Failure {
                                key: p.key.clone(),
                                external_id: st.external_id.clone(),
                                error_type: class,
                                message,
                                flow: Flow::ToExternal,
                                fields: x.fields.keys().cloned().collect(),
                                waiting,
                            },
                        ));
                    }
                    kind => {
                        if let Some(id) = &o.external_id {
                            st.external_id = Some(id.clone());
                        }
                        // External images modified before now are stale for these fields.
                        let written_at = Utc::now();
                        if let Some(e) = self
                            .mappings
                            .for_external(&p.key.integration, &p.key.entity)
                        {
                            for f in e
                                .fields
                                .iter()
                                .filter(|f| x.fields.contains_key(f.external.as_str()))
                            {
                                st.external_written
                                    .insert(f.alguna.as_str().to_string(), written_at);
                            }
                        }
                        if o.version.is_some() {
                            st.external_version = o.version.clone();
                        }
                        let mut ev = record_event(
                            &p.key,
                            st.external_id.clone(),
                            Flow::ToExternal,
                            outcome_of(kind),
                            x.fields.keys().cloned().collect(),
                            now,
                        );
                        match kind {
                            OutcomeKind::Created => c.created += 1,
                            OutcomeKind::Updated => c.updated += 1,
                            OutcomeKind::Deleted => c.deleted += 1,
                            _ => {
                                c.skipped += 1;
                                ev = ev.skipped(match x.op {
                                    ExternalWriteOp::Create => SkipReason::AlreadyCreated,
                                    _ => SkipReason::NotFound,
                                });
                            }
                        }
                        events.push((p.seq, ev));
                    }
                }
            }
            if let Some(b) = &p.billing {
                let pos = billing_idx
                    .iter()
                    .position(|&j| j == i)
                    .expect("billing write indexed");
                let o = &billing_outcomes[pos];
                if o.kind == OutcomeKind::Failed {
                    let msg = o.error.clone().map(|e| e.1).unwrap_or_default();
                    states.insert(p.key.clone(), p.before.clone());
                    failures.push((
                        p.seq,
                        Failure {
                            key: p.key.clone(),
                            external_id: p.before.external_id.clone(),
                            error_type: "field_validation".into(),
                            message: msg,
                            flow: Flow::ToAlguna,
                            fields: b.columns.keys().cloned().collect(),
                            waiting: None,
                        },
                    ));
                } else {
                    let mut ev = record_event(
                        &p.key,
                        states.get(&p.key).and_then(|s| s.external_id.clone()),
                        Flow::ToAlguna,
                        outcome_of(o.kind),
                        b.columns.keys().cloned().collect(),
                        now,
                    );
                    if o.kind == OutcomeKind::Updated {
                        c.updated += 1;
                        // Row images captured before this write are stale for these fields.
                        let written_at = Utc::now();
                        if let Some(st) = states.get_mut(&p.key) {
                            for path in p.billing_paths.iter() {
                                st.billing_written.insert(path.clone(), written_at);
                            }
                        }
                    } else {
                        c.skipped += 1;
                        ev = ev.skipped(SkipReason::RowIsNewer);
                    }
                    events.push((p.seq, ev));
                }
            }
        }
        for (seq, key, external_id, r) in &resolutions {
            counts
                .entry((key.integration.clone(), key.entity.clone()))
                .or_default()
                .conflicts += 1;
            let winner = winner_name(r.winner);
            metrics::counter!(CONFLICTS_TOTAL, "integration" => key.integration.clone(), "entity" => key.entity.clone(), "winner" => winner).increment(1);
            events.push((
                *seq,
                SyncEvent::Conflict {
                    integration: key.integration.clone(),
                    entity: key.entity.clone(),
                    billing_id: key.billing_id.clone(),
                    external_id: external_id.clone(),
                    field: r.field.clone(),
                    strategy: strategy_name(r.strategy),
                    winner: winner.into(),
                    alguna_value: r.alguna_value.clone(),
                    external_value: r.external_value.clone(),
                    base_alguna: r.base_alguna.clone(),
                    base_external: r.base_external.clone(),
                    at: now,
                },
            ));
        }
        for (seq, x, cands) in &reviews {
            counts
                .entry((x.integration.clone(), x.entity.clone()))
                .or_default()
                .failed += 1;
            metrics::counter!(FAILURES_TOTAL, "integration" => x.integration.clone(), "entity" => x.entity.clone(), "error_type" => "match_review").increment(1);
            events.push((
                *seq,
                SyncEvent::Error {
                    integration: x.integration.clone(),
                    entity: x.entity.clone(),
                    billing_id: None,
                    external_id: Some(x.external_id.clone()),
                    error_type: "match_review".into(),
                    message: review_message(cands),
                    at: now,
                },
            ));
        }
        for (seq, f) in &failures {
            counts
                .entry((f.key.integration.clone(), f.key.entity.clone()))
                .or_default()
                .failed += 1;
            metrics::counter!(FAILURES_TOTAL, "integration" => f.key.integration.clone(), "entity" => f.key.entity.clone(), "error_type" => f.error_type.clone()).increment(1);
            events.push((
                *seq,
                SyncEvent::Error {
                    integration: f.key.integration.clone(),
                    entity: f.key.entity.clone(),
                    billing_id: Some(f.key.billing_id.clone()),
                    external_id: f.external_id.clone(),
                    error_type: f.error_type.clone(),
                    message: f.message.clone(),
                    at: now,
                },
            ));
            events.push((
                *seq,
                record_event(
                    &f.key,
                    f.external_id.clone(),
                    f.flow,
                    Outcome::Failed,
                    f.fields.clone(),
                    now,
                )
                .failed(&f.error_type, &f.message),
            ));
        }

        // 7. Remember the states; the rest is saved by the caller.
        let touched: Vec<(RecordKey, RecordState)> =
            dedup(work.iter().filter_map(|w| w.key.clone()))
                .into_iter()
                .filter_map(|k| states.remove(&k).map(|s| (k, s)))
                .collect();
        let parents_linked = touched
            .iter()
            .any(|(k, s)| s.external_id.is_some() && unlinked_parents.contains(k));
        let failures: Vec<Failure> = failures.into_iter().map(|(_, f)| f).collect();
        let settled = touched
            .iter()
            .flat_map(|(k, s)| {
                let before = parked_before.get(k).cloned().unwrap_or_default();
                parked_changes(k, &before, &s.base.parked)
            })
            .collect();
        let synced = pending
            .iter()
            .enumerate()
            .filter(|(i, p)| !waiting.contains(i) && !failures.iter().any(|f| f.key == p.key))
            .map(|(_, p)| p.key.clone())
            .collect();
        let bookkeeping = Bookkeeping {
            states: self.state.remember(touched).await,
            counts: counts.clone(),
            resolutions: resolutions
                .into_iter()
                .map(|(_, k, x, r)| (k, x, r))
                .collect(),
            failures,
            synced,
            waits_ended,
            parents_linked,
            settled,
        };
        tracing::debug!(changes = changes.len(), ?t_link, ?t_load, ?t_decide, ?t_ext, total = ?t0.elapsed(), "batch processed (times since its start)");
        // Stable: each record's events stay in the order of its changes.
        events.sort_by_key(|(seq, _)| *seq);
        let mut events: Vec<SyncEvent> = events.into_iter().map(|(_, ev)| ev).collect();
        for ((integration, entity), c) in counts {
            events.push(SyncEvent::Completed {
                integration,
                entity,
                counts: c,
                at: now,
            });
        }
        Ok(Processed {
            events,
            bookkeeping,
        })
    }

    async fn deliver_external(
        &self,
        pending: &[Pending],
        which: &[usize],
        outcomes: &mut HashMap<usize, DeliveryOutcome>,
    ) -> Result<(), BatchError> {
        let mut by_integration: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in which {
            if let Some(x) = &pending[i].external {
                by_integration
                    .entry(x.integration.as_str())
                    .or_default()
                    .push(i);
            }
        }
        for (integration, idx) in by_integration {
            let Some(sink) = self.external.get(integration) else {
                continue;
            };
            let writes = idx
                .iter()
                .map(|&i| pending[i].external.clone().expect("filtered"))
                .collect();
            let result = sink.deliver(writes).await?;
            for (i, o) in idx.into_iter().zip(result) {
                outcomes.insert(i, o);
            }
        }
        Ok(())
    }

    /// Links an unlinked external record to a billing row by the entity's
    /// match rules; otherwise remembers it for billing records to match later.
    async fn link_external(
        &self,
        e: &EntityMap,
        x: &ExternalChange,
    ) -> Result<MatchResult, tokio_postgres::Error> {
        let mut found = MatchResult::NoMatch;
        if let (Some(rule), Some(after)) = (&e.matching, &x.after) {
            let wanted: Vec<Option<String>> = rule
                .fields
                .iter()
                .map(|p| {
                    e.fields
                        .iter()
                        .find(|f| &f.alguna == p)
                        .and_then(|f| record::get(after, &f.external))
                        .and_then(super::link::normalize)
                })
                .collect();
            let rows = self.unlinked_billing_rows(e).await?;
            let cands: Vec<(String, Vec<Option<String>>)> = rows
                .iter()
                .map(|(id, view)| (id.clone(), super::link::values_of(view, rule.fields.iter())))
                .collect();
            found = super::link::best_match(rule, &wanted, &cands);
        }
        match &found {
            MatchResult::Linked(_) => return Ok(found),
            MatchResult::Ambiguous(cands) => self.list_for_review(e, x, cands).await?,
            MatchResult::NoMatch => {}
        }
        if let Some(after) = &x.after {
            self.billing
                .execute(
                    "INSERT INTO extsync.external_index (integration, entity, external_id, fields, modified_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (integration, entity, external_id) DO UPDATE
                        SET fields = excluded.fields, modified_at = excluded.modified_at",
                    &[&e.integration, &e.entity, &x.external_id, &Value::Object(after.clone()), &x.modified_at],
                )
                .await?;
        }
        Ok(found)
    }

    /// Lists an external record that fits several billing rows in
    /// `extsync.match_reviews`, with its candidates, until it is linked.
    async fn list_for_review(
        &self,
        e: &EntityMap,
        x: &ExternalChange,
        cands: &[(String, f64)],
    ) -> Result<(), tokio_postgres::Error> {
        let candidates: Vec<Value> = cands
            .iter()
            .map(|(id, score)| serde_json::json!({ "billing_id": id, "score": score }))
            .collect();
        let fields = Value::Object(x.after.clone().unwrap_or_default());
        self.billing
            .execute(
                "INSERT INTO extsync.match_reviews (integration, entity, external_id, candidates, fields)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (integration, entity, external_id) DO UPDATE
                    SET candidates = excluded.candidates, fields = excluded.fields, last_seen_at = now()",
                &[&e.integration, &e.entity, &x.external_id, &Value::Array(candidates), &fields],
            )
            .await?;
        Ok(())
    }

    /// Billing rows of the entity's table not yet linked for its integration.
    async fn unlinked_billing_rows(
        &self,
        e: &EntityMap,
    ) -> Result<Candidates, tokio_postgres::Error> {
        self.state.settled().await;
        let pk = self.primary_key(e).await?.column;
        let sql = format!(
            "SELECT t.{pk}::text, to_jsonb(t) FROM {table} t
              WHERE NOT EXISTS (SELECT 1 FROM extsync.records r WHERE r.integration = $1 AND r.entity = $2
                                   AND r.billing_id = t.{pk}::text AND r.external_id IS NOT NULL)
              LIMIT {MATCH_CANDIDATES}",
            table = quoted_table(e)
        );
        let rows = self
            .billing
            .query(&sql, &[&e.integration, &e.entity])
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let row: Value = r.get(1);
                (
                    r.get(0),
                    row.as_object()
                        .map(record::billing_view)
                        .unwrap_or_default(),
                )
            })
            .collect())
    }

    /// External edits not seen yet of the linked records that billing
    /// changes of this batch would update (see [`super::unseen`]).
    async fn unseen(
        &self,
        work: &[Work<'_>],
        states: &HashMap<RecordKey, RecordState>,
        later: &[Later<'_>],
    ) -> Result<HashMap<RecordKey, ExternalChange>, BatchError> {
        let records = work.iter().zip(later).filter_map(|(w, later)| {
            let (Change::Billing(b), Some(key)) = (w.change, &w.key) else {
                return None;
            };
            let state = states.get(key)?;
            let wanted = later.external.is_none()
                && !b.is_delete()
                && !b.is_own_write()
                && state.external_id.is_some()
                && !state.deleted
                // A record linked without its image (a create found it
                // existing) is read before its fields are merged.
                && (unseen::can_conflict(w.entity) || state.external_image.is_empty());
            wanted.then_some((w.entity, key, state))
        });
        Ok(unseen::read_back(&self.external, records).await?)
    }

    /// External records that already carry the billing id of a record this
    /// batch would create again (per integration and entity): a create that
    /// landed before a crash is adopted, not written over.
    async fn existing(
        &self,
        work: &[Work<'_>],
        states: &HashMap<RecordKey, RecordState>,
    ) -> Result<HashMap<(String, String), Candidates>, BatchError> {
        let mut wanted: BTreeMap<(String, String), (&EntityMap, Vec<String>)> = BTreeMap::new();
        for w in work {
            let (Change::Billing(b), Some(key), Some(_)) =
                (w.change, &w.key, &w.entity.billing_id_field)
            else {
                continue;
            };
            // Only a record whose create was sent before may exist already.
            if b.is_delete()
                || !states
                    .get(key)
                    .is_some_and(|s| s.create_sent && s.external_id.is_none())
            {
                continue;
            }
            let ids = &mut wanted
                .entry((w.entity.integration.clone(), w.entity.entity.clone()))
                .or_insert((w.entity, Vec::new()))
                .1;
            if !ids.contains(&key.billing_id) {
                ids.push(key.billing_id.clone());
            }
        }
        let mut out = HashMap::new();
        for (ie, (e, ids)) in wanted {
            let (Some(sink), Some(field)) =
                (self.external.get(&e.integration), &e.billing_id_field)
            else {
                continue;
            };
            let found = sink.existing(&e.object, field, &ids).await?;
            if !found.is_empty() {
                out.insert(
                    ie,
                    found
                        .into_iter()
                        .filter(|r| !r.deleted)
                        .map(|r| (r.id, r.fields))
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// Unlinked external records of the entity, for match rules.
    async fn candidates(&self, e: &EntityMap) -> Result<Candidates, tokio_postgres::Error> {
        self.state.settled().await;
        let rows = self
            .billing
            .query(
                "SELECT i.external_id, i.fields FROM extsync.external_index i
                  WHERE i.integration = $1 AND i.entity = $2
                    AND NOT EXISTS (SELECT 1 FROM extsync.records r WHERE r.integration = i.integration
                                      AND r.entity = i.entity AND r.external_id = i.external_id)
                  LIMIT $3",
                &[&e.integration, &e.entity, &MATCH_CANDIDATES],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let v: Value = r.get(1);
                (r.get(0), v.as_object().cloned().unwrap_or_default())
            })
            .collect())
    }

    /// Current billing rows of records that external changes will merge with.
    async fn load_views(
        &self,
        work: &[Work<'_>],
    ) -> Result<HashMap<(String, String), Map<String, Value>>, tokio_postgres::Error> {
        let mut wanted: BTreeMap<String, (&EntityMap, Vec<String>)> = BTreeMap::new();
        for w in work {
            if let (Change::External(_), Some(k)) = (w.change, &w.key) {
                wanted
                    .entry(w.entity.table.to_string())
                    .or_insert((w.entity, Vec::new()))
                    .1
                    .push(k.billing_id.clone());
            }
        }
        let mut out = HashMap::new();
        for (table, (e, ids)) in wanted {
            let PrimaryKey {
                column: pk,
                sql_type,
            } = self.primary_key(e).await?;
            let sql = format!(
                "SELECT t.{pk}::text, to_jsonb(t) FROM {} t WHERE t.{pk} = ANY($1::text[]::{sql_type}[])",
                quoted_table(e)
            );
            for r in self.reads.query(&sql, &[&ids]).await? {
                let row: Value = r.get(1);
                out.insert(
                    (table.clone(), r.get::<_, String>(0)),
                    row.as_object()
                        .map(record::billing_view)
                        .unwrap_or_default(),
                );
            }
        }
        Ok(out)
    }

    /// The single primary-key column of the entity's table.
    async fn primary_key(&self, e: &EntityMap) -> Result<PrimaryKey, tokio_postgres::Error> {
        let table = e.table.to_string();
        if let Some(pk) = self.primary_keys.get(&table) {
            return Ok(pk.clone());
        }
        let row = self
            .billing
            .query_opt(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                  WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND i.indisprimary
                  LIMIT 1",
                &[&e.table.schema(), &e.table.table()],
            )
            .await?;
        let (column, sql_type): (String, String) = row
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or_else(|| ("id".into(), "text".into()));
        let pk = PrimaryKey {
            column: format!("\"{}\"", column.replace('"', "\"\"")),
            sql_type,
        };
        self.primary_keys.insert(table, pk.clone());
        Ok(pk)
    }

    /// The parent's external id, when the entity has a parent and the row
    /// references one that is linked.
    async fn parent_external_id(
        &self,
        e: &EntityMap,
        b: &BillingChange,
        states: &HashMap<RecordKey, RecordState>,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let (Some(p), Some(row)) = (&e.parent, &b.after) else {
            return Ok(None);
        };
        let Some(parent_id) = row.get(&p.alguna).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }) else {
            return Ok(None);
        };
        let key = RecordKey {
            integration: e.integration.clone(),
            entity: p.entity.to_string(),
            billing_id: parent_id,
        };
        if let Some(ext) = states.get(&key).and_then(|s| s.external_id.clone()) {
            return Ok(Some(ext));
        }
        Ok(self
            .state
            .load_many(std::slice::from_ref(&key))
            .await?
            .remove(0)
            .external_id)
    }

    /// How many parents the entity has above it (0 for a top-level entity).
    fn depth(&self, e: &EntityMap) -> usize {
        let mut depth = 0;
        let mut at = e;
        while let Some(p) = &at.parent {
            match self
                .mappings
                .for_external(&at.integration, p.entity.as_str())
            {
                // A cycle in the configuration stops at the number of entities.
                Some(parent) if depth < self.mappings.entities.len() => {
                    depth += 1;
                    at = parent;
                }
                _ => break,
            }
        }
        depth
    }

    /// Whether another entity of the record's integration names its entity as parent.
    fn is_parent(&self, key: &RecordKey) -> bool {
        self.mappings.entities.iter().any(|e| {
            e.integration == key.integration
                && e.parent
                    .as_ref()
                    .is_some_and(|p| p.entity.as_str() == key.entity)
        })
    }

    /// Waits (bounded) for the parent to be linked: by this processor (its
    /// state in memory, saved or not: an earlier batch, or a part running
    /// beside this one) or by another owner (in Postgres).
    async fn wait_for_parent(
        &self,
        key: &RecordKey,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let deadline = tokio::time::Instant::now() + self.parent_wait;
        loop {
            if let Some(linked) = self.state.known(key).await
                && let Some(ext) = &linked.external_id
            {
                return Ok(Some(ext.clone()));
            }
            let row = self
                .billing
                .query_opt(
                    "SELECT external_id FROM extsync.records WHERE integration = $1 AND entity = $2 AND billing_id = $3 AND external_id IS NOT NULL",
                    &[&key.integration, &key.entity, &key.billing_id],
                )
                .await?;
            if let Some(r) = row {
                return Ok(Some(r.get(0)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A `sync.record` event of one record.
fn record_event(
    key: &RecordKey,
    external_id: Option<String>,
    flow: Flow,
    outcome: Outcome,
    fields: Vec<String>,
    at: chrono::DateTime<Utc>,
) -> SyncEvent {
    SyncEvent::Record {
        integration: key.integration.clone(),
        entity: key.entity.clone(),
        billing_id: key.billing_id.clone(),
        external_id,
        flow,
        outcome,
        fields,
        reason: None,
        error_type: None,
        message: None,
        at,
    }
}

impl Processor {
    /// Of the creates refused because their record exists (`already_exists`),
    /// those that link to it: no other billing record is linked to that
    /// record or takes it in this batch (of two refused creates, the first).
    async fn adoptable(
        &self,
        pending: &[Pending],
        outcomes: &HashMap<usize, DeliveryOutcome>,
    ) -> Result<HashSet<usize>, BatchError> {
        let refused = |x: &ExternalWrite, o: &DeliveryOutcome| {
            x.op == ExternalWriteOp::Create
                && o.kind == OutcomeKind::Failed
                && o.error
                    .as_ref()
                    .is_some_and(|(c, _)| *c == ErrorClass::AlreadyExists)
        };
        let mut out = HashSet::new();
        let any_refused = outcomes
            .iter()
            .any(|(&i, o)| pending[i].external.as_ref().is_some_and(|x| refused(x, o)));
        if !any_refused {
            return Ok(out);
        }
        let written = |i: usize| {
            let x = pending[i].external.as_ref()?;
            let o = outcomes.get(&i)?;
            Some((
                x,
                o,
                (
                    x.integration.as_str(),
                    x.entity.as_str(),
                    o.external_id.as_deref()?,
                ),
            ))
        };
        let mut taken: HashSet<(&str, &str, &str)> = (0..pending.len())
            .filter_map(written)
            .filter(|(_, o, _)| o.kind != OutcomeKind::Failed)
            .map(|(_, _, link)| link)
            .collect();
        for (i, p) in pending.iter().enumerate() {
            let Some((x, o, link)) = written(i) else {
                continue;
            };
            if !refused(x, o) || !taken.insert(link) {
                continue;
            }
            let linked = self.state.billing_id_of(link.0, link.1, link.2).await?;
            if linked.is_none_or(|b| b == p.key.billing_id) {
                out.insert(i);
            }
        }
        Ok(out)
    }
}

/// The latest billing change of `key` in the batch (a pending write holds
/// every change of its record in the batch).
fn latest_billing_change<'a>(work: &'a [Work<'a>], key: &RecordKey) -> Option<&'a BillingChange> {
    work.iter()
        .rev()
        .filter(|w| w.key.as_ref() == Some(key))
        .find_map(|w| match w.change {
            Change::Billing(b) => Some(b),
            Change::External(_) => None,
        })
}

/// The fields a pending write would set, on whichever side.
fn written_fields(p: &Pending) -> Vec<String> {
    let mut fields: Vec<String> = p
        .external
        .iter()
        .flat_map(|x| x.fields.keys().cloned())
        .collect();
    fields.extend(p.billing.iter().flat_map(|b| b.columns.keys().cloned()));
    fields
}

/// The newest change of a record from the other side later in a batch.
#[derive(Clone, Copy, Default)]
struct Later<'a> {
    /// The record's last external change after a billing change.
    external: Option<&'a ExternalChange>,
    /// Commit time of the record's last billing change after an external one.
    billing_at: Option<chrono::DateTime<Utc>>,
}

/// [`Later`] for each unit of work, in order.
fn later_changes<'a>(work: &[Work<'a>]) -> Vec<Later<'a>> {
    let mut newest: HashMap<&RecordKey, Later<'a>> = HashMap::new();
    let mut out = vec![Later::default(); work.len()];
    for (i, w) in work.iter().enumerate().rev() {
        let Some(key) = &w.key else { continue };
        let later = newest.entry(key).or_default();
        out[i] = *later;
        match w.change {
            Change::External(x) if later.external.is_none() => later.external = Some(x),
            Change::Billing(b) => later.billing_at = later.billing_at.max(Some(b.committed_at)),
            Change::External(_) => {}
        }
    }
    out
}

/// Whether a plan settles a `latest_wins` conflict.
fn latest_wins_conflict(plan: &Plan) -> bool {
    matches!(plan, Plan::Write { resolutions, .. }
        if resolutions.iter().any(|r| r.strategy == crate::config::Strategy::LatestWins))
}

/// Candidate billing ids of a match, with their scores, best first.
type Scored = Vec<(String, f64)>;

/// What a person reviewing an ambiguous match reads: the candidates and
/// their scores.
fn review_message(cands: &[(String, f64)]) -> String {
    format!(
        "{} possible matches ({}); link it by hand",
        cands.len(),
        cands
            .iter()
            .map(|(id, s)| format!("{id} {s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn key_of(e: &EntityMap, billing_id: &str) -> RecordKey {
    RecordKey {
        integration: e.integration.clone(),
        entity: e.entity.clone(),
        billing_id: billing_id.to_string(),
    }
}

fn pk_of(change: &Change, key: &RecordKey) -> Map<String, Value> {
    match change {
        Change::Billing(b) => b.key.clone(),
        Change::External(_) => {
            let mut m = Map::new();
            m.insert("id".into(), Value::String(key.billing_id.clone()));
            m
        }
    }
}

fn quoted_table(e: &EntityMap) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!("{}.{}", q(e.table.schema()), q(e.table.table()))
}

fn outcome_of(kind: OutcomeKind) -> Outcome {
    match kind {
        OutcomeKind::Created => Outcome::Created,
        OutcomeKind::Updated => Outcome::Updated,
        OutcomeKind::Deleted => Outcome::Deleted,
        OutcomeKind::Skipped => Outcome::Skipped,
        OutcomeKind::Failed => Outcome::Failed,
    }
}

fn dedup<T: Ord + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort();
    v.dedup();
    v
}
