//! First step of a batch: its changes become per-entity work, unlinked
//! external records are matched, and the states, billing rows and external
//! images the decisions need are read, together.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::Utc;

use super::super::change::Change;
use super::super::link::MatchResult;
use super::super::mapping::EntityMap;
use super::super::state::{RecordKey, RecordState};
use super::super::unseen;
use super::{BatchError, Candidates, EntityOf, Later, Processor, Run, Work, dedup, key_of};
use crate::ingest::{ChangeSource, ExternalChange};

impl<'a> Run<'a> {
    /// The batch's work: each change once per entity it maps to, with the
    /// record it belongs to when that is linked already. Parents come
    /// before their children; each record keeps the order of its changes.
    pub(super) async fn expand(
        processor: &'a Processor,
        changes: &'a [Change],
        holds: &'a [i32],
    ) -> Result<Run<'a>, BatchError> {
        let mappings = &processor.mappings;
        let mut work = Vec::new();
        for change in changes {
            match change {
                Change::Billing(b) => {
                    for e in mappings
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
                    let Some(e) = mappings.for_external(&x.integration, &x.entity) else {
                        continue;
                    };
                    if x.source != ChangeSource::Poll && !e.on_webhook {
                        continue;
                    }
                    let linked = processor
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
        // A child whose parent is created in this batch then finds it.
        if mappings.entities.iter().any(|e| e.parent.is_some()) {
            work.sort_by_cached_key(|w| processor.depth(w.entity));
        }
        Ok(Run {
            processor,
            now: Utc::now(),
            work,
            later: Vec::new(),
            states: HashMap::new(),
            views: HashMap::new(),
            existing: HashMap::new(),
            unseen: HashMap::new(),
            candidates: HashMap::new(),
            unlinked_parents: HashSet::new(),
            parked_before: HashMap::new(),
            gave_up: HashSet::new(),
            holds,
            counts: BTreeMap::new(),
            pending: Vec::new(),
            resolutions: Vec::new(),
            reviews: Vec::new(),
            failures: Vec::new(),
            waits_ended: Vec::new(),
            events: Vec::new(),
        })
    }

    /// Unlinked external records: matched to billing rows or indexed; one
    /// that fits several rows is listed for review.
    pub(super) async fn link(&mut self) -> Result<(), BatchError> {
        for (seq, w) in self.work.iter_mut().enumerate() {
            let (None, Change::External(x)) = (&w.key, w.change) else {
                continue;
            };
            match self.processor.link_external(w.entity, x).await? {
                MatchResult::Linked(id) => w.key = Some(key_of(w.entity, &id)),
                MatchResult::Ambiguous(cands) => self.reviews.push((seq, x, cands)),
                MatchResult::NoMatch => {}
            }
        }
        Ok(())
    }

    /// Loads the records' states, the billing rows external changes merge
    /// with, the records a create may find existing and the external edits
    /// billing changes have not seen.
    pub(super) async fn load(&mut self) -> Result<(), BatchError> {
        let p = self.processor;
        let keys: Vec<RecordKey> = dedup(self.work.iter().filter_map(|w| w.key.clone()));
        // Independent queries, pipelined on their connections.
        let (loaded, views) = tokio::try_join!(p.state.load_many(&keys), p.load_views(&self.work))?;
        self.states = keys.into_iter().zip(loaded).collect();
        self.views = views;
        self.unlinked_parents = self
            .states
            .iter()
            .filter(|(k, s)| s.external_id.is_none() && p.is_parent(k))
            .map(|(k, _)| k.clone())
            .collect();
        self.parked_before = self
            .states
            .iter()
            .filter(|(_, s)| !s.base.parked.is_empty())
            .map(|(k, s)| (k.clone(), s.base.parked.clone()))
            .collect();
        self.existing = self.existing().await?;
        self.later = later_changes(&self.work);
        self.unseen = self.unseen().await?;
        Ok(())
    }

    /// External edits not seen yet of the linked records that billing
    /// changes of this batch would update (see [`unseen`]).
    async fn unseen(&self) -> Result<HashMap<RecordKey, ExternalChange>, BatchError> {
        let records = self.work.iter().zip(&self.later).filter_map(|(w, later)| {
            let (Change::Billing(b), Some(key)) = (w.change, &w.key) else {
                return None;
            };
            let state = self.states.get(key)?;
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
        Ok(unseen::read_back(&self.processor.external, records).await?)
    }

    /// External records that already carry the billing id of a record this
    /// batch would create again (per integration and entity): a create that
    /// landed before a crash is adopted, not written over.
    async fn existing(&self) -> Result<HashMap<EntityOf, Candidates>, BatchError> {
        let mut wanted: BTreeMap<EntityOf, (&EntityMap, Vec<String>)> = BTreeMap::new();
        for w in &self.work {
            let (Change::Billing(b), Some(key), Some(_)) =
                (w.change, &w.key, &w.entity.billing_id_field)
            else {
                continue;
            };
            // Only a record whose create was sent before may exist already.
            if b.is_delete() || !self.states.get(key).is_some_and(awaits_sent_create) {
                continue;
            }
            let ids = &mut wanted
                .entry(super::entity_of(w.entity))
                .or_insert((w.entity, Vec::new()))
                .1;
            if !ids.contains(&key.billing_id) {
                ids.push(key.billing_id.clone());
            }
        }
        let mut out = HashMap::new();
        for (ie, (e, ids)) in wanted {
            let (Some(sink), Some(field)) = (
                self.processor.external.get(&e.integration),
                &e.billing_id_field,
            ) else {
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
}

/// Whether a create of the record was sent and no link came back.
fn awaits_sent_create(s: &RecordState) -> bool {
    s.create_sent && s.external_id.is_none()
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

impl Processor {
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
}
