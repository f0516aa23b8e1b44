//! A billing-side change of one record: skipped when there is nothing to
//! sync, deleted, linked when it is not yet (adopted, by external id, by
//! match rules), created, or merged three-way with the record's latest
//! external image.
//!
//! ```text
//!  change ──► nothing to sync? ──► delete? ──► row as extsync knows it ──► parent linked?
//!         ──► linked? ── no ──► adopt / externalIdField / match rules ──► create
//!                └─ yes ──► merge ──► update (external) + columns (billing)
//! ```

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::super::change::BillingChange;
use super::super::events::SkipReason;
use super::super::link::{self, MatchResult};
use super::super::mapping::{EntityMap, Mappings};
use super::super::merge::{self, Base, Side};
use super::super::record;
use super::super::state::RecordState;
use super::{Decision, Plan, billing_columns, external_hash, failed, value_id};
use crate::delivery::{ExternalWrite, ExternalWriteOp};

/// Unlinked external records `(external id, fields)`.
type Candidates = [(String, Map<String, Value>)];

/// Plans a billing-side change. `candidates` are unlinked external records
/// `(external id, fields)` for match rules; `parent_external_id` is the
/// linked external id of the record's parent, when the entity has one.
pub fn billing_change(
    mappings: &Mappings,
    entity: &EntityMap,
    state: &RecordState,
    change: &BillingChange,
    candidates: &Candidates,
    parent_external_id: Option<String>,
) -> Decision {
    let mut next = state.clone();
    if let Some(why) = nothing_to_sync(entity, state, change) {
        return Decision::nothing(why, next);
    }
    if change.is_delete() {
        return delete(entity, change, next);
    }
    let Some(row) = &change.after else {
        return Decision::nothing(SkipReason::NoRowImage, next);
    };
    let view = row_as_known(state, change, row);
    next.billing_changed_at = Some(change.committed_at);
    let parent_field = match parent_field(entity, &view, parent_external_id) {
        Ok(field) => field,
        Err(missing) => {
            return Decision {
                plan: missing.into(),
                state: next,
            };
        }
    };
    let billing_id = change.billing_id();
    if next.external_id.is_none() {
        match link(mappings, entity, &billing_id, &view, candidates, &mut next) {
            Link::Found => {}
            Link::Create => {
                return create(
                    mappings,
                    entity,
                    &billing_id,
                    &view,
                    change,
                    next,
                    parent_field,
                );
            }
            Link::Review(c) => {
                return Decision {
                    plan: Plan::Review(c),
                    state: next,
                };
            }
            Link::NoMatch => return Decision::nothing(SkipReason::NoMatch, next),
            Link::Invalid(e) => return failed(e, next),
        }
    }
    update(mappings, entity, state, change, &view, next, parent_field)
}

/// Why the change syncs nothing, whatever the row holds.
fn nothing_to_sync(
    entity: &EntityMap,
    state: &RecordState,
    change: &BillingChange,
) -> Option<SkipReason> {
    if change.is_own_write() {
        return Some(SkipReason::OwnWrite);
    }
    // A retry of a change that failed waiting for its parent, after a later
    // change of the record was processed: that one holds the newer row.
    if change.is_retry()
        && state
            .billing_changed_at
            .is_some_and(|t| t >= change.committed_at)
    {
        return Some(SkipReason::Superseded);
    }
    if !entity.fields.iter().any(|f| f.to_external) {
        return Some(SkipReason::NoMappedFields);
    }
    state.deleted.then_some(SkipReason::Deleted)
}

/// A deleted billing row deletes its linked external record.
fn delete(entity: &EntityMap, change: &BillingChange, mut next: RecordState) -> Decision {
    next.deleted = true;
    let Some(id) = next.external_id.clone() else {
        return Decision::nothing(SkipReason::DeletedBeforeLinked, next);
    };
    let op = ExternalWriteOp::Delete { external_id: id };
    let w = write(entity, &change.billing_id(), op, Map::new(), change, "d");
    Decision::write(Some(w), None, Vec::new(), next)
}

/// The row's billing view, where a row image committed before extsync's
/// last write of a field holds a stale value for it: the value extsync
/// wrote (the base) is kept.
fn row_as_known(
    state: &RecordState,
    change: &BillingChange,
    row: &Map<String, Value>,
) -> Map<String, Value> {
    let mut view = record::billing_view(row);
    for (field, written_at) in &state.billing_written {
        if change.committed_at <= *written_at
            && let (Ok(path), Some(v)) = (
                field.parse::<crate::config::FieldPath>(),
                state.base.alguna.get(field),
            )
        {
            record::set(&mut view, &path, v.clone());
        }
    }
    view
}

