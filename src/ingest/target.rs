//! One integration as ingest sees it: its connector and which external
//! objects map to which billing entities.

use std::sync::Arc;

use chrono::Utc;

use super::event::{ChangeSource, ExternalChange};
use crate::config::{Integration, Provider};
use crate::connectors::record::ChangeOp;
use crate::connectors::{Connector, ExternalRecord};

pub struct IngestTarget {
    pub id: String,
    pub provider: Provider,
    pub connector: Arc<dyn Connector>,
    /// `(entity, external object)` pairs, in config order.
    pub entities: Vec<(String, String)>,
}

impl IngestTarget {
    pub fn new(id: &str, integration: &Integration, connector: Arc<dyn Connector>) -> Self {
        Self {
            id: id.to_string(),
            provider: integration.provider,
            connector,
            entities: integration
                .entities
                .iter()
                .map(|(name, e)| (name.to_string(), e.external_object.clone()))
                .collect(),
        }
    }

    /// The configured spelling of `object` and its entity; systems differ in
    /// case and number (`contact` events for `contacts` objects).
    pub fn entity_for(&self, object: &str) -> Option<(&str, &str)> {
        let wanted = object.to_ascii_lowercase();
        self.entities
            .iter()
            .find(|(_, o)| {
                let o = o.to_ascii_lowercase();
                o == wanted || o.strip_suffix('s') == Some(wanted.as_str())
            })
            .map(|(e, o)| (e.as_str(), o.as_str()))
    }

    /// A change event for a record read from the system.
    pub fn change_from_record(
        &self,
        entity: &str,
        record: ExternalRecord,
        op: ChangeOp,
        source: ChangeSource,
        changed_fields: Vec<String>,
        origin: Option<String>,
    ) -> ExternalChange {
        let deleted = record.deleted || op == ChangeOp::Delete;
        ExternalChange {
            system: self.provider.as_str().to_string(),
            integration: self.id.clone(),
            entity: entity.to_string(),
            object: record.object,
            external_id: record.id,
            op: if deleted { ChangeOp::Delete } else { op },
            after: (!deleted).then_some(record.fields),
            changed_fields,
            version: record.version,
            modified_at: record.modified_at,
            source,
            origin,
            received_at: Utc::now(),
        }
    }
}
