//! The typed shape of a pipeline file. Every struct denies unknown fields so a
//! typo is an error at its line, never a silent default. The JSON Schema in
//! `schemas/pipeline.schema.json` is generated from these types; rules that
//! span several fields live in [`super::rules`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::env::{EnvString, SecretRef};
use super::scalar::parse_scalar;

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
fn default_true() -> bool {
    true
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

/// Metrics and logs.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TelemetryConfig {
    /// Address of the Prometheus `/metrics` endpoint, e.g.
    /// `${EXTSYNC_METRICS_ADDR:-127.0.0.1:9464}`; empty disables it.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: EnvString,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics_address: default_metrics_address(),
        }
    }
}

fn default_metrics_address() -> EnvString {
    EnvString::new(DEFAULT_METRICS_ADDRESS)
}

/// How external changes come in: the webhook receiver and the pollers.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngestConfig {
    /// Listen address of the webhook receiver; empty disables it.
    #[serde(default = "default_webhook_address")]
    pub webhook_address: String,
    /// Public base URL vendors call (signatures cover it), e.g.
    /// `https://sync.example.com`; default: taken from each request's Host header.
    #[serde(default)]
    pub public_url: Option<EnvString>,
    /// Largest webhook body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Seconds before the stored cursor that every poll reads again, so late
    /// or equal timestamps never drop a record.
    #[serde(default = "default_overlap_secs")]
    pub poll_overlap_secs: u64,
    /// Seconds between catch-up sweeps of integrations without a `schedule`.
    #[serde(default = "default_sweep_secs")]
    pub sweep_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            webhook_address: default_webhook_address(),
            public_url: None,
            max_body_bytes: default_max_body_bytes(),
            poll_overlap_secs: default_overlap_secs(),
            sweep_secs: default_sweep_secs(),
        }
    }
}

/// Default listen address of the webhook receiver.
pub const DEFAULT_WEBHOOK_ADDRESS: &str = "127.0.0.1:8088";

fn default_webhook_address() -> String {
    DEFAULT_WEBHOOK_ADDRESS.to_string()
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_overlap_secs() -> u64 {
    60
}
fn default_sweep_secs() -> u64 {
    60
}

/// The processor: linking, mapping, conflict resolution and delivery.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProcessorConfig {
    /// Most records whose sync state (link, merge base, versions) is kept in
    /// memory, least recently used evicted first; the rest is read from
    /// Postgres (schema `extsync`) when needed. At least 1.
    #[serde(default = "default_state_cache_capacity")]
    #[schemars(range(min = 1))]
    pub state_cache_capacity: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            state_cache_capacity: default_state_cache_capacity(),
        }
    }
}

fn default_state_cache_capacity() -> u64 {
    DEFAULT_STATE_CACHE_CAPACITY
}

/// One connection to an external system.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Integration {
    pub provider: Provider,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// API base URL; points at a simulator or at the real service.
    pub base_url: EnvString,
    /// OAuth2 or token credentials, each an environment variable reference.
    #[serde(default)]
    pub credentials: BTreeMap<String, SecretRef>,
    #[serde(default)]
    pub direction: Direction,
    /// 5-field cron expression for polling sweeps, e.g. `*/5 * * * *`.
    #[serde(default)]
    pub schedule: Option<CronSchedule>,
    #[serde(default = "default_triggers")]
    pub triggers: Vec<Trigger>,
    /// Request budget shared by every read and write of this integration;
    /// default: the vendor's documented limits.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Entities synced by this integration, keyed by billing entity name.
    #[serde(default)]
    pub entities: BTreeMap<Name, Entity>,
    /// Salesforce only: the `client` of `Sforce-Call-Options` on extsync's
    /// writes. Change events name it in `changeOrigin`, and ingest drops
    /// those as extsync's own. Default `extsync`; pipelines that write to
    /// the same org each need their own, or each drops the other's changes.
    #[serde(default)]
    pub call_client: Option<Name>,
}

/// A request budget: `requests` per `perSeconds`, bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests: u32,
    #[serde(default = "default_per_seconds")]
    pub per_seconds: u64,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_per_seconds() -> u64 {
    1
}
fn default_burst() -> u32 {
    10
}

fn default_triggers() -> Vec<Trigger> {
    vec![Trigger::OnAlgunaChange, Trigger::OnWebhook]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Salesforce,
    Hubspot,
    Quickbooks,
    Netsuite,
    Xero,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Salesforce => "salesforce",
            Provider::Hubspot => "hubspot",
            Provider::Quickbooks => "quickbooks",
            Provider::Netsuite => "netsuite",
            Provider::Xero => "xero",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    AlgunaToExternal,
    ExternalToAlguna,
    #[default]
    Bidirectional,
}

