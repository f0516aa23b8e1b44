//! One entry of the pipeline's `integrations`: the external system, its
//! credentials, rate limit, direction, triggers and entities.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::{Entity, Name, default_true};
use crate::config::env::{EnvString, SecretRef};
use crate::config::scalar::parse_scalar;

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
