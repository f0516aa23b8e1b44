//! The shape of what capture writes, as types: the JSON Schemas in
//! `schemas/cdc-envelope.schema.json` and `schemas/cdc-transaction.schema.json`
//! are generated from them, and tests read real events back through them
//! (unknown fields denied), so schema and output cannot drift apart.
//!
//! ```text
//!  envelope.rs (hot path, hand-written JSON) ──► Kafka ──► ChangeEvent (this file) ──► schemas/*.json
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One change event on `<prefix>.cdc.<schema>.<table>` (Debezium-compatible).
/// The Kafka key is the primary key as a JSON object (null for truncate).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEvent {
    /// Row before the change: the whole row with REPLICA IDENTITY FULL, the
    /// key columns for deletes otherwise, null for inserts and plain updates.
    pub before: Option<BTreeMap<String, serde_json::Value>>,
    /// Row after the change; null for deletes and truncates.
    pub after: Option<BTreeMap<String, serde_json::Value>>,
    pub source: SourceBlock,
    /// `c` create, `u` update, `d` delete, `r` snapshot read, `t` truncate.
    pub op: OpCode,
    /// When capture wrote the event, ms since the Unix epoch.
    pub ts_ms: i64,
    /// Columns whose unchanged TOASTed value was not known: left out of `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<Vec<String>>,
    /// Present when `transactionEvents` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TransactionRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum OpCode {
    #[serde(rename = "c")]
    Create,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
    #[serde(rename = "r")]
    Read,
    #[serde(rename = "t")]
    Truncate,
}

/// Where the change came from.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceBlock {
    /// extsync version.
    pub version: String,
    /// Always `postgresql`.
    pub connector: String,
    /// Pipeline name.
    pub name: String,
    /// Commit time (snapshot: read time), ms since the Unix epoch.
    #[serde(rename = "ts_ms")]
    pub ts_ms: i64,
    /// The same time in µs, as Debezium writes it: the commit time exactly,
    /// for comparing with the row's own timestamps.
    #[serde(rename = "ts_us")]
    pub ts_us: i64,
    /// `true`, `incremental` or `false`, as Debezium writes it.
    pub snapshot: String,
    pub db: String,
    pub schema: String,
    pub table: String,
    /// Source transaction id; null for snapshot rows.
    pub tx_id: Option<u32>,
    /// LSN of the change (snapshot: the slot's consistent point / the high watermark).
    pub lsn: u64,
    /// Replication origin of the transaction, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Debezium's per-event transaction block.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionRef {
    /// `<xid>:<commit LSN>`.
    pub id: String,
    /// Position of the event in its transaction, from 1.
    pub total_order: u64,
}

/// A BEGIN or END marker on `<prefix>.cdc.transactions`; the key is `{"id": …}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionMarker {
    /// `BEGIN` or `END`.
    pub status: String,
    /// `<xid>:<commit LSN>`.
    pub id: String,
    pub ts_ms: i64,
    /// Events of the transaction (END only).
    pub event_count: Option<u64>,
    /// Events per table (END only).
    pub data_collections: Option<Vec<DataCollection>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataCollection {
    /// `schema.table`.
    pub data_collection: String,
    pub event_count: u64,
}

fn pretty<T: JsonSchema>() -> String {
    let mut s = serde_json::to_string_pretty(&schemars::schema_for!(T)).expect("schema serializes");
    s.push('\n');
    s
}

/// JSON Schema of change events (`schemas/cdc-envelope.schema.json`).
pub fn envelope_schema_json() -> String {
    pretty::<ChangeEvent>()
}

/// JSON Schema of transaction markers (`schemas/cdc-transaction.schema.json`).
pub fn transaction_schema_json() -> String {
    pretty::<TransactionMarker>()
}
