//! Fourth step of a batch: what delivery gave back is folded into the
//! records' states, their `sync.record` events, the counts and the failed
//! records. A failed write leaves its record's state as it was before the
//! batch; a create refused because its record exists links to that record.

use std::collections::HashSet;

use chrono::Utc;

use super::super::bookkeeping::{Failure, ParentWait};
use super::super::change::{BillingChange, Change};
use super::super::events::{Flow, Outcome, SkipReason};
use super::super::state::RecordKey;
use super::deliver::Delivered;
use super::report::record_event;
use super::{Pending, Run, Work, entity_of_key};
use crate::connectors::ErrorClass;
use crate::delivery::{BillingWrite, DeliveryOutcome, ExternalWrite, ExternalWriteOp, OutcomeKind};

impl Run<'_> {
    /// Folds every delivered write's outcomes into the batch.
    pub(super) fn fold(&mut self, d: &Delivered) {
        // Records with a failed external write in this batch: a later failed
        // write of one keeps the state from before the first, since the
        // writes in between were not applied either (a run of them may
        // have gone out as one call).
        let mut failed: HashSet<&RecordKey> = HashSet::new();
        for (i, p) in d.pending.iter().enumerate() {
            if d.waiting.contains(&i) {
                continue;
            }
            if let (Some(x), Some(o)) = (&p.external, d.external.get(&i)) {
                let first_failure = o.kind == OutcomeKind::Failed && failed.insert(&p.key);
                let keep_state = o.kind == OutcomeKind::Failed && !first_failure;
                self.fold_external(p, x, o, d.adoptable.contains(&i), keep_state);
            }
            if let (Some(b), Some(o)) = (&p.billing, d.billing.get(&i)) {
                self.fold_billing(p, b, o);
            }
        }
    }

    /// `keep_state`: a failure of a record whose earlier write in this
    /// batch failed too, whose state is already the one from before that.
    fn fold_external(
        &mut self,
        p: &Pending,
        x: &ExternalWrite,
        o: &DeliveryOutcome,
        adopt: bool,
        keep_state: bool,
    ) {
        let st = self.states.entry(p.key.clone()).or_default();
        if o.kind == OutcomeKind::Failed {
            let (class, msg) = o
                .error
                .clone()
                .map(|(c, m)| (c.as_str().to_string(), m))
                .unwrap_or(("transient".into(), "failed".into()));
            if !keep_state {
                *st = p.before.clone();
            }
            // A create refused because the record exists (a unique field
            // holds its value there) links to that record. Once the link is
            // saved, the record's latest change is re-queued and syncs with
            // it, three-way by the field strategies, as a matched record would.
            let (message, waiting) = match o.external_id.clone().filter(|_| adopt) {
                Some(id) => {
                    st.external_id = Some(id.clone());
                    (
                        format!("{msg}; linked to {id}, the record syncs with it next"),
                        latest_billing_change(&self.work, &p.key).map(|b| ParentWait {
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
            let failure = Failure {
                key: p.key.clone(),
                external_id: st.external_id.clone(),
                error_type: class,
                message,
                flow: Flow::ToExternal,
                fields: x.fields.keys().cloned().collect(),
                waiting,
            };
            self.failures.push((p.seq, failure));
            return;
        }
        if let Some(id) = &o.external_id {
            st.external_id = Some(id.clone());
        }
        // External images modified before now are stale for these fields.
        let written_at = Utc::now();
        if let Some(e) = self
            .processor
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
            outcome_of(o.kind),
            x.fields.keys().cloned().collect(),
            self.now,
        );
        let c = self.counts.entry(entity_of_key(&p.key)).or_default();
        match o.kind {
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
        self.events.push((p.seq, ev));
    }

    fn fold_billing(&mut self, p: &Pending, b: &BillingWrite, o: &DeliveryOutcome) {
        let fields = b.columns.keys().cloned().collect();
        if o.kind == OutcomeKind::Failed {
            let msg = o.error.clone().map(|e| e.1).unwrap_or_default();
            self.states.insert(p.key.clone(), p.before.clone());
            let failure = Failure {
                key: p.key.clone(),
                external_id: p.before.external_id.clone(),
                error_type: "field_validation".into(),
                message: msg,
                flow: Flow::ToAlguna,
                fields,
                waiting: None,
            };
            self.failures.push((p.seq, failure));
            return;
        }
        let mut ev = record_event(
            &p.key,
            self.states.get(&p.key).and_then(|s| s.external_id.clone()),
            Flow::ToAlguna,
            outcome_of(o.kind),
            fields,
            self.now,
        );
        let c = self.counts.entry(entity_of_key(&p.key)).or_default();
        if o.kind == OutcomeKind::Updated {
            c.updated += 1;
            // Row images captured before this write are stale for these fields.
            let written_at = Utc::now();
            if let Some(st) = self.states.get_mut(&p.key) {
                for path in &p.billing_paths {
                    st.billing_written.insert(path.clone(), written_at);
                }
            }
        } else {
            c.skipped += 1;
            ev = ev.skipped(SkipReason::RowIsNewer);
        }
        self.events.push((p.seq, ev));
    }
}

/// The latest billing change of `key` in the batch (a pending write holds
/// every change of its record in the batch).
pub(super) fn latest_billing_change<'a>(
    work: &'a [Work<'a>],
    key: &RecordKey,
) -> Option<&'a BillingChange> {
    work.iter()
        .rev()
        .filter(|w| w.key.as_ref() == Some(key))
        .find_map(|w| match w.change {
            Change::Billing(b) => Some(b),
            Change::External(_) => None,
        })
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
