//! HubSpot CRM v3: contacts, companies and deals.
//!
//! ```text
//!  read / read_many ──GET …/{id}, POST …/batch/read──┐
//!  list_changes ─────POST …/search (keyset windows)──┼─► call(): budget → token → HTTP → 401? refresh, retry once → classify
//!  write / write_batch ─POST|PATCH|DELETE, …/batch/*─┘
//!  verify_webhook ── X-HubSpot-Signature-v3 + timestamp window ─► WebhookEvent (origin = changeSource:sourceId)
//! ```
//!
//! `auth` fetches tokens, `read` and `write` map the endpoints, `webhook`
//! verifies and parses deliveries, `errors` classifies every failure.

#![allow(clippy::result_large_err)] // ConnectorError is the shared error type of every connector.

pub mod auth;
pub mod errors;
pub mod read;
pub mod webhook;
pub mod write;

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

use self::auth::Auth;
pub use self::auth::AuthMode;
use super::record::{
    ChangePage, Cursor, ExternalRecord, WebhookEvent, WebhookRequest, WriteOp, WriteOutcome,
};
use super::{Connector, ConnectorError, Credentials, ErrorClass, RequestBudget};
use crate::config::{Integration, Provider, ResolveError};

/// Inputs per batch call.
pub const MAX_BATCH: usize = 100;
/// Production API base URL.
pub const API_BASE: &str = "https://api.hubapi.com";

/// Properties read by default, per object type.
pub fn default_properties(object: &str) -> Option<&'static [&'static str]> {
    Some(match object {
        "contacts" => &[
            "email",
            "firstname",
            "lastname",
            "phone",
            "company",
            "address",
            "city",
            "state",
            "zip",
            "country",
            "createdate",
            "lastmodifieddate",
            "hs_object_id",
        ],
        "companies" => &[
            "name",
            "domain",
            "phone",
            "address",
            "city",
            "state",
            "zip",
            "country",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        "deals" => &[
            "dealname",
            "amount",
            "dealstage",
            "pipeline",
            "closedate",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        _ => return None,
    })
}

/// The property holding an object's modification time (`lastmodifieddate` for contacts).
pub fn modified_property(object: &str) -> &'static str {
    if object == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

/// An answer HubSpot gave with a success status.
pub(crate) struct Answer {
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self, what: &str) -> Result<Value, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|e| errors::undecodable(what, e))
    }
}

/// A connector to one HubSpot portal.
pub struct HubSpotConnector {
    base_url: String,
    http: reqwest::Client,
    auth: Auth,
    budget: RequestBudget,
    webhook_secret: Option<String>,
    properties: HashMap<String, Vec<String>>,
}

