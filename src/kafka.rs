//! Kafka is extsync's log: every stage reads and writes topics named here and
//! builds its clients from the pipeline's `kafka` section.
//!
//! ```text
//!  capture ─► <prefix>.cdc.<schema>.<table> (placed by record) ──────────────────► processor ─► <prefix>.sync-events
//!  ingest  ─► <prefix>.external.<system> ─► router ─► <prefix>.processor.changes ─┘
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

/// Partitions of the topics extsync keys by record unless `kafka.partitions`
/// says otherwise: the change topics it creates, the processor's
/// repartition topic and the sync events. Equal counts let the processor
/// read a table's change topic directly, partition by partition beside the
/// repartition topic (see [`record_partition`]). librdkafka sends one
/// produce request per partition, so a low count keeps the broker's work
/// per change low; raise it to share the work among more processes.
pub const DEFAULT_RECORD_PARTITIONS: u16 = 2;

/// The partition of a record among `partitions`, by its canonical billing
/// id. Capture places a row's change events there and the router places the
/// record's external changes there too, so with equal partition counts one
/// processor owns both sides of a record.
pub fn record_partition(billing_id: &str, partitions: i32) -> i32 {
    (crc32fast::hash(billing_id.as_bytes()) % partitions.max(1) as u32) as i32
}

/// Sends the records `client`'s producer has queued without waiting out
/// `linger.ms`, and waits until they are delivered. librdkafka skips the
/// linger while a flush is under way; rust-rdkafka's own flush flags one for
/// an instant and then sleeps in 100 ms polls. The producer's delivery
/// reports must be served by another thread, as `FutureProducer` and
/// `ThreadedProducer` do.
pub fn deliver_queued<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    timeout: std::time::Duration,
) -> Result<(), rdkafka::error::KafkaError> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the live client's handle; its delivery reports
    // are events served by another thread, so this call only waits.
    let code = unsafe { rdkafka::bindings::rd_kafka_flush(client.native_ptr(), ms) };
    match code {
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
        e => Err(rdkafka::error::KafkaError::Flush(e.into())),
    }
}

/// Partition counts of `topics` as the broker knows them; missing topics
/// are left out.
pub fn partition_counts(
    cc: &ClientConfig,
    topics: &[String],
) -> Result<std::collections::HashMap<String, i32>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    // A consumer's metadata requests never create topics.
    let client: BaseConsumer = cc.create()?;
    let mut counts = std::collections::HashMap::new();
    for name in topics {
        let md = client.fetch_metadata(Some(name), std::time::Duration::from_secs(10))?;
        if let Some(t) = md.topics().iter().find(|t| t.error().is_none())
            && !t.partitions().is_empty()
        {
            counts.insert(name.clone(), t.partitions().len() as i32);
        }
    }
    Ok(counts)
}