/// The external field that references the parent, with the parent's
/// external id; `Err` when the parent is not linked or not referenced.
fn parent_field(
    entity: &EntityMap,
    view: &Map<String, Value>,
    parent_external_id: Option<String>,
) -> Result<Option<(String, Value)>, NoParent> {
    match (&entity.parent, parent_external_id) {
        (None, _) => Ok(None),
        (Some(p), Some(ext)) => Ok(Some((p.external.clone(), Value::String(ext)))),
        (Some(p), None) => match view.get(&record::camel_case(&p.alguna)).and_then(value_id) {
            Some(id) => Err(NoParent::NotLinked {
                entity: p.entity.to_string(),
                billing_id: id,
            }),
            None => Err(NoParent::NotReferenced),
        },
    }
}

/// Why a child has no parent to reference.
enum NoParent {
    /// The row references a parent that is not linked yet: wait for it.
    NotLinked { entity: String, billing_id: String },
    /// The row references no parent.
    NotReferenced,
}

impl From<NoParent> for Plan {
    fn from(p: NoParent) -> Plan {
        match p {
            NoParent::NotLinked { entity, billing_id } => Plan::NeedsParent { entity, billing_id },
            NoParent::NotReferenced => Plan::Nothing(SkipReason::NoParentReference),
        }
    }
}

/// How an unlinked record came out of linking.
enum Link {
    /// Linked now (`next` holds the external id).
    Found,
    /// No counterpart: create one.
    Create,
    /// Several external records fit: a person decides.
    Review(Vec<(String, f64)>),
    /// None fits, and the rule creates none.
    NoMatch,
    /// What a create would write cannot be mapped.
    Invalid(String),
}

/// Links an unlinked record: to an external record that already carries
/// its billing id, by the external id stored on the row, or by the entity's
/// match rules.
fn link(
    mappings: &Mappings,
    entity: &EntityMap,
    billing_id: &str,
    view: &Map<String, Value>,
    candidates: &Candidates,
    next: &mut RecordState,
) -> Link {
    let carrying = entity.billing_id_field.as_deref().and_then(|f| {
        candidates
            .iter()
            .find(|(_, c)| c.get(f).and_then(value_id).as_deref() == Some(billing_id))
    });
    if let Some((id, fields)) = carrying {
        // A create that landed before extsync could record it. Adopt it,
        // with what the create wrote as the base (kept when it was sent;
        // this change may be a later one), so edits made on either side
        // since are merged rather than written over.
        if !next.create_sent
            && let Err(e) = planned(mappings, entity, view, &mut next.base)
        {
            return Link::Invalid(e);
        }
        next.external_id = Some(id.clone());
        next.external_image = fields.clone();
        return Link::Found;
    }
    if let Some(ext) = entity
        .external_id_field
        .as_deref()
        .and_then(|f| view.get(&record::camel_case(f)))
        .and_then(value_id)
        .map(|v| strip_provider(&v, &entity.integration))
    {
        next.external_id = Some(ext);
        return Link::Found;
    }
    let Some(rule) = &entity.matching else {
        return Link::Create;
    };
    let wanted = link::values_of(view, rule.fields.iter());
    let externals: Vec<(String, Vec<Option<String>>)> = candidates
        .iter()
        .map(|(id, fields)| (id.clone(), link::external_values_of(entity, rule, fields)))
        .collect();
    match link::best_match(rule, &wanted, &externals) {
        MatchResult::Linked(id) => {
            if let Some((_, fields)) = candidates.iter().find(|(c, _)| c == &id) {
                next.external_image = fields.clone();
            }
            next.external_id = Some(id);
            Link::Found
        }
        MatchResult::Ambiguous(c) => Link::Review(c),
        MatchResult::NoMatch if !rule.create_if_not_found => Link::NoMatch,
        MatchResult::NoMatch => Link::Create,
    }
}