impl Direction {
    pub fn to_external(self) -> bool {
        matches!(self, Direction::AlgunaToExternal | Direction::Bidirectional)
    }
    pub fn to_alguna(self) -> bool {
        matches!(self, Direction::ExternalToAlguna | Direction::Bidirectional)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// Sync as soon as the billing database changes.
    OnAlgunaChange,
    /// Sync as soon as the external system notifies a change.
    OnWebhook,
}

/// A validated 5-field cron expression.
#[derive(Clone, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct CronSchedule(String);

impl CronSchedule {
    pub fn expression(&self) -> &str {
        &self.0
    }
    pub fn cron(&self) -> croner::Cron {
        self.0
            .parse()
            .expect("validated when the pipeline was loaded")
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for CronSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.split_whitespace().count() != 5 {
            return Err(format!(
                "invalid schedule {s:?}: expected 5 cron fields (minute hour day-of-month month day-of-week)"
            ));
        }
        s.parse::<croner::Cron>()
            .map_err(|e| format!("invalid schedule {s:?}: {e}"))?;
        Ok(CronSchedule(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, str::parse)
    }
}

/// How one billing entity maps to one external object.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Entity {
    /// External object, e.g. `Account`, `companies`.
    pub external_object: String,
    /// Billing table, `schema.table`.
    pub table: TableName,
    /// Field on the billing row holding the external id, e.g. `external_id`.
    #[serde(default)]
    pub external_id_field: Option<String>,
    /// Field on the external record holding the billing id (for upserts).
    #[serde(default)]
    pub billing_id_field: Option<String>,
    /// Parent entity that must be linked before this one is written.
    #[serde(default)]
    pub parent: Option<ParentRef>,
    pub mappings: Vec<FieldMapping>,
    #[serde(default)]
    pub conflict_resolution: ConflictResolution,
    #[serde(default)]
    pub matching: Option<Matching>,
    /// What a write does when the linked external record no longer exists
    /// (the vendor answers `not_found`).
    #[serde(default)]
    pub on_not_found: OnNotFound,
}

/// What a write to a linked external record that no longer exists does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnNotFound {
    /// Write nothing: the record's outcome is `skipped` and it stays linked
    /// to the missing record.
    #[default]
    Skip,
    /// Create the record again (by upsert on `billingIdField` when set) and
    /// link the billing record to the new one.
    Create,
}

/// A reference from a child entity to its parent, e.g. contacts → accounts.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// Entity name of the parent in the same integration.
    pub entity: Name,
    /// Billing column holding the parent's billing id.
    pub alguna: String,
    /// External field holding the parent's external id.
    pub external: String,
}

/// One field mapping. Paths may be nested: `billingAddress.line1`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FieldMapping {
    pub alguna: FieldPath,
    pub external: FieldPath,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub transform: Transform,
    /// JavaScript function body for `transform: custom`, e.g. `return value.toUpperCase();`.
    #[serde(default)]
    pub function: Option<String>,
}

/// A dotted path into a JSON object.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct FieldPath(
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"))] String,
);

impl FieldPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for FieldPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.split('.').all(|seg| {
                let mut c = seg.chars();
                c.next()
                    .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
                    && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
            });
        if ok {
            Ok(FieldPath(s.into()))
        } else {
            Err(format!(
                "invalid field path {s:?}: expected names joined by '.', e.g. billingAddress.line1"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, str::parse)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    #[default]
    None,
    NumberToCurrency,
    DateToIso,
    BooleanToString,
    Custom,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    AlgunaWins,
    ExternalWins,
    #[default]
    LatestWins,
    Manual,
}

/// Conflict strategies: a default and per-field overrides keyed by the
/// billing-side field path.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConflictResolution {
    #[serde(default)]
    pub default: Strategy,
    #[serde(default)]
    pub per_field: BTreeMap<FieldPath, Strategy>,
}

impl ConflictResolution {
    pub fn strategy_for(&self, alguna_field: &FieldPath) -> Strategy {
        self.per_field
            .get(alguna_field)
            .copied()
            .unwrap_or(self.default)
    }
}

/// How unlinked records find their counterpart.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Matching {
    /// Billing-side fields compared with their mapped external fields.
    pub fields: Vec<FieldPath>,
    #[serde(default)]
    pub mode: MatchMode,
    /// Similarity required for a fuzzy match (0–1).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Create the record on the other side when nothing matches.
    #[serde(default)]
    pub create_if_not_found: bool,
}

fn default_threshold() -> f64 {
    0.9
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    #[default]
    Exact,
    Fuzzy,
}
