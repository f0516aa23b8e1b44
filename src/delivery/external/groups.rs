//! How one [`ExternalWriter::write`] call's writes go out: in waves (one
//! write per billing id each), grouped by object and operation, chunked to
//! the batch size; and how each answer becomes the write's outcome, with
//! `not_found` handled by the entity's [`NotFoundPolicy`].

use std::collections::HashMap;

use super::{ExternalWriter, NotFoundPolicy, Stop};
use crate::connectors::{ConnectorError, ErrorClass, WriteOp, WriteOutcome};
use crate::delivery::intent::{DeliveryOutcome, ExternalWrite, ExternalWriteOp, OutcomeKind};
use crate::delivery::metrics;
use crate::delivery::status::IntegrationStatus;

/// Batch calls of one group that may be in flight at once.
const CALLS_IN_FLIGHT: usize = 4;
/// How a write is sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OpKind {
    Create,
    Upsert(String),
    Update,
    Delete,
}

/// One write ready to send.
#[derive(Debug, Clone)]
struct Item {
    index: usize,
    op: WriteOp,
    /// A create sent without an upsert key (goes through the guard).
    guarded: bool,
    /// A re-create after `not_found`: it gets no second re-create.
    recreate: bool,
}

/// Writes grouped by object and operation, in first-seen order.
type Groups = Vec<(String, OpKind, Vec<Item>)>;

