//! HubSpot authentication: an OAuth2 app (refresh-token grant on
//! `POST /oauth/v1/token`, 30-minute access tokens) or a private-app token
//! that never expires. Tokens are never logged or put in error messages.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::connectors::auth::{AccessToken, Credentials, TokenCache};
use crate::connectors::error::{ConnectorError, ErrorClass};

/// How a connector proves who it is.
#[derive(Clone)]
pub enum AuthMode {
    /// An OAuth app: client id and secret plus the portal's refresh token.
    OAuth(Credentials),
    /// A private-app access token.
    PrivateApp(String),
}

impl fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthMode::OAuth(_) => f.write_str("OAuth(<redacted>)"),
            AuthMode::PrivateApp(_) => f.write_str("PrivateApp(<redacted>)"),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The current token of one connector.
pub struct Auth {
    mode: AuthMode,
    tokens: TokenCache,
}

impl Auth {
    pub fn new(mode: AuthMode) -> Self {
        Auth {
            mode,
            tokens: TokenCache::default(),
        }
    }

    pub fn refreshes(&self) -> bool {
        matches!(self.mode, AuthMode::OAuth(_))
    }

    /// The token to send, fetching one when needed.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        base_url: &str,
    ) -> Result<AccessToken, ConnectorError> {
        match &self.mode {
            AuthMode::PrivateApp(t) => Ok(AccessToken {
                value: t.clone(),
                expires_at: None,
                instance_url: None,
            }),
            AuthMode::OAuth(creds) => self.tokens.get(|| refresh(http, base_url, creds)).await,
        }
    }

    /// Forgets a token HubSpot refused, so the next call refreshes.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        self.tokens.invalidate(rejected).await;
    }
}

/// The refresh-token grant.
async fn refresh(
    http: &reqwest::Client,
    base_url: &str,
    creds: &Credentials,
) -> Result<AccessToken, ConnectorError> {
    let Some(refresh_token) = creds.refresh_token.as_deref() else {
        return Err(ConnectorError::new(
            ErrorClass::AuthExpired,
            "no refresh token configured for this HubSpot integration",
        ));
    };
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("client_id", &creds.client_id)
        .append_pair("client_secret", &creds.client_secret)
        .append_pair("refresh_token", refresh_token)
        .finish();
    let resp = http
        .post(format!("{base_url}/oauth/v1/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .map_err(ConnectorError::from_transport)?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(ConnectorError::from_transport)?;
    if status >= 500 || status == 429 {
        return Err(ConnectorError::new(
            ErrorClass::Transient,
            format!("HubSpot token endpoint answered HTTP {status}"),
        )
        .with_status(status));
    }
    if status != 200 {
        let e: TokenError = serde_json::from_slice(&body).unwrap_or_default();
        let mut err = ConnectorError::new(
            ErrorClass::AuthExpired,
            e.message
                .unwrap_or_else(|| format!("token refresh refused (HTTP {status})")),
        )
        .with_status(status);
        if let Some(code) = e.status {
            err = err.with_code(code);
        }
        return Err(err);
    }
    let t: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| super::errors::undecodable("token answer", e))?;
    Ok(AccessToken {
        value: t.access_token,
        expires_at: t
            .expires_in
            .map(|s| Instant::now() + Duration::from_secs(s)),
        instance_url: None,
    })
}
