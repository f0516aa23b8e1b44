//! Access tokens shared by every call of one connector: fetched once,
//! refreshed on expiry or on an `auth_expired` answer, one refresh at a time.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::error::ConnectorError;
use crate::config::{Integration, ResolveError};

/// OAuth2 client credentials and refresh token of one integration, resolved
/// from the environment. `Debug` never shows the values.
#[derive(Clone, Default)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: Option<String>,
    /// Secret used to verify webhook signatures (HubSpot: the app's client secret).
    pub webhook_secret: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials { <redacted> }")
    }
}

impl Credentials {
    /// Reads `clientId`, `clientSecret`, `refreshToken` and `webhookSecret`
    /// from the integration's credential references.
    pub fn from_integration(integration: &Integration) -> Result<Self, ResolveError> {
        let get = |key: &str| {
            integration
                .credentials
                .get(key)
                .map(|s| s.resolve())
                .transpose()
        };
        Ok(Credentials {
            client_id: get("clientId")?.unwrap_or_default(),
            client_secret: get("clientSecret")?.unwrap_or_default(),
            refresh_token: get("refreshToken")?,
            webhook_secret: get("webhookSecret")?,
        })
    }
}

/// An access token and when it stops being usable.
#[derive(Clone)]
pub struct AccessToken {
    pub value: String,
    /// `None` when the system does not say (Salesforce): valid until a 401.
    pub expires_at: Option<Instant>,
    /// Extra data the token endpoint returned (Salesforce `instance_url`).
    pub instance_url: Option<String>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Margin before the announced expiry at which a token is refreshed early.
const EARLY_REFRESH: Duration = Duration::from_secs(30);

/// The current token of one connector.
#[derive(Default)]
pub struct TokenCache {
    current: Mutex<Option<AccessToken>>,
}

impl TokenCache {
    /// The current token, fetching one with `fetch` when there is none or it
    /// is about to expire. Concurrent callers wait for one fetch.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<AccessToken, ConnectorError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, ConnectorError>>,
    {
        let mut guard = self.current.lock().await;
        if let Some(t) = guard.as_ref() {
            let fresh = t
                .expires_at
                .is_none_or(|at| at > Instant::now() + EARLY_REFRESH);
            if fresh {
                return Ok(t.clone());
            }
        }
        let token = fetch().await?;
        *guard = Some(token.clone());
        Ok(token)
    }

    /// Forgets `rejected` after the system answered `auth_expired` for it, so
    /// the next [`TokenCache::get`] fetches a new one. A token that was
    /// already replaced by another caller is left alone.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        let mut guard = self.current.lock().await;
        if guard.as_ref().is_some_and(|t| t.value == rejected.value) {
            *guard = None;
        }
    }
}
