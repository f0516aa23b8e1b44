//! Kafka is extsync's log: every stage reads and writes topics named here and
//! builds its clients from the pipeline's `kafka` section.
//!
//! ```text
//!  capture ─► <prefix>.cdc.<schema>.<table>     ingest ─► <prefix>.external.<system>
//!  router ─► <prefix>.processor.changes          processor ─► <prefix>.sync-events
//! ```
//!
//! The processor's state (links, merge bases, versions) is not a topic: it
//! lives in Postgres, schema `extsync`, behind an in-memory cache bounded by
//! `processor.stateCacheCapacity`, and is saved before each batch's Kafka
//! transaction commits.

use rdkafka::ClientConfig;

use crate::config::{KafkaConfig, ResolveError};

/// Topic names derived from the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Billing-side change events of one table.
    pub fn cdc(&self, schema: &str, table: &str) -> String {
        format!("{}.cdc.{schema}.{table}", self.prefix)
    }

    /// Transaction BEGIN/END markers.
    pub fn cdc_transactions(&self) -> String {
        format!("{}.cdc.transactions", self.prefix)
    }

    /// Normalized external change events of one system.
    pub fn external(&self, system: &str) -> String {
        format!("{}.external.{system}", self.prefix)
    }

    /// Sync outcomes users consume.
    pub fn sync_events(&self) -> String {
        format!("{}.sync-events", self.prefix)
    }
}

/// A librdkafka client configuration with the brokers and pass-through options
/// of the pipeline. Callers add the settings their role needs.
pub fn client_config(cfg: &KafkaConfig) -> Result<ClientConfig, ResolveError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", cfg.brokers.resolve()?);
    for (k, v) in &cfg.options {
        cc.set(k, v.resolve()?);
    }
    Ok(cc)
}

/// Settings of a producer whose acknowledgements mean "durable in Kafka":
/// all in-sync replicas, idempotent, ordered per partition.
pub fn durable_producer(mut cc: ClientConfig) -> ClientConfig {
    cc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    cc
}
