//! Third step of a batch: the pending writes go out. External writes go in
//! one batched call per integration and phase: first everything but the
//! children of parents created in this batch, then those children with
//! their parents' new ids. Billing writes follow, together.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::super::bookkeeping::{Failure, ParentWait};
use super::super::events::Flow;
use super::super::merge::Base;
use super::super::state::RecordKey;
use super::outcomes::latest_billing_change;
use super::{BatchError, PARENT_NOT_LINKED, Pending, Processor, Run};
use crate::connectors::ErrorClass;
use crate::delivery::{DeliveryOutcome, ExternalWrite, ExternalWriteOp, OutcomeKind};
use serde_json::Value;

/// The delivered writes and what came back, by position in `pending`.
pub(super) struct Delivered {
    pub(super) pending: Vec<Pending>,
    pub(super) external: HashMap<usize, DeliveryOutcome>,
    pub(super) billing: HashMap<usize, DeliveryOutcome>,
    /// Children whose parent's create failed: they wrote nothing, on
    /// either side, and wait for the parent.
    pub(super) waiting: HashSet<usize>,
    /// Creates refused because their record exists that link to it.
    pub(super) adoptable: HashSet<usize>,
}

impl Run<'_> {
    /// Delivers the batch's pending writes.
    pub(super) async fn deliver(&mut self) -> Result<Delivered, BatchError> {
        let p = self.processor;
        let mut pending = std::mem::take(&mut self.pending);
        let creates: Vec<(&RecordKey, &Base)> = pending
            .iter()
            .filter(|w| w.creates())
            .filter_map(|w| self.states.get(&w.key).map(|s| (&w.key, &s.base)))
            .collect();
        // A create must not be marked before an older state of its record lands.
        if creates.iter().any(|(k, _)| p.state.is_unsaved(k)) {
            p.state.settled().await;
        }
        p.state.mark_create_sent(&creates).await?;

        let (first, children): (Vec<usize>, Vec<usize>) =
            (0..pending.len()).partition(|&i| pending[i].waits_for.is_none());
        let mut external = HashMap::new();
        p.deliver_external(&pending, &first, &mut external).await?;
        let ready = self.give_parent_ids(&mut pending, &children, &external);
        p.deliver_external(&pending, &ready, &mut external).await?;
        let waiting: HashSet<usize> = children
            .into_iter()
            .filter(|i| !ready.contains(i))
            .collect();

        let billing_idx: Vec<usize> = (0..pending.len())
            .filter(|&i| pending[i].billing.is_some() && !waiting.contains(&i))
            .collect();
        let billing = if billing_idx.is_empty() {
            HashMap::new()
        } else {
            let writes = billing_idx
                .iter()
                .map(|&i| pending[i].billing.clone().expect("filtered"))
                .collect();
            billing_idx
                .into_iter()
                .zip(p.billing_sink.apply(writes).await?)
                .collect()
        };
        let adoptable = p.adoptable(&pending, &external).await?;
        Ok(Delivered {
            pending,
            external,
            billing,
            waiting,
            adoptable,
        })
    }

    /// Children of parents created in this batch: those whose parent got
    /// its id take it and are ready. The others fail `parent_not_linked` and
    /// wait for the parent like any child of an unlinked parent.
    fn give_parent_ids(
        &mut self,
        pending: &mut [Pending],
        children: &[usize],
        outcomes: &HashMap<usize, DeliveryOutcome>,
    ) -> Vec<usize> {
        let mut ready = Vec::with_capacity(children.len());
        for &i in children {
            let parent = pending[i].waits_for.clone().expect("a child waits");
            let parent_ext = pending
                .iter()
                .position(|p| p.key == parent)
                .and_then(|j| outcomes.get(&j))
                .and_then(|o| o.external_id.clone());
            let Some(ext) = parent_ext else {
                let p = &pending[i];
                self.states.insert(p.key.clone(), p.before.clone());
                let failure = Failure {
                    key: p.key.clone(),
                    external_id: p.before.external_id.clone(),
                    error_type: PARENT_NOT_LINKED.into(),
                    message: format!(
                        "parent {}/{} could not be written to {}",
                        parent.entity, parent.billing_id, parent.integration
                    ),
                    flow: Flow::ToExternal,
                    fields: p.written_fields(),
                    waiting: latest_billing_change(&self.work, &p.key).map(|b| ParentWait {
                        entity: parent.entity.clone(),
                        billing_id: parent.billing_id.clone(),
                        change: b.clone(),
                    }),
                };
                self.failures.push((p.seq, failure));
                continue;
            };
            if let Some(x) = pending[i].external.as_mut()
                && let Some(p) = self
                    .processor
                    .mappings
                    .for_external(&x.integration, &x.entity)
                    .and_then(|e| e.parent.as_ref())
            {
                x.fields.insert(p.external.clone(), Value::String(ext));
            }
            ready.push(i);
        }
        ready
    }
}

impl Processor {
    /// Delivers the external writes of `which`, one batched call per integration.
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
