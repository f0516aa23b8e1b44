//! The typed shape of a pipeline file. Every struct denies unknown fields so a
//! typo is an error at its line, never a silent default. The JSON Schema in
//! `schemas/pipeline.schema.json` is generated from these types; rules that
//! span several fields live in [`super::rules`].
//!
//! ```text
//!  Pipeline ─┬─ postgres, kafka                 sources.rs
//!            ├─ telemetry, ingest, processor    runtime.rs
//!            └─ integrations: Integration       integration.rs
//!                 └─ entities: Entity           entity.rs (fields, conflicts, matching)
//! ```

mod entity;
mod integration;
mod runtime;
mod sources;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::scalar::parse_scalar;

pub use entity::*;
pub use integration::*;
pub use runtime::*;
pub use sources::*;

/// Default Kafka topic prefix.
pub const DEFAULT_TOPIC_PREFIX: &str = "extsync";
/// Default replication origin name for extsync's own billing-side writes.
pub const DEFAULT_ORIGIN: &str = "extsync";
/// Default Prometheus listen address.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9464";
/// Default number of records whose sync state the processor keeps in memory.
pub const DEFAULT_STATE_CACHE_CAPACITY: u64 = 200_000;

/// One extsync pipeline: a billing database, a Kafka cluster, integrations.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pipeline {
    /// Name of the pipeline; used in slot, publication and consumer-group names.
    pub name: Name,
    pub postgres: PostgresConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub processor: ProcessorConfig,
    /// External systems, keyed by integration id.
    #[serde(default)]
    pub integrations: BTreeMap<Name, Integration>,
}

/// An identifier: lowercase letters, digits, `_` and `-`, starting with a letter.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Name(#[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"))] String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if first_ok && rest_ok && s.len() <= 63 {
            Ok(Name(s.to_string()))
        } else {
            Err(format!(
                "invalid name {s:?}: use lowercase letters, digits, '_' or '-', starting with a letter (at most 63)"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, str::parse)
    }
}

fn default_true() -> bool {
    true
}