/// A linked record: the row merged three-way with the latest known external
/// image; what the external side lacks is updated there, what the billing
/// side lacks is written to its columns.
fn update(
    mappings: &Mappings,
    entity: &EntityMap,
    state: &RecordState,
    change: &BillingChange,
    view: &Map<String, Value>,
    mut next: RecordState,
    parent_field: Option<(String, Value)>,
) -> Decision {
    let external_at = state
        .external_changed_at
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let image = next.external_image.clone();
    let result = merge::merge(
        mappings,
        entity,
        std::mem::take(&mut next.base),
        Side {
            fields: view,
            changed_at: change.committed_at,
        },
        Side {
            fields: &image,
            changed_at: external_at,
        },
    );
    let mut m = match result {
        Ok(m) => m,
        Err(e) => return failed(e.to_string(), state.clone()),
    };
    next.base = std::mem::take(&mut m.base);
    let external_id = next.external_id.clone().expect("linked");
    let mut to_external = m.to_external;
    if !to_external.is_empty()
        && let Some((f, v)) = parent_field
    {
        to_external.entry(f).or_insert(v);
    }
    let external = (!to_external.is_empty()).then(|| {
        for (k, v) in &to_external {
            next.external_image.insert(k.clone(), v.clone());
        }
        next.written_hash = Some(external_hash(entity, &next.external_image));
        let op = ExternalWriteOp::Update { external_id };
        write(entity, &change.billing_id(), op, to_external, change, "u")
    });
    let billing = billing_columns(view, &m.to_alguna);
    Decision::write(external, billing, m.resolutions, next)
}

/// The external fields a create of `view` writes; `base` takes the values
/// both sides hold once it has landed.
fn planned(
    mappings: &Mappings,
    entity: &EntityMap,
    view: &Map<String, Value>,
    base: &mut Base,
) -> Result<Map<String, Value>, String> {
    let mut fields = Map::new();
    for f in entity.fields.iter().filter(|f| f.to_external) {
        if let Some(v) = mappings.to_external(f, view).map_err(|e| e.to_string())? {
            record::set(&mut fields, &f.external, v);
        }
        if let Some(v) = record::get(view, &f.alguna) {
            base.alguna.insert(f.alguna.as_str().to_string(), v.clone());
            let ext = record::get(&fields, &f.external)
                .cloned()
                .unwrap_or(Value::Null);
            base.external.insert(f.alguna.as_str().to_string(), ext);
        }
    }
    Ok(fields)
}

fn create(
    mappings: &Mappings,
    entity: &EntityMap,
    billing_id: &str,
    view: &Map<String, Value>,
    change: &BillingChange,
    mut next: RecordState,
    parent_field: Option<(String, Value)>,
) -> Decision {
    let mut fields = match planned(mappings, entity, view, &mut next.base) {
        Ok(f) => f,
        Err(e) => return failed(e, next),
    };
    if let Some((f, v)) = parent_field {
        fields.insert(f, v);
    }
    if let Some(f) = &entity.billing_id_field {
        fields.insert(f.clone(), Value::String(billing_id.to_string()));
    }
    next.external_image = fields.clone();
    next.written_hash = Some(external_hash(entity, &fields));
    next.create_sent = true;
    let w = write(
        entity,
        billing_id,
        ExternalWriteOp::Create,
        fields,
        change,
        "c",
    );
    Decision::write(Some(w), None, Vec::new(), next)
}

fn write(
    entity: &EntityMap,
    billing_id: &str,
    op: ExternalWriteOp,
    fields: Map<String, Value>,
    change: &BillingChange,
    kind: &str,
) -> ExternalWrite {
    ExternalWrite {
        integration: entity.integration.clone(),
        entity: entity.entity.clone(),
        object: entity.object.clone(),
        billing_id: billing_id.to_string(),
        op,
        fields,
        billing_id_field: entity.billing_id_field.clone(),
        idempotency_key: format!(
            "{}:{}:{}:{}:{}",
            entity.integration,
            entity.entity,
            billing_id,
            kind,
            change.committed_at.timestamp_micros()
        ),
    }
}

/// `salesforce:001ABC` → `001ABC` for the integration's own provider prefix.
fn strip_provider(v: &str, integration: &str) -> String {
    match v.split_once(':') {
        Some((prefix, id)) if prefix.eq_ignore_ascii_case(integration) || is_provider(prefix) => {
            id.to_string()
        }
        _ => v.to_string(),
    }
}

fn is_provider(s: &str) -> bool {
    ["salesforce", "hubspot", "quickbooks", "netsuite", "xero"]
        .contains(&s.to_ascii_lowercase().as_str())
}
