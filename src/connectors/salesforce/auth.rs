//! Tokens and authenticated calls. The access token comes from the
//! `refresh_token` grant when a refresh token is configured, otherwise from
//! `client_credentials`; Salesforce does not say when it expires, so it is
//! used until a call answers 401 `INVALID_SESSION_ID`, then refreshed and
//! the call retried once.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::SalesforceConnector;
use super::errors;
use crate::connectors::auth::AccessToken;
use crate::connectors::{ConnectorError, ErrorClass};

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    instance_url: String,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// A successful answer.
pub(super) struct Answer {
    pub status: StatusCode,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ConnectorError::new(ErrorClass::Transient, "unexpected answer from Salesforce")
                .with_status(self.status.as_u16())
                .with_source(e)
        })
    }
}

/// One API call: method, path under the instance (`/services/data/…`),
/// query pairs, JSON body, and whether it writes.
pub(super) struct Call<'a> {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'a str, String)>,
    pub body: Option<&'a Value>,
    pub write: bool,
    pub headers: Vec<(&'static str, String)>,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, path: String) -> Self {
        Call {
            method,
            path,
            query: Vec::new(),
            body: None,
            write: false,
            headers: Vec::new(),
        }
    }
}

impl SalesforceConnector {
    /// `/services/data/vXX.X`
    pub(super) fn data_path(&self) -> String {
        format!("/services/data/v{}", self.settings.api_version)
    }

    async fn fetch_token(&self) -> Result<AccessToken, ConnectorError> {
        let c = &self.settings.credentials;
        let mut form: HashMap<&str, &str> = HashMap::new();
        form.insert("client_id", &c.client_id);
        form.insert("client_secret", &c.client_secret);
        match &c.refresh_token {
            Some(r) => {
                form.insert("grant_type", "refresh_token");
                form.insert("refresh_token", r);
            }
            None => {
                form.insert("grant_type", "client_credentials");
            }
        }
        self.settings.budget.acquire().await;
        let url = format!("{}/services/oauth2/token", self.settings.login_url);
        let resp = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(ConnectorError::from_transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(ConnectorError::from_transport)?;
        if !status.is_success() {
            if status.is_server_error() {
                return Err(ConnectorError::new(
                    ErrorClass::Transient,
                    "token endpoint unavailable",
                )
                .with_status(status.as_u16()));
            }
            let e: TokenError = serde_json::from_slice(&body).unwrap_or(TokenError {
                error: "invalid_grant".into(),
                error_description: format!("HTTP {status}"),
            });
            tracing::warn!(provider = "salesforce", code = %e.error, "token request refused");
            return Err(
                ConnectorError::new(ErrorClass::AuthExpired, e.error_description)
                    .with_code(e.error)
                    .with_status(status.as_u16()),
            );
        }
        let t: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            ConnectorError::new(ErrorClass::Transient, "unexpected token answer").with_source(e)
        })?;
        tracing::debug!(provider = "salesforce", "access token obtained");
        Ok(AccessToken {
            value: t.access_token,
            expires_at: None,
            instance_url: Some(t.instance_url.trim_end_matches('/').to_string()),
        })
    }

    /// The current token, fetching one if needed.
    pub(super) async fn token(&self) -> Result<AccessToken, ConnectorError> {
        self.tokens.get(|| self.fetch_token()).await
    }

    /// Forgets `rejected` so the next call fetches a new token.
    pub(super) async fn token_rejected(&self, rejected: &AccessToken) {
        self.tokens.invalidate(rejected).await;
    }

    /// Fetches a new token now.
    pub(super) async fn login(&self) -> Result<(), ConnectorError> {
        if let Ok(t) = self.token().await {
            self.tokens.invalidate(&t).await;
        }
        self.token().await.map(|_| ())
    }

    /// Sends `call`; a 401 refreshes the token and retries once. Success
    /// statuses (and 300, for upserts) are returned; others are classified.
    pub(super) async fn send(&self, call: &Call<'_>) -> Result<Answer, ConnectorError> {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let instance = token.instance_url.clone().unwrap_or_default();
            self.settings.budget.acquire().await;
            let mut req = self
                .http
                .request(call.method.clone(), format!("{instance}{}", call.path))
                .bearer_auth(&token.value);
            if !call.query.is_empty() {
                req = req.query(&call.query);
            }
            if let Some(b) = call.body {
                req = req.json(b);
            }
            if call.write {
                req = req.header(
                    "Sforce-Call-Options",
                    format!("client={}", self.settings.call_client),
                );
            }
            for (k, v) in &call.headers {
                req = req.header(*k, v);
            }
            let resp = req.send().await.map_err(ConnectorError::from_transport)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(ConnectorError::from_transport)?;
            if status.is_success() || status == StatusCode::MULTIPLE_CHOICES {
                return Ok(Answer { status, body });
            }
            let err = errors::from_response(status, &headers, &body, self.settings.limit_wait);
            if err.class == ErrorClass::AuthExpired && !retried {
                tracing::info!(provider = "salesforce", "session expired; refreshing token");
                self.token_rejected(&token).await;
                retried = true;
                continue;
            }
            return Err(err);
        }
    }
}
