//! An external change of one record: skipped when it is older than what was
//! seen, an echo of extsync's own write or a deletion (which unlinks), else
//! merged three-way with the linked billing row as it is now.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::super::events::SkipReason;
use super::super::mapping::{EntityMap, Mappings};
use super::super::merge::{self, Side};
use super::super::record;
use super::super::state::RecordState;
use super::{Decision, ORIGIN_MARKER, billing_columns, external_hash, failed, same_mapped_fields};
use crate::connectors::record::ChangeOp;
use crate::delivery::{ExternalWrite, ExternalWriteOp};
use crate::ingest::ExternalChange;

/// Plans an external change. `billing_view` is the linked billing row as it
/// is now (`None` when the record is not linked or the row is gone).
pub fn external_change(
    mappings: &Mappings,
    entity: &EntityMap,
    state: &RecordState,
    billing_id: &str,
    change: &ExternalChange,
    billing_view: Option<&Map<String, Value>>,
) -> Decision {
    if older_than_seen(state, change) {
        return Decision::nothing(SkipReason::OlderVersion, state.clone());
    }
    if change.op == ChangeOp::Delete {
        return delete(state, change);
    }
    let after = current_image(entity, state, change);
    // Nothing new when the mapped fields are what extsync already knows the
    // record holds. Neither the version nor `changeOrigin` alone is enough:
    // the version extsync's write returned, and the image read for an echo,
    // can both include a change someone made just before that write, which
    // the merge below must still see.
    if same_mapped_fields(entity, &after, &state.external_image) {
        let why = known_image(entity, state, change, &after);
        return Decision::nothing(why, seen(state, change, after));
    }
    let next = seen(state, change, after);
    let view = match billing_view {
        _ if state.deleted => return Decision::nothing(SkipReason::Deleted, next),
        None => return Decision::nothing(SkipReason::NotLinked, next),
        Some(view) => view,
    };
    if !entity.fields.iter().any(|f| f.to_alguna || f.to_external) {
        return Decision::nothing(SkipReason::NoMappedFields, next);
    }
    merge_with_billing(mappings, entity, state, billing_id, change, view, next)
}

/// Whether an image newer than `change`'s was already processed.
fn older_than_seen(state: &RecordState, change: &ExternalChange) -> bool {
    state
        .external_changed_at
        .is_some_and(|t| t > change.modified_at)
}

/// `state` having seen `change` with `image`: its version and time.
fn seen(state: &RecordState, change: &ExternalChange, image: Map<String, Value>) -> RecordState {
    let mut next = state.with_image(image);
    next.external_version = Some(change.version.clone());
    next.external_changed_at = Some(change.modified_at);
    next
}

/// A deletion on the external side unlinks; the billing row stays (billing
/// is the system of record) and is not re-created externally.
fn delete(state: &RecordState, change: &ExternalChange) -> Decision {
    let mut next = seen(state, change, state.external_image.clone());
    next.deleted = true;
    Decision::nothing(SkipReason::DeletedExternally, next)
}

/// Why an image whose mapped fields extsync already knows is skipped: a
/// version seen before, an echo of extsync's own write (by `changeOrigin`
/// or by the hash of what was written), or a change to unmapped fields.
fn known_image(
    entity: &EntityMap,
    state: &RecordState,
    change: &ExternalChange,
    after: &Map<String, Value>,
) -> SkipReason {
    if state.external_version.as_deref() == Some(change.version.as_str()) {
        return SkipReason::VersionSeen;
    }
    let own = change
        .origin
        .as_deref()
        .is_some_and(|o| o.contains(ORIGIN_MARKER))
        || state
            .written_hash
            .as_deref()
            .is_some_and(|h| h == external_hash(entity, after));
    if own {
        SkipReason::Echo
    } else {
        SkipReason::NoMappedChange
    }
}

/// Merges the external image in `next` three-way with the billing row as
/// it is now: billing columns to write, and an update of the external
/// record when the billing side wins fields the image does not hold.
fn merge_with_billing(
    mappings: &Mappings,
    entity: &EntityMap,
    state: &RecordState,
    billing_id: &str,
    change: &ExternalChange,
    view: &Map<String, Value>,
    mut next: RecordState,
) -> Decision {
    let billing_at = state
        .billing_changed_at
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let mut m = match merge::merge(
        mappings,
        entity,
        std::mem::take(&mut next.base),
        Side {
            fields: view,
            changed_at: billing_at,
        },
        Side {
            fields: &next.external_image,
            changed_at: change.modified_at,
        },
    ) {
        Ok(m) => m,
        Err(e) => return failed(e.to_string(), state.clone()),
    };
    next.base = std::mem::take(&mut m.base);
    let billing = billing_columns(view, &m.to_alguna);
    let external = (!m.to_external.is_empty()).then(|| {
        for (k, v) in &m.to_external {
            next.external_image.insert(k.clone(), v.clone());
        }
        next.written_hash = Some(external_hash(entity, &next.external_image));
        update(entity, state, billing_id, change, m.to_external.clone())
    });
    Decision::write(external, billing, m.resolutions, next)
}

/// The update of the external record that `change` came from.
fn update(
    entity: &EntityMap,
    state: &RecordState,
    billing_id: &str,
    change: &ExternalChange,
    fields: Map<String, Value>,
) -> ExternalWrite {
    let id = state
        .external_id
        .clone()
        .unwrap_or_else(|| change.external_id.clone());
    ExternalWrite {
        integration: entity.integration.clone(),
        entity: entity.entity.clone(),
        object: entity.object.clone(),
        billing_id: billing_id.to_string(),
        op: ExternalWriteOp::Update { external_id: id },
        fields,
        billing_id_field: entity.billing_id_field.clone(),
        idempotency_key: format!(
            "{}:{}:{}",
            entity.integration, change.external_id, change.version
        ),
    }
}

/// The external change's image, with the values extsync wrote since it
/// was modified: an image modified before extsync's last write of a field
/// holds a stale value for it, so the value extsync wrote (the base) is kept.
fn current_image(
    entity: &EntityMap,
    state: &RecordState,
    change: &ExternalChange,
) -> Map<String, Value> {
    let mut after = change.after.clone().unwrap_or_default();
    for (field, written_at) in &state.external_written {
        if change.modified_at <= *written_at
            && let (Some(f), Some(v)) = (
                entity.fields.iter().find(|f| f.alguna.as_str() == field),
                state.base.external.get(field),
            )
        {
            record::set(&mut after, &f.external, v.clone());
        }
    }
    after
}

/// `state` as it is once a later external change of the linked record is
/// seen: its image, version and modification time, with nothing merged.
/// A billing change merges with it when both wait in the same batch, so an
/// edit made on each side while extsync was away is a conflict, whichever
/// comes first. `None` when the change adds nothing: not linked, a deletion,
/// or an image older than one already seen.
pub fn with_external(
    entity: &EntityMap,
    state: &RecordState,
    change: &ExternalChange,
) -> Option<RecordState> {
    if state.external_id.is_none()
        || state.deleted
        || change.op == ChangeOp::Delete
        || change.after.is_none()
        || older_than_seen(state, change)
    {
        return None;
    }
    Some(seen(state, change, current_image(entity, state, change)))
}
