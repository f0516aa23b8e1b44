//! Rules that span several fields of a pipeline file, checked once the whole
//! file has been read into a [`Pipeline`].
//!
//! ```text
//!  Pipeline ──violations──► (path, key or value, message) ──locate──► file:line:col
//! ```

use std::collections::BTreeMap;

use super::locate::{NodePath, Part};
use super::pipeline::{Entity, FieldMapping, FieldPath, Pipeline, Provider, Transform};

/// Most partitions of a topic keyed by record.
const MAX_PARTITIONS: u16 = 1000;

/// One broken rule, naming the node at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: NodePath,
    pub part: Part,
    pub message: String,
}

impl Violation {
    fn at_value(path: NodePath, message: impl Into<String>) -> Self {
        Self {
            path,
            part: Part::Value,
            message: message.into(),
        }
    }
}

/// Every rule the pipeline breaks; empty when it is usable.
pub fn violations(pipeline: &Pipeline) -> Vec<Violation> {
    let mut out = Vec::new();
    if pipeline.processor.state_cache_capacity == 0 {
        out.push(Violation::at_value(
            NodePath::default()
                .key("processor")
                .key("stateCacheCapacity"),
            "stateCacheCapacity must be at least 1",
        ));
    }
    if !(1..=MAX_PARTITIONS).contains(&pipeline.kafka.partitions) {
        out.push(Violation::at_value(
            NodePath::default().key("kafka").key("partitions"),
            format!("partitions must be between 1 and {MAX_PARTITIONS}"),
        ));
    }
    for (id, integration) in &pipeline.integrations {
        let at = NodePath::default().key("integrations").key(id.as_str());
        if integration.call_client.is_some() && integration.provider != Provider::Salesforce {
            out.push(Violation {
                path: at.key("callClient"),
                part: Part::Key,
                message: format!(
                    "callClient applies to Salesforce only, not to {}",
                    integration.provider.as_str()
                ),
            });
        }
        let at = at.key("entities");
        for (name, entity) in &integration.entities {
            entity_rules(entity, &at.key(name.as_str()), &mut out);
        }
    }
    out
}

fn entity_rules(entity: &Entity, at: &NodePath, out: &mut Vec<Violation>) {
    let mapped = |p: &FieldPath| entity.mappings.iter().any(|m| &m.alguna == p);
    let unmapped = |p: &FieldPath| format!("no mapping's `alguna` field is {:?}", p.as_str());

    let per_field = at.key("conflictResolution").key("perField");
    for field in entity.conflict_resolution.per_field.keys() {
        if !mapped(field) {
            out.push(Violation {
                path: per_field.key(field.as_str()),
                part: Part::Key,
                message: unmapped(field),
            });
        }
    }
    if let Some(m) = &entity.matching {
        let at = at.key("matching");
        for (i, field) in m.fields.iter().enumerate() {
            if !mapped(field) {
                out.push(Violation::at_value(
                    at.key("fields").index(i),
                    unmapped(field),
                ));
            }
        }
        if !(0.0..=1.0).contains(&m.threshold) {
            out.push(Violation::at_value(
                at.key("threshold"),
                format!("threshold {} must be between 0 and 1", m.threshold),
            ));
        }
    }

    let mut writers: BTreeMap<&FieldPath, usize> = BTreeMap::new();
    for (i, mapping) in entity.mappings.iter().enumerate() {
        let at = at.key("mappings").index(i);
        mapping_rules(mapping, &at, out);
        if !mapping.direction.to_external() {
            continue;
        }
        if let Some(&first) = writers.get(&mapping.external) {
            out.push(Violation::at_value(
                at.key("external"),
                format!(
                    "external field {:?} is already written by mappings[{first}]",
                    mapping.external.as_str()
                ),
            ));
        } else {
            writers.insert(&mapping.external, i);
        }
    }
}

fn mapping_rules(mapping: &FieldMapping, at: &NodePath, out: &mut Vec<Violation>) {
    match (mapping.transform, &mapping.function) {
        (Transform::Custom, None) => out.push(Violation::at_value(
            at.key("transform"),
            "transform `custom` needs a `function` with the JavaScript body",
        )),
        (t, Some(_)) if t != Transform::Custom => out.push(Violation::at_value(
            at.key("function"),
            "`function` is only used with `transform: custom`",
        )),
        _ => {}
    }
}
