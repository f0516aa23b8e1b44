//! External edits not seen yet. A billing change of a linked record is
//! merged against the external image extsync last saw; an edit made in the
//! external system moments ago may still be on its way (webhook, stream or
//! poll), and writing over it would lose it without a conflict. So, before
//! deciding, the processor reads back the linked records whose billing
//! change could conflict and that have no external change later in the
//! same batch. A record whose version moved since it was last seen is
//! merged as if its external change had come in the same batch: three-way,
//! with the field strategies. When the change itself arrives later, its
//! version is already known and it changes nothing.
//!
//! ```text
//!  billing change (linked, a two-way field) ──read back──► newer version? ──► merged with it
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::Utc;

use super::mapping::EntityMap;
use super::sinks::{ExternalSink, SinkError};
use super::state::{RecordKey, RecordState};
use crate::connectors::record::ChangeOp;
use crate::ingest::{ChangeSource, ExternalChange};

/// Whether a billing change of `entity` can conflict with an external edit:
/// some field syncs both ways. Under `alguna_wins` too: the billing value
/// wins, and the conflict is still recorded.
pub fn can_conflict(entity: &EntityMap) -> bool {
    entity.fields.iter().any(|f| f.to_external && f.to_alguna)
}

/// The external changes not seen yet of `records` (each a linked record
/// whose billing change is about to be decided), by record.
pub async fn read_back<'a>(
    sinks: &HashMap<String, Arc<dyn ExternalSink>>,
    records: impl Iterator<Item = (&'a EntityMap, &'a RecordKey, &'a RecordState)>,
) -> Result<HashMap<RecordKey, ExternalChange>, SinkError> {
    // Per integration and object: the records to read, by external id.
    type Wanted<'a> = HashMap<String, (&'a RecordKey, &'a RecordState)>;
    let mut wanted: BTreeMap<(&str, &str), (&EntityMap, Wanted<'a>)> = BTreeMap::new();
    for (entity, key, state) in records {
        let Some(id) = &state.external_id else {
            continue;
        };
        wanted
            .entry((entity.integration.as_str(), entity.object.as_str()))
            .or_insert_with(|| (entity, HashMap::new()))
            .1
            .insert(id.clone(), (key, state));
    }
    let mut out = HashMap::new();
    for ((integration, object), (entity, records)) in wanted {
        let Some(sink) = sinks.get(integration) else {
            continue;
        };
        let ids: Vec<String> = records.keys().cloned().collect();
        for found in sink.current(object, &ids).await? {
            let Some((key, state)) = records.get(&found.id) else {
                continue;
            };
            let moved = state.external_version.as_deref() != Some(found.version.as_str())
                && state
                    .external_changed_at
                    .is_none_or(|seen| found.modified_at > seen);
            if !moved || found.deleted {
                continue;
            }
            out.insert(
                (*key).clone(),
                ExternalChange {
                    system: integration.to_string(),
                    integration: integration.to_string(),
                    entity: entity.entity.clone(),
                    object: object.to_string(),
                    external_id: found.id,
                    op: ChangeOp::Update,
                    after: Some(found.fields),
                    changed_fields: Vec::new(),
                    version: found.version,
                    modified_at: found.modified_at,
                    source: ChangeSource::Poll,
                    origin: None,
                    received_at: Utc::now(),
                },
            );
        }
    }
    Ok(out)
}