impl std::fmt::Debug for HubSpotConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSpotConnector")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl HubSpotConnector {
    /// A connector to `base_url` (the real API or a simulator).
    pub fn new(base_url: impl Into<String>, auth: AuthMode, budget: RequestBudget) -> Self {
        let webhook_secret = match &auth {
            AuthMode::OAuth(c) => c
                .webhook_secret
                .clone()
                .or_else(|| Some(c.client_secret.clone()).filter(|s| !s.is_empty())),
            AuthMode::PrivateApp(_) => None,
        };
        HubSpotConnector {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            http: super::http::client(super::http::REQUEST_TIMEOUT),
            auth: Auth::new(auth),
            budget,
            webhook_secret,
            properties: HashMap::new(),
        }
    }

    /// From a pipeline integration: OAuth (`clientId`, `clientSecret`,
    /// `refreshToken`) or a private app (`privateAppToken`); `webhookSecret`
    /// defaults to the client secret, as HubSpot signs with it.
    pub fn from_integration(integration: &Integration) -> Result<Self, ResolveError> {
        let base = integration.base_url.resolve()?;
        let private = integration
            .credentials
            .get("privateAppToken")
            .map(|s| s.resolve())
            .transpose()?;
        let creds = Credentials::from_integration(integration)?;
        let mode = match private {
            Some(t) => AuthMode::PrivateApp(t),
            None => AuthMode::OAuth(creds.clone()),
        };
        let mut c = Self::new(base, mode, RequestBudget::for_provider(Provider::Hubspot));
        if let Some(s) = creds.webhook_secret {
            c.webhook_secret = Some(s);
        }
        Ok(c)
    }

    /// Reads these properties of `object` instead of the defaults.
    pub fn with_properties(mut self, object: &str, properties: Vec<String>) -> Self {
        self.properties.insert(object.to_string(), properties);
        self
    }

    /// Spends `budget` (shared with the integration's other clients) on every call.
    pub fn with_budget(mut self, budget: RequestBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Allows each API or token request `timeout` (connect included) instead
    /// of [`super::http::REQUEST_TIMEOUT`].
    pub fn with_request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.http = super::http::client(timeout);
        self
    }

    /// The secret webhook signatures are checked with.
    pub fn with_webhook_secret(mut self, secret: impl Into<String>) -> Self {
        self.webhook_secret = Some(secret.into());
        self
    }

    /// The properties read for `object`, the modification property included.
    pub(crate) fn properties_of(&self, object: &str) -> Result<Vec<String>, ConnectorError> {
        let mut props: Vec<String> = match self.properties.get(object) {
            Some(p) => p.clone(),
            None => default_properties(object)
                .ok_or_else(|| unknown_object(object))?
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let m = modified_property(object);
        if !props.iter().any(|p| p == m) {
            props.push(m.to_string());
        }
        Ok(props)
    }

    /// One API call: spends the budget, sends the token, refreshes it once
    /// on a 401, and classifies any answer outside 2xx.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Answer, ConnectorError> {
        let mut url = format!("{}{path}", self.base_url);
        if !query.is_empty() {
            let mut qs = form_urlencoded::Serializer::new(String::new());
            for (k, v) in query {
                qs.append_pair(k, v);
            }
            url.push('?');
            url.push_str(&qs.finish());
        }
        let payload = body.map(|b| serde_json::to_vec(b).expect("JSON serializes"));
        let mut refreshed = false;
        loop {
            let token = self.auth.token(&self.http, &self.base_url).await?;
            self.budget.acquire().await;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&token.value)
                .header("accept", "application/json");
            if let Some(p) = &payload {
                req = req
                    .header("content-type", "application/json")
                    .body(p.clone());
            }
            let resp = req.send().await.map_err(ConnectorError::from_transport)?;
            let status = resp.status().as_u16();
            let headers: HeaderMap = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(ConnectorError::from_transport)?;
            if (200..300).contains(&status) {
                return Ok(Answer { body: bytes });
            }
            if status == 401 && self.auth.refreshes() && !refreshed {
                tracing::debug!(path, "HubSpot token refused; refreshing once");
                self.auth.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            return Err(errors::classify(status, &headers, &bytes));
        }
    }
}

pub(crate) fn unknown_object(object: &str) -> ConnectorError {
    ConnectorError::new(
        ErrorClass::FieldValidation,
        format!("unknown HubSpot object type {object:?} (expected contacts, companies or deals)"),
    )
}

#[async_trait]
impl Connector for HubSpotConnector {
    fn provider(&self) -> Provider {
        Provider::Hubspot
    }

    async fn authenticate(&self) -> Result<(), ConnectorError> {
        self.auth
            .token(&self.http, &self.base_url)
            .await
            .map(|_| ())
    }

    async fn read(&self, object: &str, id: &str) -> Result<ExternalRecord, ConnectorError> {
        read::read(self, object, id).await
    }

    async fn read_many(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        read::read_many(self, object, ids).await
    }

    async fn find_by_field(
        &self,
        object: &str,
        field: &str,
        values: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        read::read_by_property(self, object, field, values).await
    }

    async fn list_changes(
        &self,
        object: &str,
        since: &Cursor,
        page: Option<&str>,
    ) -> Result<ChangePage, ConnectorError> {
        read::list_changes(self, object, since, page).await
    }

    fn verify_webhook(
        &self,
        request: &WebhookRequest,
    ) -> Result<Vec<WebhookEvent>, ConnectorError> {
        let secret = self.webhook_secret.as_deref().ok_or_else(|| {
            ConnectorError::new(
                ErrorClass::Unauthenticated,
                "no webhook secret configured for this HubSpot integration",
            )
        })?;
        webhook::verify(secret, request)?;
        webhook::parse(&request.body)
    }

    async fn write(&self, object: &str, op: WriteOp) -> Result<WriteOutcome, ConnectorError> {
        write::write(self, object, op).await
    }

    async fn write_batch(
        &self,
        object: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError> {
        write::write_batch(self, object, ops).await
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }
}
