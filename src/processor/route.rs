//! Routing: re-keys every change to the canonical record it belongs to, so
//! that one processor owns each record and sees its changes in order.
//!
//! ```text
//!  <prefix>.cdc.<schema>.<table>   (key: primary key)  ─┐
//!                                                        ├─► router ──► <prefix>.processor.changes
//!  <prefix>.external.<system>      (key: external id)  ─┘   key: "<schema>.<table>:<billing id>"
//! ```
//!
//! External ids are re-keyed through the link table (`extsync.records`): a
//! linked external record takes its billing record's key; an unlinked one
//! keeps `ext:<integration>:<entity>:<external id>` until it is linked. The
//! repartition topic has as many partitions as the processor group has
//! members at most; consumer offsets and routed messages commit in one Kafka
//! transaction, so every change is routed exactly once.

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
    let ts_ms = source.get("ts_ms").and_then(Value::as_i64).unwrap_or(0);
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
        committed_at: chrono::DateTime::from_timestamp_millis(ts_ms).unwrap_or_default(),
        origin: str_of("origin"),
    }))
}

/// The routing key of a billing record.
pub fn billing_key(schema: &str, table: &str, billing_id: &str) -> String {
    format!("{schema}.{table}:{billing_id}")
}

/// Routes one change: its key on the repartition topic, or `None` when no
/// configured entity cares about it.
pub async fn route(
    mappings: &Mappings,
    state: &StateStore,
    change: &Change,
) -> Result<Option<String>, tokio_postgres::Error> {
    match change {
        Change::Billing(b) => {
            if mappings.for_table(&b.schema, &b.table).next().is_none() {
                return Ok(None);
            }
            Ok(Some(billing_key(&b.schema, &b.table, &billing_id(&b.key))))
        }
        Change::External(x) => external_key(mappings, state, x).await,
    }
}

async fn external_key(
    mappings: &Mappings,
    state: &StateStore,
    x: &ExternalChange,
) -> Result<Option<String>, tokio_postgres::Error> {
    let Some(entity) = mappings.for_external(&x.integration, &x.entity) else {
        return Ok(None);
    };
    Ok(Some(
        match state
            .billing_id_of(&x.integration, &x.entity, &x.external_id)
            .await?
        {
            Some(id) => billing_key(entity.table.schema(), entity.table.table(), &id),
            None => format!("ext:{}:{}:{}", x.integration, x.entity, x.external_id),
        },
    ))
}
