//! Routing: re-keys every change to the canonical record it belongs to, so
//! that one processor owns each record and sees its changes in order.
//!
//! ```text
//!  <prefix>.cdc.<schema>.<table>  (placed by record) ─────────────────────────────► processor
//!  <prefix>.external.<system>     (key: external id) ─► router ─► <prefix>.processor.changes ─┘
//!                                                        key: "<schema>.<table>:<billing id>"
//! ```
//!
//! Capture places a row's change events on the partition that
//! [`crate::kafka::record_partition`] gives for its billing id, and the
//! router places that record's external changes on the same partition of
//! the repartition topic. Change topics with as many partitions as the
//! repartition topic are read by the processor directly; with range
//! assignment, partition `n` of every topic goes to the same member, so one
//! processor owns both sides of a record. A change topic with another
//! partition count (created outside extsync) goes through the router too.
//!
//! External ids are re-keyed through the link table (`extsync.records`): a
//! linked external record takes its billing record's key; an unlinked one
//! keeps `ext:<integration>:<entity>:<external id>` until it is linked.
//! Consumer offsets and routed messages commit in one Kafka transaction, so
//! every change is routed exactly once.

use serde_json::{Map, Value};

use super::change::{BillingChange, Change, billing_id};
use super::mapping::Mappings;
use super::state::StateStore;
use crate::ingest::ExternalChange;

/// Suffix of the repartition topic after the prefix.
pub const CHANGES_TOPIC: &str = "processor.changes";

/// Why a message could not be routed; it is counted and skipped (it can
/// never become valid by retrying).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("message on {topic} is not a change event: {reason}")]
    Malformed { topic: String, reason: String },
}

/// Parses a Debezium-style change event from a CDC topic.
pub fn parse_cdc(
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Option<BillingChange>, RouteError> {
    let malformed = |reason: &str| RouteError::Malformed {
        topic: topic.to_string(),
        reason: reason.to_string(),
    };
    let Some(payload) = payload else {
        return Ok(None);
    }; // tombstone
    let v: Value = serde_json::from_slice(payload).map_err(|e| malformed(&e.to_string()))?;
    let source = v
        .get("source")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("no source"))?;
    let op = v
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("no op"))?
        .to_string();
    if op == "t" {
        return Ok(None);
    }
    let str_of = |k: &str| source.get(k).and_then(Value::as_str).map(str::to_string);
    let schema = str_of("schema").ok_or_else(|| malformed("no source.schema"))?;
    let table = str_of("table").ok_or_else(|| malformed("no source.table"))?;
    // Microseconds where the event has them: a row's own `now()` may fall
    // in its commit's millisecond.
    let ts_us = source
        .get("ts_us")
        .and_then(Value::as_i64)
        .or_else(|| {
            source
                .get("ts_ms")
                .and_then(Value::as_i64)
                .map(|ms| ms * 1000)
        })
        .unwrap_or(0);
    let key: Map<String, Value> = match key {
        Some(k) => serde_json::from_slice(k).map_err(|e| malformed(&format!("key: {e}")))?,
        None => return Err(malformed("no key")),
    };
    let after = v.get("after").and_then(Value::as_object).cloned();
    Ok(Some(BillingChange {
        schema,
        table,
        key,
        op,
        after,
        committed_at: chrono::DateTime::from_timestamp_micros(ts_us).unwrap_or_default(),
        origin: str_of("origin"),
    }))
}

/// The routing key of a billing record.
pub fn billing_key(schema: &str, table: &str, billing_id: &str) -> String {
    format!("{schema}.{table}:{billing_id}")
}

/// Where a change goes on the repartition topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub key: String,
    pub partition: i32,
}

impl Destination {
    fn billing(schema: &str, table: &str, billing_id: &str, partitions: i32) -> Self {
        Destination {
            key: billing_key(schema, table, billing_id),
            partition: crate::kafka::record_partition(billing_id, partitions),
        }
    }
}

/// Routes one change onto a repartition topic of `partitions` partitions,
/// or `None` when no configured entity cares about it.
pub async fn route(
    mappings: &Mappings,
    state: &StateStore,
    change: &Change,
    partitions: i32,
) -> Result<Option<Destination>, tokio_postgres::Error> {
    match change {
        Change::Billing(b) => {
            if mappings.for_table(&b.schema, &b.table).next().is_none() {
                return Ok(None);
            }
            let id = billing_id(&b.key);
            Ok(Some(Destination::billing(
                &b.schema, &b.table, &id, partitions,
            )))
        }
        Change::External(x) => external_destination(mappings, state, x, partitions).await,
    }
}

async fn external_destination(
    mappings: &Mappings,
    state: &StateStore,
    x: &ExternalChange,
    partitions: i32,
) -> Result<Option<Destination>, tokio_postgres::Error> {
    let Some(entity) = mappings.for_external(&x.integration, &x.entity) else {
        return Ok(None);
    };
    Ok(Some(
        match state
            .billing_id_of(&x.integration, &x.entity, &x.external_id)
            .await?
        {
            Some(id) => {
                Destination::billing(entity.table.schema(), entity.table.table(), &id, partitions)
            }
            None => {
                let key = format!("ext:{}:{}:{}", x.integration, x.entity, x.external_id);
                let partition = crate::kafka::record_partition(&key, partitions);
                Destination { key, partition }
            }
        },
    ))
}
