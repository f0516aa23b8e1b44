//! Field mappings compiled from the pipeline: for each integration and
//! entity, which billing path maps to which external path, in which
//! direction, through which transform, under which conflict strategy.
//!
//! ```text
//!  billing view ──to_external──► external fields
//!  external fields ──to_alguna──► billing view
//! ```

use std::sync::Arc;

use serde_json::{Map, Value};

use super::record;
use super::transform::{self, CompileError, CustomTransforms, TransformError};
use crate::config::{
    Direction, Entity, FieldPath, Matching, ParentRef, Pipeline, Strategy, TableName, Transform,
    Trigger,
};

/// One compiled field mapping.
#[derive(Debug, Clone)]
pub struct FieldMap {
    pub alguna: FieldPath,
    pub external: FieldPath,
    /// Billing changes flow to the external system.
    pub to_external: bool,
    /// External changes flow to the billing database.
    pub to_alguna: bool,
    pub transform: Transform,
    /// Index of the compiled function for `transform: custom`.
    pub custom: Option<usize>,
    pub strategy: Strategy,
}

/// One entity of one integration.
#[derive(Debug, Clone)]
pub struct EntityMap {
    pub integration: String,
    pub entity: String,
    pub object: String,
    pub table: TableName,
    pub fields: Vec<FieldMap>,
    pub external_id_field: Option<String>,
    pub billing_id_field: Option<String>,
    pub parent: Option<ParentRef>,
    pub matching: Option<Matching>,
    /// Direction of the integration as a whole.
    pub direction: Direction,
    /// Billing changes trigger a sync (`onAlgunaChange`).
    pub on_alguna_change: bool,
    /// Webhooks and change streams trigger a sync (`onWebhook`); polled
    /// changes always do.
    pub on_webhook: bool,
}

/// Every mapping of a pipeline and the custom functions they use.
pub struct Mappings {
    pub entities: Vec<EntityMap>,
    pub custom: Arc<CustomTransforms>,
}

impl Mappings {
    /// Compiles the pipeline's mappings; custom functions compile here, once.
    pub fn compile(pipeline: &Pipeline) -> Result<Self, CompileError> {
        let mut bodies: Vec<&str> = Vec::new();
        let mut entities = Vec::new();
        for (iid, integration) in pipeline.integrations.iter().filter(|(_, i)| i.enabled) {
            for (name, entity) in &integration.entities {
                let mut e = compile_entity(
                    iid.as_str(),
                    name.as_str(),
                    entity,
                    integration.direction,
                    &mut bodies,
                );
                e.on_alguna_change = integration.triggers.contains(&Trigger::OnAlgunaChange);
                e.on_webhook = integration.triggers.contains(&Trigger::OnWebhook);
                entities.push(e);
            }
        }
        let custom = CustomTransforms::compile(bodies.iter().copied())?;
        Ok(Self {
            entities,
            custom: Arc::new(custom),
        })
    }

    /// The mappings of `integration` alone, sharing the compiled custom
    /// functions.
    pub fn of_integration(&self, integration: &str) -> Self {
        Self {
            entities: self
                .entities
                .iter()
                .filter(|e| e.integration == integration)
                .cloned()
                .collect(),
            custom: self.custom.clone(),
        }
    }

    /// `<schema>.<table>` of every entity that is another's parent.
    pub fn parent_tables(&self) -> std::collections::HashSet<String> {
        (self.entities.iter())
            .filter_map(|e| {
                let p = e.parent.as_ref()?;
                self.for_external(&e.integration, p.entity.as_str())
            })
            .map(|p| format!("{}.{}", p.table.schema(), p.table.table()))
            .collect()
    }

    /// Entities captured from `schema.table`.
    pub fn for_table<'a>(
        &'a self,
        schema: &'a str,
        table: &'a str,
    ) -> impl Iterator<Item = &'a EntityMap> + 'a {
        self.entities
            .iter()
            .filter(move |e| e.table.schema() == schema && e.table.table() == table)
    }

    /// The entity of an integration's external object.
    pub fn for_external(&self, integration: &str, entity: &str) -> Option<&EntityMap> {
        self.entities
            .iter()
            .find(|e| e.integration == integration && e.entity == entity)
    }

    /// The external value of `field` for a billing view; `None` when the
    /// billing record has no such path.
    pub fn to_external(
        &self,
        field: &FieldMap,
        view: &Map<String, Value>,
    ) -> Result<Option<Value>, TransformError> {
        let Some(v) = record::get(view, &field.alguna) else {
            return Ok(None);
        };
        match field.custom {
            Some(i) => self.custom.call(i, v, view).map(Some),
            None => transform::forward(field.transform, v).map(Some),
        }
    }

    /// The billing value of `field` for external fields.
    pub fn to_alguna(
        &self,
        field: &FieldMap,
        external: &Map<String, Value>,
    ) -> Result<Option<Value>, TransformError> {
        let Some(v) = record::get(external, &field.external) else {
            return Ok(None);
        };
        transform::reverse(field.transform, v).map(Some)
    }
}

fn compile_entity<'a>(
    integration: &str,
    name: &str,
    entity: &'a Entity,
    direction: Direction,
    bodies: &mut Vec<&'a str>,
) -> EntityMap {
    let fields = entity
        .mappings
        .iter()
        .map(|m| {
            let custom = m
                .function
                .as_deref()
                .filter(|_| m.transform == Transform::Custom)
                .map(|body| {
                    bodies.push(body);
                    bodies.len() - 1
                });
            FieldMap {
                alguna: m.alguna.clone(),
                external: m.external.clone(),
                // A field flows only where both the integration and the field allow it.
                to_external: direction.to_external() && m.direction.to_external(),
                to_alguna: direction.to_alguna() && m.direction.to_alguna(),
                transform: m.transform,
                custom,
                strategy: entity.conflict_resolution.strategy_for(&m.alguna),
            }
        })
        .collect();
    EntityMap {
        integration: integration.to_string(),
        entity: name.to_string(),
        object: entity.external_object.clone(),
        table: entity.table.clone(),
        fields,
        external_id_field: entity.external_id_field.clone(),
        billing_id_field: entity.billing_id_field.clone(),
        parent: entity.parent.clone(),
        matching: entity.matching.clone(),
        direction,
        on_alguna_change: true,
        on_webhook: true,
    }
}
