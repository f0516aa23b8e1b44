//! Second step of a batch: each unit of work is decided in order, record by
//! record ([`decide`]), and its plan becomes a pending write, a skip or a
//! failure. A billing change of a child waits here (bounded) for its
//! parent's link, unless the parent is created in this same batch: then the
//! child is planned now and takes the parent's id once it is created; or
//! unless the parent's change is queued on this processor: then the child
//! is deferred behind it.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::super::bookkeeping::{Failure, ParentWait};
use super::super::change::{BillingChange, Change};
use super::super::decide::{self, Decision, Plan};
use super::super::events::{Flow, Outcome, SkipReason};
use super::super::mapping::EntityMap;
use super::super::record;
use super::super::state::{RecordKey, RecordState};
use super::lookups::ParentLink;
use super::report::{record_event, review_message};
use super::{
    AWAITING_PARENT, BatchError, PARENT_NOT_LINKED, PROCESSED_TOTAL, Pending, Run, entity_of,
};
use crate::delivery::{BillingWrite, ExternalWrite, ExternalWriteOp};
use crate::ingest::ExternalChange;

/// What deciding one unit of work gave.
struct Decided {
    decision: Decision,
    /// The parent key whose create in this batch a child waits for.
    waits_for: Option<RecordKey>,
    /// For a child whose parent was not linked in time: what to re-queue
    /// once it is.
    parent_wait: Option<ParentWait>,
}

/// The writes a plan makes, before they are pending.
struct Written {
    external: Option<ExternalWrite>,
    billing: Option<Map<String, Value>>,
    waits_for: Option<RecordKey>,
}

impl From<Decision> for Decided {
    fn from(decision: Decision) -> Self {
        Decided {
            decision,
            waits_for: None,
            parent_wait: None,
        }
    }
}

impl<'a> Run<'a> {
    /// Decides every unit of work, in order.
    pub(super) async fn decide_all(&mut self) -> Result<(), BatchError> {
        for seq in 0..self.work.len() {
            let w = &self.work[seq];
            let (e, change) = (w.entity, w.change);
            let Some(key) = w.key.clone() else { continue };
            let state = self.states.get(&key).cloned().unwrap_or_default();
            self.counts.entry(entity_of(e)).or_default().synced += 1;
            metrics::counter!(PROCESSED_TOTAL, "integration" => e.integration.clone(), "entity" => e.entity.clone()).increment(1);
            let decided = match change {
                Change::Billing(b) => self.decide_billing(seq, e, &key, &state, b).await?,
                Change::External(x) => self.decide_external(seq, e, &key, &state, x).into(),
            };
            tracing::trace!(
                integration = %e.integration,
                entity = %e.entity,
                billing_id = %key.billing_id,
                change = %change.describe(),
                plan = %decided.decision.plan.summary(),
                "decided"
            );
            self.take(seq, key, state, decided);
        }
        Ok(())
    }

    /// A billing change, merged with the record's newest external image of
    /// the batch (or one read back because it was not seen).
    async fn decide_billing(
        &mut self,
        seq: usize,
        e: &EntityMap,
        key: &RecordKey,
        state: &RecordState,
        b: &BillingChange,
    ) -> Result<Decided, BatchError> {
        let p = self.processor;
        self.load_candidates(e, state).await?;
        let cands = self.match_candidates(e, state);
        let cands = cands.as_ref();
        let parent_ext = p.parent_external_id(e, b, &self.states).await?;
        let newer = self.later[seq]
            .external
            .or_else(|| self.unseen.get(key))
            .and_then(|x| decide::with_external(e, state, x));
        let seen = newer.as_ref().unwrap_or(state);
        let decide =
            |parent: Option<String>| decide::billing_change(&p.mappings, e, seen, b, cands, parent);
        let decision = decide(parent_ext);
        let Plan::NeedsParent { entity, billing_id } = &decision.plan else {
            return Ok(decision.into());
        };
        let parent_key = RecordKey {
            integration: e.integration.clone(),
            entity: entity.clone(),
            billing_id: billing_id.clone(),
        };
        if self
            .pending
            .iter()
            .any(|p| p.key == parent_key && p.creates())
        {
            return Ok(Decided {
                decision: decide(Some(String::new())),
                waits_for: Some(parent_key),
                parent_wait: None,
            });
        }
        // A parent this batch handled (its changes come first) and left
        // unlinked will not be linked by waiting; neither will one whose
        // wait ran out.
        let linked = if self.states.contains_key(&parent_key) || self.gave_up.contains(&parent_key)
        {
            ParentLink::NotLinked
        } else {
            // A retry is never deferred again: it waits.
            let holds = if b.is_retry() { &[][..] } else { self.holds };
            p.wait_for_parent(&parent_key, holds).await?
        };
        Ok(match linked {
            ParentLink::Linked(ext) => decide(Some(ext)).into(),
            ParentLink::Queued => self.waits_for_parent(e, state, b, parent_key, true),
            ParentLink::NotLinked => self.waits_for_parent(e, state, b, parent_key, false),
        })
    }

