//! The pipeline's `postgres` and `kafka` sections: the billing database and
//! what capture reads from it, and the Kafka cluster every part writes to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::{DEFAULT_ORIGIN, DEFAULT_TOPIC_PREFIX, default_true};
use crate::config::env::EnvString;
use crate::config::scalar::parse_scalar;

/// The billing database and what to capture from it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresConfig {
    /// Connection URL, e.g. `${EXTSYNC_PG_URL}`.
    pub url: EnvString,
    /// Tables to capture as `schema.table`. Empty with `schemas` empty: nothing.
    #[serde(default)]
    pub tables: Vec<TableName>,
    /// Capture every table of these schemas.
    #[serde(default)]
    pub schemas: Vec<String>,
    /// Publication name; default `extsync_<pipeline name>`.
    #[serde(default)]
    pub publication: Option<String>,
    /// Logical replication slot name; default `extsync_<pipeline name>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Replication origin that marks extsync's own billing-side writes.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// What capture does with transactions carrying `origin`.
    #[serde(default)]
    pub own_writes: OwnWrites,
    /// Encoding of `numeric` columns in change events.
    #[serde(default)]
    pub numeric: NumericEncoding,
    /// Copy existing rows before streaming (events with `op: "r"`).
    #[serde(default = "default_true")]
    pub snapshot: bool,
    /// Interval between heartbeat messages, in seconds; 0 disables them.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// Emit BEGIN/END events on `<prefix>.cdc.transactions`.
    #[serde(default)]
    pub transaction_events: bool,
    /// Upper bound on bytes of decoded events waiting for Kafka.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
}

fn default_origin() -> String {
    DEFAULT_ORIGIN.to_string()
}
fn default_heartbeat_secs() -> u64 {
    10
}
fn default_max_in_flight_bytes() -> u64 {
    32 * 1024 * 1024
}

/// `schema.table`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct TableName(#[schemars(regex(pattern = r"^[^.\s]+\.[^.\s]+$"))] String);

impl TableName {
    pub fn schema(&self) -> &str {
        self.0.split_once('.').map(|(s, _)| s).unwrap_or("public")
    }
    pub fn table(&self) -> &str {
        self.0.split_once('.').map(|(_, t)| t).unwrap_or(&self.0)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TableName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('.') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('.') => {
                Ok(TableName(s.into()))
            }
            _ => Err(format!(
                "invalid table {s:?}: expected schema.table, e.g. public.accounts"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, str::parse)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OwnWrites {
    /// Drop transactions carrying extsync's origin (loop prevention).
    #[default]
    Drop,
    /// Emit them with `source.origin` set so consumers can tell.
    Tag,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NumericEncoding {
    /// Exact decimal string, e.g. `"12.50"`.
    #[default]
    String,
    /// JSON number (may lose precision in consumers using doubles).
    Number,
}

/// The Kafka cluster extsync uses as its log.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaConfig {
    /// Bootstrap servers, e.g. `${EXTSYNC_KAFKA_BROKERS}`.
    pub brokers: EnvString,
    /// Prefix of every topic extsync reads or writes (letters, digits, `.`, `_`, `-`).
    #[serde(default = "default_prefix", deserialize_with = "topic_prefix")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,200}$"))]
    pub topic_prefix: String,
    /// Partitions of the topics extsync keys by record (change topics,
    /// repartition topic, sync events) when it creates them: the most
    /// processes that share the work. Every partition a send touches is one
    /// produce request, so more partitions cost the broker more per change.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 1000))]
    pub partitions: u16,
    /// librdkafka properties passed through unchanged (e.g. `compression.type`).
    #[serde(default)]
    pub options: BTreeMap<String, EnvString>,
}

fn default_partitions() -> u16 {
    crate::kafka::DEFAULT_RECORD_PARTITIONS
}

fn default_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_string()
}

fn topic_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parse_scalar(d, parse_topic_prefix)
}

fn parse_topic_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid topic prefix {s:?}: use letters, digits, '.', '_' or '-' (Kafka topic characters)"
        ))
    }
}
