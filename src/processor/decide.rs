//! What to do about one change of one record for one integration entity:
//! suppress echoes, link, merge against the base, and plan the writes. Pure:
//! the engine loads what this needs and applies what it plans.
//!
//! ```text
//!  change + state ──► echo? ──► linked? ──► merge ──► Plan (writes, resolutions) + next state
//!                                  └─ no ─► externalIdField / match rules / createIfNotFound
//! ```

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::change::BillingChange;
use super::events::SkipReason;
use super::link::{self, MatchResult};
use super::mapping::{EntityMap, FieldMap, Mappings};
use super::merge::{self, Base, Resolution, Side};
use super::record;
use super::state::RecordState;
use crate::connectors::record::ChangeOp;
use crate::delivery::{ExternalWrite, ExternalWriteOp};
use crate::ingest::ExternalChange;

/// What the engine should do.
///
/// One plan exists per change and is moved once into the batch's writes, so
/// the size of `Write` costs nothing worth a box.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Plan {
    /// Nothing to write, and why (reported in the record's `skipped` event).
    Nothing(SkipReason),
    Write {
        external: Option<ExternalWrite>,
        /// Billing columns to set (column name → value).
        billing: Option<Map<String, Value>>,
        resolutions: Vec<Resolution>,
    },
    /// Several candidates could be the counterpart: a person decides.
    Review(Vec<(String, f64)>),
    /// The record must wait until its parent is linked.
    NeedsParent { entity: String, billing_id: String },
    /// The change cannot be synced (e.g. a transform failed).
    Failed {
        error_type: &'static str,
        message: String,
    },
}

impl Plan {
    /// One line for logs: what will be written, or why nothing is.
    pub fn summary(&self) -> String {
        match self {
            Plan::Nothing(why) => format!("nothing: {why}"),
            Plan::Write {
                external,
                billing,
                resolutions,
            } => format!(
                "write external [{}] billing [{}] resolutions {}",
                external
                    .as_ref()
                    .map(|w| w.fields.keys().cloned().collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                billing
                    .as_ref()
                    .map(|b| b.keys().cloned().collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                resolutions.len()
            ),
            Plan::Review(c) => format!("review: {} candidates", c.len()),
            Plan::NeedsParent { entity, billing_id } => format!("waits for {entity} {billing_id}"),
            Plan::Failed {
                error_type,
                message,
            } => format!("failed: {error_type}: {message}"),
        }
    }
}

/// A plan and the state to keep once it is carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub plan: Plan,
    pub state: RecordState,
}

impl Decision {
    /// The writes of a merge, or nothing when it leaves both sides as they
    /// are and resolved no conflict.
    fn write(
        external: Option<ExternalWrite>,
        billing: Option<Map<String, Value>>,
        resolutions: Vec<Resolution>,
        state: RecordState,
    ) -> Decision {
        let plan = if external.is_none() && billing.is_none() && resolutions.is_empty() {
            Plan::Nothing(SkipReason::InSync)
        } else {
            Plan::Write {
                external,
                billing,
                resolutions,
            }
        };
        Decision { plan, state }
    }
}

/// Marker in a change's origin that says extsync made it (Salesforce
/// `changeOrigin` carries the client id `extsync`).
pub const ORIGIN_MARKER: &str = "extsync";

/// Hash of the external fields extsync writes, to recognise echoes.
pub fn external_hash(entity: &EntityMap, fields: &Map<String, Value>) -> String {
    hash_fields(entity.fields.iter().filter(|f| f.to_external), fields)
}

/// Whether two external images agree on every mapped field, whatever its direction.
fn same_mapped_fields(entity: &EntityMap, a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    entity
        .fields
        .iter()
        .all(|f| record::get(a, &f.external) == record::get(b, &f.external))
}

fn hash_fields<'a>(
    mapped: impl Iterator<Item = &'a FieldMap>,
    fields: &Map<String, Value>,
) -> String {
    // The hash of the JSON object of the fields, sorted by name (the last
    // of a repeated name wins), written straight into the hash.
    let mut picked: Vec<(&str, &Value)> = mapped
        .filter_map(|f| record::get(fields, &f.external).map(|v| (f.external.as_str(), v)))
        .collect();
    picked.sort_by_key(|(name, _)| *name);
    let mut out = HashWriter(Sha256::new());
    out.0.update(b"{");
    let mut first = true;
    for (i, (name, value)) in picked.iter().enumerate() {
        if picked.get(i + 1).is_some_and(|(next, _)| next == name) {
            continue;
        }
        if !first {
            out.0.update(b",");
        }
        first = false;
        serde_json::to_writer(&mut out, name).expect("names serialize");
        out.0.update(b":");
        serde_json::to_writer(&mut out, value).expect("JSON values serialize");
    }
    out.0.update(b"}");
    hex::encode(&out.0.finalize()[..16])
}