    /// Reads the candidates of `e` once per batch, when a record without a
    /// link may need them (the entity has match rules).
    async fn load_candidates(
        &mut self,
        e: &EntityMap,
        state: &RecordState,
    ) -> Result<(), BatchError> {
        let ie = entity_of(e);
        if state.external_id.is_none() && e.matching.is_some() && !self.candidates.contains_key(&ie)
        {
            let found = self.processor.candidates(e).await?;
            self.candidates.insert(ie, found);
        }
        Ok(())
    }

    /// The external records a billing record without a link may match:
    /// the entity's candidates and the records found carrying their
    /// billing id.
    fn match_candidates(
        &self,
        e: &EntityMap,
        state: &RecordState,
    ) -> Cow<'_, [(String, Map<String, Value>)]> {
        let ie = entity_of(e);
        let cands = self.candidates.get(&ie).map(Vec::as_slice).unwrap_or(&[]);
        match self.existing.get(&ie) {
            Some(found) if state.external_id.is_none() => {
                Cow::Owned([cands, found.as_slice()].concat())
            }
            _ => Cow::Borrowed(cands),
        }
    }

    /// A billing change whose parent is not linked: deferred while the
    /// parent's change is `queued` behind the batch, else failed
    /// `parent_not_linked`. Either keeps the change for a retry: a deferred
    /// one at once (behind the parent's change), a failed one once the
    /// parent is linked.
    fn waits_for_parent(
        &mut self,
        e: &EntityMap,
        state: &RecordState,
        b: &BillingChange,
        parent_key: RecordKey,
        queued: bool,
    ) -> Decided {
        let (error_type, message) = if queued {
            let message = format!(
                "parent {}/{} is queued behind it; retried once the parent is processed",
                parent_key.entity, parent_key.billing_id
            );
            (AWAITING_PARENT, message)
        } else {
            let message = format!(
                "parent {}/{} is not linked to a {} record yet",
                parent_key.entity, parent_key.billing_id, e.integration
            );
            self.gave_up.insert(parent_key.clone());
            (PARENT_NOT_LINKED, message)
        };
        let decision = Decision {
            plan: Plan::Failed {
                error_type,
                message,
            },
            state: state.clone(),
        };
        let mut change = b.clone();
        // The retry is a change of its own origin.
        if change.is_retry() {
            change.origin = None;
        }
        let parent_wait = ParentWait {
            entity: parent_key.entity,
            billing_id: parent_key.billing_id,
            change,
        };
        Decided {
            decision,
            waits_for: None,
            parent_wait: Some(parent_wait),
        }
    }

    /// An external change, merged with the billing row as it is now (and as
    /// this batch's planned writes leave it).
    fn decide_external(
        &self,
        seq: usize,
        e: &EntityMap,
        key: &RecordKey,
        state: &RecordState,
        x: &ExternalChange,
    ) -> Decision {
        let view = self
            .views
            .get(&(e.table.to_string(), key.billing_id.clone()));
        let mut st = state.clone();
        if st.external_id.is_none() {
            st.external_id = Some(x.external_id.clone());
        }
        // The row merged with is at least as new as the record's last
        // billing change of the batch.
        let billing_at = self.later[seq].billing_at;
        st.billing_changed_at = st.billing_changed_at.max(billing_at);
        let d = decide::external_change(&self.processor.mappings, e, &st, &key.billing_id, x, view);
        match decide::with_external(e, &st, x) {
            // The row holds a billing edit whose change is still on its
            // way, so its time is unknown: that change settles
            // `latest_wins` with both times.
            Some(seen) if billing_at.is_none() && latest_wins_conflict(&d.plan) => Decision {
                plan: Plan::Nothing(SkipReason::AwaitsBillingChange),
                state: seen,
            },
            _ => d,
        }
    }

    /// Takes one decision into the batch: a skip event, a failure, or a
    /// pending write (a create pending for the record absorbs later writes).
    fn take(&mut self, seq: usize, key: RecordKey, state: RecordState, decided: Decided) {
        let (e, change) = (self.work[seq].entity, self.work[seq].change);
        let Decided {
            decision,
            waits_for,
            parent_wait,
        } = decided;
        let flow = match change {
            Change::Billing(_) => Flow::ToExternal,
            Change::External(_) => Flow::ToAlguna,
        };
        let external_id = decision
            .state
            .external_id
            .clone()
            .or(state.external_id.clone());
        let mut next_state = decision.state;
        let failure = |error_type: String, message: String, external_id, waiting| Failure {
            key: key.clone(),
            external_id,
            error_type,
            message,
            flow,
            fields: Vec::new(),
            waiting,
        };
        match decision.plan {
            Plan::Nothing(reason) => {
                self.counts.entry(entity_of(e)).or_default().skipped += 1;
                // A retry that writes nothing ends the record's wait.
                if let Change::Billing(b) = change
                    && b.is_retry()
                {
                    self.waits_ended.push((key.clone(), b.committed_at));
                }
                let event = record_event(
                    &key,
                    external_id,
                    flow,
                    Outcome::Skipped,
                    Vec::new(),
                    self.now,
                );
                self.events.push((seq, event.skipped(reason)));
            }
            Plan::Review(cands) => {
                let f = failure("match_review".into(), review_message(&cands), None, None);
                self.failures.push((seq, f));
            }
            Plan::NeedsParent { .. } => unreachable!("settled by decide_billing"),
            Plan::Failed {
                error_type,
                message,
            } => {
                let f = failure(error_type.into(), message, external_id, parent_wait);
                self.failures.push((seq, f));
            }
            Plan::Write {
                external,
                billing,
                resolutions,
            } => {
                for r in resolutions {
                    self.resolutions
                        .push((seq, key.clone(), external_id.clone(), r));
                }
                let write = Written {
                    external,
                    billing,
                    waits_for,
                };
                self.pend(seq, &key, state, &mut next_state, write);
            }
        }
        self.states.insert(key, next_state);
    }

    /// Queues a planned write for delivery, unless a create pending for the
    /// record absorbs it. Later changes of the record in the batch merge with
    /// the row, and the external image, as the write leaves them.
    fn pend(
        &mut self,
        seq: usize,
        key: &RecordKey,
        before: RecordState,
        next_state: &mut RecordState,
        write: Written,
    ) {
        let (e, change) = (self.work[seq].entity, self.work[seq].change);
        let Written {
            external,
            billing,
            waits_for,
        } = write;
        if let (Some(cols), Some(view)) = (
            &billing,
            self.views
                .get_mut(&(e.table.to_string(), key.billing_id.clone())),
        ) {
            for (col, v) in cols {
                view.insert(record::camel_case(col), v.clone());
            }
        }
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| &p.key == key && p.creates())
        {
            if let (Some(px), Some(nx)) = (p.external.as_mut(), external.as_ref())
                && !matches!(nx.op, ExternalWriteOp::Delete { .. })
            {
                px.fields.extend(nx.fields.clone());
            }
            return;
        }
        let billing_paths = billing
            .as_ref()
            .map(|cols| paths_in_columns(e, cols))
            .unwrap_or_default();
        let billing = billing.map(|columns| BillingWrite {
            table: e.table.to_string(),
            key: pk_of(change, key),
            columns,
            as_of: self.as_of(seq, change),
        });
        // Row images of this batch predate the write: they are stale for its
        // fields until the write's time is known. Likewise, external images
        // modified before now cannot hold this write's values: later changes
        // of the record in this batch must not take them for edits.
        let decided_at = Utc::now();
        for path in &billing_paths {
            next_state.billing_written.insert(path.clone(), decided_at);
        }
        if let Some(x) = &external {
            for f in e
                .fields
                .iter()
                .filter(|f| x.fields.contains_key(f.external.as_str()))
            {
                next_state
                    .external_written
                    .insert(f.alguna.as_str().to_string(), decided_at);
            }
        }
        self.pending.push(Pending {
            seq,
            key: key.clone(),
            before,
            external,
            billing,
            waits_for,
            billing_paths,
        });
    }

    /// The time a billing write is as new as: an external change was merged
    /// with a row at least as new as the record's last billing change of the
    /// batch.
    fn as_of(&self, seq: usize, change: &Change) -> DateTime<Utc> {
        match change {
            Change::External(x) => self.later[seq]
                .billing_at
                .map_or(x.modified_at, |t| t.max(x.modified_at)),
            Change::Billing(b) => b.committed_at,
        }
    }
}

/// The mapped fields living in the billing columns a write sets.
fn paths_in_columns(e: &EntityMap, cols: &Map<String, Value>) -> Vec<String> {
    e.fields
        .iter()
        .filter(|f| {
            let top = f.alguna.segments().next().unwrap_or_default();
            cols.contains_key(&record::snake_case(top))
        })
        .map(|f| f.alguna.as_str().to_string())
        .collect()
}

/// Whether a plan settles a `latest_wins` conflict.
fn latest_wins_conflict(plan: &Plan) -> bool {
    matches!(plan, Plan::Write { resolutions, .. }
        if resolutions.iter().any(|r| r.strategy == crate::config::Strategy::LatestWins))
}

/// The billing row's key: the change's own, or the record's id.
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
