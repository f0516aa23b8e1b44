//! The Salesforce connector: OAuth 2.0 against the org's token endpoint,
//! sObject reads and writes over the REST API, polling by SOQL on
//! `SystemModstamp`, and Change Data Capture over CometD.
//!
//! ```text
//!  delivery ──write / write_batch──► write.rs ──► /sobjects, /composite/sobjects (≤ 200, allOrNone=false)
//!  ingest ──read / list_changes────► read.rs  ──► /sobjects/{o}/{id}, /queryAll (SystemModstamp, Id) watermark
//!  ingest ──CdcSubscriber──────────► stream.rs ─► /cometd/XX.X  ──► webhook.rs (events → WebhookEvent)
//!                      every call ─► auth.rs (token, refresh on 401 + one retry, budget) ─► errors.rs
//! ```
//!
//! Writes carry `Sforce-Call-Options: client=extsync`, so change events of
//! extsync's own writes have `changeOrigin` ending in `client=extsync`.
#![allow(clippy::result_large_err)] // ConnectorError is the shared error type of every connector.

mod auth;
pub mod errors;
mod read;
pub mod stream;
pub mod webhook;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    ChangePage, Connector, ConnectorError, Credentials, Cursor, ExternalRecord, RequestBudget,
    TokenCache, WebhookEvent, WebhookRequest, WriteOp, WriteOutcome,
};
use crate::config::{Integration, Provider, ResolveError};

pub use stream::{CdcEvent, CdcSubscriber, ReplayFrom};
pub use webhook::{events_from_change, is_own_change};

/// REST API version the connector speaks.
pub const API_VERSION: &str = "62.0";
/// The `client` of `Sforce-Call-Options` on extsync's writes.
pub const CALL_CLIENT: &str = "extsync";
/// Records per composite collection call.
pub const MAX_BATCH: usize = 200;
/// Wait suggested after `REQUEST_LIMIT_EXCEEDED`, which carries no Retry-After.
pub const DEFAULT_LIMIT_WAIT: Duration = Duration::from_secs(300);

/// How to reach one org.
#[derive(Debug, Clone)]
pub struct SalesforceSettings {
    /// Login or My Domain URL hosting `/services/oauth2/token`.
    pub login_url: String,
    pub api_version: String,
    pub credentials: Credentials,
    /// `client` sent in `Sforce-Call-Options` on writes.
    pub call_client: String,
    pub budget: RequestBudget,
    pub limit_wait: Duration,
    /// Time allowed for one API or token request, connect included.
    pub request_timeout: Duration,
    /// Fields read per object; objects not listed use every field `describe` reports.
    pub fields: BTreeMap<String, Vec<String>>,
}

impl SalesforceSettings {
    pub fn new(login_url: impl Into<String>, credentials: Credentials) -> Self {
        SalesforceSettings {
            login_url: login_url.into().trim_end_matches('/').to_string(),
            api_version: API_VERSION.to_string(),
            credentials,
            call_client: CALL_CLIENT.to_string(),
            budget: RequestBudget::for_provider(Provider::Salesforce),
            limit_wait: DEFAULT_LIMIT_WAIT,
            request_timeout: super::http::REQUEST_TIMEOUT,
            fields: BTreeMap::new(),
        }
    }

    /// From a pipeline integration: `baseUrl` is the login URL, credentials
    /// `clientId`, `clientSecret` and (optionally) `refreshToken`, and
    /// `callClient` names extsync's writes.
    pub fn from_integration(integration: &Integration) -> Result<Self, ResolveError> {
        let base = integration.base_url.resolve()?;
        let mut settings = Self::new(base, Credentials::from_integration(integration)?);
        settings.call_client = call_client_of(integration);
        Ok(settings)
    }
}

/// The `client` extsync's writes for `integration` carry: its `callClient`,
/// or [`CALL_CLIENT`].
pub fn call_client_of(integration: &Integration) -> String {
    integration
        .call_client
        .as_ref()
        .map_or(CALL_CLIENT, |c| c.as_str())
        .to_string()
}

/// A connector to one Salesforce org.
pub struct SalesforceConnector {
    settings: SalesforceSettings,
    http: reqwest::Client,
    tokens: TokenCache,
    described: Mutex<HashMap<String, Arc<Vec<String>>>>,
}

impl SalesforceConnector {
    pub fn new(settings: SalesforceSettings) -> Self {
        SalesforceConnector {
            http: super::http::client(settings.request_timeout),
            settings,
            tokens: TokenCache::default(),
            described: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &SalesforceSettings {
        &self.settings
    }
}

impl std::fmt::Debug for SalesforceConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceConnector")
            .field("login_url", &self.settings.login_url)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Connector for SalesforceConnector {
    fn provider(&self) -> Provider {
        Provider::Salesforce
    }

    async fn authenticate(&self) -> Result<(), ConnectorError> {
        self.login().await
    }

    async fn read(&self, object: &str, id: &str) -> Result<ExternalRecord, ConnectorError> {
        self.read_one(object, id).await
    }

    async fn read_many(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        self.read_ids(object, ids).await
    }

    async fn find_by_field(
        &self,
        object: &str,
        field: &str,
        values: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        self.read_by_field(object, field, values).await
    }

    async fn list_changes(
        &self,
        object: &str,
        since: &Cursor,
        page: Option<&str>,
    ) -> Result<ChangePage, ConnectorError> {
        self.changes(object, since, page).await
    }

    fn verify_webhook(
        &self,
        request: &WebhookRequest,
    ) -> Result<Vec<WebhookEvent>, ConnectorError> {
        webhook::verify(request)
    }

    async fn write(&self, object: &str, op: WriteOp) -> Result<WriteOutcome, ConnectorError> {
        self.write_one(object, op).await
    }

    async fn write_batch(
        &self,
        object: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError> {
        self.write_many(object, ops).await
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }
}