/// Feeds what is written to a hash.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Plans a billing-side change. `candidates` are unlinked external records
/// `(external id, fields)` for match rules; `parent_external_id` is the
/// linked external id of the record's parent, when the entity has one.
pub fn billing_change(
    mappings: &Mappings,
    entity: &EntityMap,
    state: &RecordState,
    change: &BillingChange,
    candidates: &[(String, Map<String, Value>)],
    parent_external_id: Option<String>,
) -> Decision {
    let mut next = state.clone();
    let billing_id = change.billing_id();
    if change.is_own_write() {
        return Decision {
            plan: Plan::Nothing(SkipReason::OwnWrite),
            state: next,
        };
    }
    // A retry of a change that failed waiting for its parent, after a later
    // change of the record was processed: that one holds the newer row.
    if change.is_retry()
        && state
            .billing_changed_at
            .is_some_and(|t| t >= change.committed_at)
    {
        return Decision {
            plan: Plan::Nothing(SkipReason::Superseded),
            state: next,
        };
    }
    if !entity.fields.iter().any(|f| f.to_external) {
        return Decision {
            plan: Plan::Nothing(SkipReason::NoMappedFields),
            state: next,
        };
    }
    if state.deleted {
        return Decision {
            plan: Plan::Nothing(SkipReason::Deleted),
            state: next,
        };
    }
    if change.is_delete() {
        next.deleted = true;
        let plan = match &state.external_id {
            Some(id) => Plan::Write {
                external: Some(write(
                    entity,
                    &billing_id,
                    ExternalWriteOp::Delete {
                        external_id: id.clone(),
                    },
                    Map::new(),
                    change,
                    "d",
                )),
                billing: None,
                resolutions: Vec::new(),
            },
            None => Plan::Nothing(SkipReason::DeletedBeforeLinked),
        };
        return Decision { plan, state: next };
    }
    let Some(row) = &change.after else {
        return Decision {
            plan: Plan::Nothing(SkipReason::NoRowImage),
            state: next,
        };
    };
    let mut view = record::billing_view(row);
    // A row image committed before extsync's last write of a field holds a
    // stale value for it: keep the value extsync wrote (the base).
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
    next.billing_changed_at = Some(change.committed_at);

    let parent_field = match (&entity.parent, parent_external_id) {
        (None, _) => None,
        (Some(p), Some(ext)) => Some((p.external.clone(), Value::String(ext))),
        (Some(p), None) => {
            let parent_billing = view.get(&record::camel_case(&p.alguna)).map(value_id);
            return match parent_billing {
                Some(Some(id)) => Decision {
                    plan: Plan::NeedsParent {
                        entity: p.entity.to_string(),
                        billing_id: id,
                    },
                    state: next,
                },
                _ => Decision {
                    plan: Plan::Nothing(SkipReason::NoParentReference),
                    state: next,
                },
            };
        }
    };

    if state.external_id.is_none()
        && let Some((id, fields)) = entity.billing_id_field.as_deref().and_then(|f| {
            candidates
                .iter()
                .find(|(_, c)| c.get(f).and_then(value_id).as_deref() == Some(billing_id.as_str()))
        })
    {
        // The external record already carries this billing id: a create
        // that landed before extsync could record it. Adopt it, with what
        // the create wrote as the base (kept when it was sent; this change
        // may be a later one), so edits made on either side since are
        // merged rather than written over.
        if !state.create_sent
            && let Err(e) = planned(mappings, entity, &view, &mut next.base)
        {
            return failed(e, next);
        }
        next.external_id = Some(id.clone());
        next.external_image = fields.clone();
    } else if state.external_id.is_none() {
        // Link by the external id stored on the billing row.
        if let Some(ext) = entity
            .external_id_field
            .as_deref()
            .and_then(|f| view.get(&record::camel_case(f)))
            .and_then(value_id)
            .map(|v| strip_provider(&v, &entity.integration))
        {
            next.external_id = Some(ext);
        } else {
            // Match rules against unlinked external records.
            if let Some(rule) = &entity.matching {
                let wanted = link::values_of(&view, rule.fields.iter());
                let externals: Vec<(String, Vec<Option<String>>)> = candidates
                    .iter()
                    .map(|(id, fields)| {
                        let vals = rule
                            .fields
                            .iter()
                            .map(|p| {
                                entity
                                    .fields
                                    .iter()
                                    .find(|f| &f.alguna == p)
                                    .and_then(|f| record::get(fields, &f.external))
                                    .and_then(link::normalize)
                            })
                            .collect();
                        (id.clone(), vals)
                    })
                    .collect();
                match link::best_match(rule, &wanted, &externals) {
                    MatchResult::Linked(id) => {
                        next.external_id = Some(id.clone());
                        if let Some((_, fields)) = candidates.iter().find(|(c, _)| c == &id) {
                            next.external_image = fields.clone();
                        }
                    }
                    MatchResult::Ambiguous(c) => {
                        return Decision {
                            plan: Plan::Review(c),
                            state: next,
                        };
                    }
                    MatchResult::NoMatch if !rule.create_if_not_found => {
                        return Decision {
                            plan: Plan::Nothing(SkipReason::NoMatch),
                            state: next,
                        };
                    }
                    MatchResult::NoMatch => {}
                }
            }
            if next.external_id.is_none() {
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
        }
    }

    // Linked: merge against the latest known external image.
    let external_at = state
        .external_changed_at
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let image = next.external_image.clone();
    let result = merge::merge(
        mappings,
        entity,
        std::mem::take(&mut next.base),
        Side {
            fields: &view,
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
        write(
            entity,
            &billing_id,
            ExternalWriteOp::Update { external_id },
            to_external,
            change,
            "u",
        )
    });
    let billing = billing_columns(&view, &m.to_alguna);
    Decision::write(external, billing, m.resolutions, next)
}

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
    // An image older than one already processed: nothing new.
    if state
        .external_changed_at
        .is_some_and(|t| t > change.modified_at)
    {
        return Decision {
            plan: Plan::Nothing(SkipReason::OlderVersion),
            state: state.clone(),
        };
    }
    let same_version = state.external_version.as_deref() == Some(change.version.as_str());
    let seen = |image: Map<String, Value>| {
        let mut next = state.with_image(image);
        next.external_version = Some(change.version.clone());
        next.external_changed_at = Some(change.modified_at);
        next
    };
    if change.op == ChangeOp::Delete {
        // A deletion on the external side unlinks; the billing row stays
        // (billing is the system of record) and is not re-created externally.
        let mut next = seen(state.external_image.clone());
        next.deleted = true;
        return Decision {
            plan: Plan::Nothing(SkipReason::DeletedExternally),
            state: next,
        };
    }
    let after = current_image(entity, state, change);
    // Nothing new when the mapped fields are what extsync already knows the
    // record holds. Neither the version nor `changeOrigin` alone is enough:
    // the version extsync's write returned, and the image read for an echo,
    // can both include a change someone made just before that write, which
    // the merge below must still see.
    let known = same_mapped_fields(entity, &after, &state.external_image);
    if known {
        let own = change
            .origin
            .as_deref()
            .is_some_and(|o| o.contains(ORIGIN_MARKER))
            || state
                .written_hash
                .as_deref()
                .is_some_and(|h| h == external_hash(entity, &after));
        let why = match (same_version, own) {
            (true, _) => SkipReason::VersionSeen,
            (false, true) => SkipReason::Echo,
            (false, false) => SkipReason::NoMappedChange,
        };
        return Decision {
            plan: Plan::Nothing(why),
            state: seen(after),
        };
    }
    let mut next = seen(after);
    if state.deleted {
        return Decision {
            plan: Plan::Nothing(SkipReason::Deleted),
            state: next,
        };
    }
    let Some(view) = billing_view else {
        return Decision {
            plan: Plan::Nothing(SkipReason::NotLinked),
            state: next,
        };
    };
    if !entity.fields.iter().any(|f| f.to_alguna || f.to_external) {
        return Decision {
            plan: Plan::Nothing(SkipReason::NoMappedFields),
            state: next,
        };
    }
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
            fields: m.to_external.clone(),
            billing_id_field: entity.billing_id_field.clone(),
            idempotency_key: format!(
                "{}:{}:{}",
                entity.integration, change.external_id, change.version
            ),
        }
    });
    Decision::write(external, billing, m.resolutions, next)
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
        || state
            .external_changed_at
            .is_some_and(|t| t > change.modified_at)
    {
        return None;
    }
    let mut next = state.with_image(current_image(entity, state, change));
    next.external_version = Some(change.version.clone());
    next.external_changed_at = Some(change.modified_at);
    Some(next)
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
    Decision {
        plan: Plan::Write {
            external: Some(w),
            billing: None,
            resolutions: Vec::new(),
        },
        state: next,
    }
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

/// Billing columns for merged view paths: nested paths rewrite their whole
/// JSON column with the one value changed.
fn billing_columns(
    view: &Map<String, Value>,
    to_alguna: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    if to_alguna.is_empty() {
        return None;
    }
    let mut updated = view.clone();
    let mut columns = Map::new();
    for (path, value) in to_alguna {
        let p: crate::config::FieldPath = path.parse().expect("mapping paths are valid");
        record::set(&mut updated, &p, value.clone());
        let top = p
            .segments()
            .next()
            .expect("a path has a segment")
            .to_string();
        columns.insert(record::snake_case(&top), updated[&top].clone());
    }
    Some(columns)
}

fn failed(message: String, state: RecordState) -> Decision {
    Decision {
        plan: Plan::Failed {
            error_type: "field_validation",
            message,
        },
        state,
    }
}

fn value_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
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