impl ExternalWriter {
    /// Sends `writes` wave by wave, group by group, filling `outcomes`.
    pub(super) async fn write_all(
        &self,
        writes: &[ExternalWrite],
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> Result<(), Stop> {
        if matches!(*self.status.borrow(), IntegrationStatus::AuthExpired { .. }) {
            self.try_resume().await?;
        }
        for wave in waves(writes) {
            let mut groups: Groups = Vec::new();
            for index in wave {
                let w = &writes[index];
                let Some(item) = self.plan(w, index, false, outcomes).await else {
                    continue;
                };
                push_grouped(&mut groups, &w.object, item);
            }
            for (object, _, items) in groups {
                self.run_group(writes, &object, items, outcomes).await?;
            }
        }
        Ok(())
    }

    /// The operation for `w`, or `None` when its outcome is already known
    /// (a guarded create that was made before).
    async fn plan(
        &self,
        w: &ExternalWrite,
        index: usize,
        recreate: bool,
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> Option<Item> {
        let create = |w: &ExternalWrite| {
            let mut fields = w.fields.clone();
            match &w.billing_id_field {
                Some(f) => {
                    fields.insert(f.clone(), w.billing_id.clone().into());
                    (
                        WriteOp::Upsert {
                            id_field: f.clone(),
                            id_value: w.billing_id.clone(),
                            fields,
                        },
                        false,
                    )
                }
                None => (WriteOp::Create { fields }, true),
            }
        };
        let (op, guarded) = match (&w.op, recreate) {
            (ExternalWriteOp::Create, _) | (ExternalWriteOp::Update { .. }, true) => create(w),
            (ExternalWriteOp::Update { external_id }, false) => (
                WriteOp::Update {
                    id: external_id.clone(),
                    fields: w.fields.clone(),
                },
                false,
            ),
            (ExternalWriteOp::Delete { external_id }, _) => (
                WriteOp::Delete {
                    id: external_id.clone(),
                },
                false,
            ),
        };
        if guarded {
            match self.guard.existing(w).await {
                Ok(Some(id)) => {
                    outcomes[index] = Some(DeliveryOutcome {
                        billing_id: w.billing_id.clone(),
                        kind: OutcomeKind::Skipped,
                        external_id: Some(id),
                        version: None,
                        error: None,
                    });
                    return None;
                }
                Ok(None) => {}
                Err(e) => {
                    outcomes[index] = Some(failed(w, &e));
                    return None;
                }
            }
        }
        Some(Item {
            index,
            op,
            guarded,
            recreate,
        })
    }

    /// Sends one group in chunks, records outcomes, then re-creates the
    /// records that updates found gone (when configured).
    async fn run_group(
        &self,
        writes: &[ExternalWrite],
        object: &str,
        items: Vec<Item>,
        outcomes: &mut [Option<DeliveryOutcome>],
    ) -> Result<(), Stop> {
        use futures::StreamExt;
        let mut recreates: Groups = Vec::new();
        let chunks: Vec<&[Item]> = items.chunks(self.max_batch()).collect();
        // A group holds each record once (see `waves`), so its chunks are
        // independent and go out together; their answers apply in order.
        let calls: Vec<_> = chunks
            .iter()
            .map(|chunk| self.send_owned(object, chunk.iter().map(|i| i.op.clone()).collect()))
            .collect();
        let answers: Vec<Result<_, Stop>> = futures::stream::iter(calls)
            .buffered(CALLS_IN_FLIGHT)
            .collect()
            .await;
        let mut stopped = None;
        for (chunk, answer) in chunks.into_iter().zip(answers) {
            let results = match answer {
                Ok(results) => results,
                Err(stop) => {
                    // Its writes stay pending; the other chunks' outcomes stand.
                    stopped.get_or_insert(stop);
                    continue;
                }
            };
            self.record_chunk(writes, object, chunk, results, outcomes, &mut recreates)
                .await;
        }
        if let Some(stop) = stopped {
            return Err(stop);
        }
        for (object, _, items) in recreates {
            Box::pin(self.run_group(writes, &object, items, outcomes)).await?;
        }
        Ok(())
    }

    /// Records the outcomes of one chunk's answers; updates whose record is
    /// gone and whose entity re-creates go to `recreates`.
    async fn record_chunk(
        &self,
        writes: &[ExternalWrite],
        object: &str,
        chunk: &[Item],
        results: Vec<Result<WriteOutcome, ConnectorError>>,
        outcomes: &mut [Option<DeliveryOutcome>],
        recreates: &mut Groups,
    ) {
        let mut errors: HashMap<ErrorClass, u64> = HashMap::new();
        for (item, result) in chunk.iter().zip(results) {
            let w = &writes[item.index];
            let outcome = match result {
                Ok(o) => {
                    if item.guarded {
                        self.guard.created(w, &o.id).await;
                    }
                    succeeded(w, &item.op, o)
                }
                Err(e) if e.class == ErrorClass::NotFound => match &item.op {
                    WriteOp::Delete { .. } => skipped(w),
                    WriteOp::Update { .. }
                        if self.config.not_found_for(&w.entity) == NotFoundPolicy::Create
                            && !item.recreate =>
                    {
                        if let Some(again) = self.plan(w, item.index, true, outcomes).await {
                            push_grouped(recreates, object, again);
                        }
                        continue;
                    }
                    WriteOp::Update { .. } => skipped(w),
                    _ => {
                        *errors.entry(e.class).or_default() += 1;
                        failed(w, &e)
                    }
                },
                Err(e) => {
                    *errors.entry(e.class).or_default() += 1;
                    failed(w, &e)
                }
            };
            outcomes[item.index] = Some(outcome);
        }
        for (class, n) in errors {
            ::metrics::counter!(metrics::ERRORS_TOTAL,
                "integration" => self.integration.clone(),
                "error_type" => class.as_str())
            .increment(n);
        }
    }
}

/// Splits writes into waves holding at most one write per billing id, so a
/// billing id's writes are applied in input order while the rest batch.
fn waves(writes: &[ExternalWrite]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let n = seen
            .entry((w.object.as_str(), w.billing_id.as_str()))
            .or_insert(0);
        if waves.len() <= *n {
            waves.push(Vec::new());
        }
        waves[*n].push(i);
        *n += 1;
    }
    waves
}

fn op_kind(op: &WriteOp) -> OpKind {
    match op {
        WriteOp::Create { .. } => OpKind::Create,
        WriteOp::Upsert { id_field, .. } => OpKind::Upsert(id_field.clone()),
        WriteOp::Update { .. } => OpKind::Update,
        WriteOp::Delete { .. } => OpKind::Delete,
    }
}

fn push_grouped(groups: &mut Groups, object: &str, item: Item) {
    let kind = op_kind(&item.op);
    match groups
        .iter_mut()
        .find(|(o, k, _)| o == object && *k == kind)
    {
        Some((_, _, items)) => items.push(item),
        None => groups.push((object.to_string(), kind, vec![item])),
    }
}

fn succeeded(w: &ExternalWrite, op: &WriteOp, o: WriteOutcome) -> DeliveryOutcome {
    let kind = match op {
        WriteOp::Delete { .. } => OutcomeKind::Deleted,
        _ if o.created => OutcomeKind::Created,
        WriteOp::Create { .. } => OutcomeKind::Created,
        _ => OutcomeKind::Updated,
    };
    DeliveryOutcome {
        billing_id: w.billing_id.clone(),
        kind,
        external_id: Some(o.id),
        version: o.version,
        error: None,
    }
}

fn skipped(w: &ExternalWrite) -> DeliveryOutcome {
    DeliveryOutcome {
        billing_id: w.billing_id.clone(),
        kind: OutcomeKind::Skipped,
        external_id: match &w.op {
            ExternalWriteOp::Create => None,
            ExternalWriteOp::Update { external_id } | ExternalWriteOp::Delete { external_id } => {
                Some(external_id.clone())
            }
        },
        version: None,
        error: None,
    }
}

fn failed(w: &ExternalWrite, e: &ConnectorError) -> DeliveryOutcome {
    DeliveryOutcome {
        billing_id: w.billing_id.clone(),
        kind: OutcomeKind::Failed,
        external_id: match &w.op {
            ExternalWriteOp::Create => e.existing_id.clone(),
            ExternalWriteOp::Update { external_id } | ExternalWriteOp::Delete { external_id } => {
                Some(external_id.clone())
            }
        },
        version: None,
        error: Some((e.class, e.message.clone())),
    }
}

pub(super) fn count_outcomes(
    writes: &[ExternalWrite],
    outcomes: &[Option<DeliveryOutcome>],
) -> HashMap<(String, &'static str), u64> {
    let mut counted: HashMap<(String, &'static str), u64> = HashMap::new();
    for (w, o) in writes.iter().zip(outcomes) {
        if let Some(o) = o {
            *counted
                .entry((w.object.clone(), metrics::outcome_label(o.kind)))
                .or_default() += 1;
        }
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn w(billing_id: &str, object: &str) -> ExternalWrite {
        ExternalWrite {
            integration: "crm".into(),
            entity: "accounts".into(),
            object: object.into(),
            billing_id: billing_id.into(),
            op: ExternalWriteOp::Create,
            fields: Map::new(),
            billing_id_field: None,
            idempotency_key: String::new(),
        }
    }

    #[test]
    fn waves_keep_each_billing_id_in_input_order() {
        let writes = vec![
            w("a", "Account"),
            w("b", "Account"),
            w("a", "Account"),
            w("a", "Contact"),
            w("a", "Account"),
            w("c", "Account"),
        ];
        assert_eq!(waves(&writes), vec![vec![0, 1, 3, 5], vec![2], vec![4]]);
    }
}
