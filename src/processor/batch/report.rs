//! Last step of a batch: conflicts, reviews and failures become sync events
//! and counts, and the batch's states and bookkeeping are handed over for
//! saving, with one `sync.completed` per integration and entity.

use chrono::{DateTime, Utc};

use super::super::bookkeeping::{Bookkeeping, Failure, parked_changes, strategy_name, winner_name};
use super::super::events::{Flow, Outcome, SkipReason, SyncEvent};
use super::super::state::{RecordKey, RecordState};
use super::deliver::Delivered;
use super::{
    AWAITING_PARENT, CONFLICTS_TOTAL, FAILURES_TOTAL, Processed, Run, dedup, entity_of_key,
};

impl Run<'_> {
    /// Events and counts of the batch's conflicts, reviews and failures.
    pub(super) fn report(&mut self) {
        let now = self.now;
        for (seq, key, external_id, r) in &self.resolutions {
            self.counts.entry(entity_of_key(key)).or_default().conflicts += 1;
            let winner = winner_name(r.winner);
            metrics::counter!(CONFLICTS_TOTAL, "integration" => key.integration.clone(), "entity" => key.entity.clone(), "winner" => winner).increment(1);
            let event = SyncEvent::Conflict {
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
            };
            self.events.push((*seq, event));
        }
        for (seq, x, cands) in &self.reviews {
            let ie = (x.integration.clone(), x.entity.clone());
            self.counts.entry(ie).or_default().failed += 1;
            metrics::counter!(FAILURES_TOTAL, "integration" => x.integration.clone(), "entity" => x.entity.clone(), "error_type" => "match_review").increment(1);
            let event = SyncEvent::Error {
                integration: x.integration.clone(),
                entity: x.entity.clone(),
                billing_id: None,
                external_id: Some(x.external_id.clone()),
                error_type: "match_review".into(),
                message: review_message(cands),
                at: now,
            };
            self.events.push((*seq, event));
        }
        for (seq, f) in &self.failures {
            if f.error_type == AWAITING_PARENT {
                // Deferred, not failed: its retry follows the parent's change.
                self.counts
                    .entry(entity_of_key(&f.key))
                    .or_default()
                    .skipped += 1;
                let event = record_event(
                    &f.key,
                    f.external_id.clone(),
                    f.flow,
                    Outcome::Skipped,
                    Vec::new(),
                    now,
                );
                self.events
                    .push((*seq, event.skipped(SkipReason::AwaitsParent)));
                continue;
            }
            self.counts.entry(entity_of_key(&f.key)).or_default().failed += 1;
            metrics::counter!(FAILURES_TOTAL, "integration" => f.key.integration.clone(), "entity" => f.key.entity.clone(), "error_type" => f.error_type.clone()).increment(1);
            let error = SyncEvent::Error {
                integration: f.key.integration.clone(),
                entity: f.key.entity.clone(),
                billing_id: Some(f.key.billing_id.clone()),
                external_id: f.external_id.clone(),
                error_type: f.error_type.clone(),
                message: f.message.clone(),
                at: now,
            };
            let record = record_event(
                &f.key,
                f.external_id.clone(),
                f.flow,
                Outcome::Failed,
                f.fields.clone(),
                now,
            )
            .failed(&f.error_type, &f.message);
            self.events.push((*seq, error));
            self.events.push((*seq, record));
        }
    }

    /// Remembers the batch's states and returns its events, in the order of
    /// the changes that made them, and its bookkeeping for the caller to save.
    pub(super) async fn finish(self, delivered: &Delivered) -> Processed {
        let mut states = self.states;
        let touched: Vec<(RecordKey, RecordState)> =
            dedup(self.work.iter().filter_map(|w| w.key.clone()))
                .into_iter()
                .filter_map(|k| states.remove(&k).map(|s| (k, s)))
                .collect();
        let parents_linked = touched
            .iter()
            .any(|(k, s)| s.external_id.is_some() && self.unlinked_parents.contains(k));
        let failures: Vec<Failure> = self.failures.into_iter().map(|(_, f)| f).collect();
        let settled = touched
            .iter()
            .flat_map(|(k, s)| {
                let before = self.parked_before.get(k).cloned().unwrap_or_default();
                parked_changes(k, &before, &s.base.parked)
            })
            .collect();
        let synced = delivered
            .pending
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                !delivered.waiting.contains(i) && !failures.iter().any(|f| f.key == p.key)
            })
            .map(|(_, p)| p.key.clone())
            .collect();
        let bookkeeping = Bookkeeping {
            states: self.processor.state.remember(touched).await,
            counts: self.counts.clone(),
            resolutions: self
                .resolutions
                .into_iter()
                .map(|(_, k, x, r)| (k, x, r))
                .collect(),
            failures,
            synced,
            waits_ended: self.waits_ended,
            parents_linked,
            settled,
        };
        // Stable: each record's events stay in the order of its changes.
        let mut events = self.events;
        events.sort_by_key(|(seq, _)| *seq);
        let mut events: Vec<SyncEvent> = events.into_iter().map(|(_, ev)| ev).collect();
        for ((integration, entity), counts) in self.counts {
            events.push(SyncEvent::Completed {
                integration,
                entity,
                counts,
                at: self.now,
            });
        }
        Processed {
            events,
            bookkeeping,
        }
    }
}

/// A `sync.record` event of one record.
pub(super) fn record_event(
    key: &RecordKey,
    external_id: Option<String>,
    flow: Flow,
    outcome: Outcome,
    fields: Vec<String>,
    at: DateTime<Utc>,
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

/// What a person reviewing an ambiguous match reads: the candidates and
/// their scores.
pub(super) fn review_message(cands: &[(String, f64)]) -> String {
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
