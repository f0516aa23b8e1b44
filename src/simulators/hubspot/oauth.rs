//! OAuth2 as HubSpot runs it: `POST /oauth/v1/token` with the
//! `authorization_code` and `refresh_token` grants (form-encoded), access
//! tokens that expire after `expires_in` seconds, refresh tokens that don't
//! rotate, and private-app tokens that never expire. API calls are checked
//! here and answered with HubSpot's exact 401 bodies. While the
//! `refuseRefresh` fault is set, every `refresh_token` grant answers
//! `400 {"status":"BAD_REFRESH_TOKEN",…}` as for a revoked refresh token.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::HubSpotSim;
use super::errors::{ApiError, correlation_id};

/// Who made an API call; decides `changeSource`/`sourceId` of the webhook
/// events its writes produce and which rate-limit bucket it spends.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Rate-limit bucket (the app id, or the private-app token's portal).
    pub bucket: String,
    /// `INTEGRATION` for OAuth apps; `CRM_UI` for private-app tokens, which
    /// the simulator treats as people editing in HubSpot.
    pub change_source: String,
    pub source_id: String,
}

/// Why a token was refused.
pub enum AuthFailure {
    Missing,
    Invalid,
    Expired { ago: Duration },
}

impl AuthFailure {
    pub fn into_error(self) -> ApiError {
        match self {
            AuthFailure::Missing => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            ),
            AuthFailure::Invalid => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "The OAuth token used to make this call is invalid. Check that the token was issued by HubSpot and has not been revoked.",
            ),
            AuthFailure::Expired { ago } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "EXPIRED_AUTHENTICATION",
                format!(
                    "The OAuth token used to make this call expired {} second(s) ago.",
                    ago.as_secs()
                ),
            ),
        }
    }
}

/// Issued tokens and grants.
pub struct OAuth {
    access: RwLock<HashMap<String, SystemTime>>,
    refresh: RwLock<HashSet<String>>,
    codes: Mutex<HashSet<String>>,
    ttl: RwLock<Duration>,
    issued: AtomicU64,
}

impl OAuth {
    pub fn new(ttl: Duration, refresh_tokens: &[String]) -> Self {
        OAuth {
            access: RwLock::default(),
            refresh: RwLock::new(refresh_tokens.iter().cloned().collect()),
            codes: Mutex::default(),
            ttl: RwLock::new(ttl),
            issued: AtomicU64::new(0),
        }
    }

    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.write().expect("oauth lock") = ttl;
    }

    pub fn ttl(&self) -> Duration {
        *self.ttl.read().expect("oauth lock")
    }

    /// A one-time authorization code, as the consent screen would redirect with.
    pub fn mint_code(&self) -> String {
        let code = format!("code-{}", uuid::Uuid::new_v4().simple());
        self.codes.lock().expect("oauth lock").insert(code.clone());
        code
    }

    /// Makes every access token issued so far expired.
    pub fn expire_all(&self) {
        let now = SystemTime::now();
        for exp in self.access.write().expect("oauth lock").values_mut() {
            *exp = (*exp).min(now);
        }
    }

    /// Access tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    fn issue(&self, refresh_token: String) -> serde_json::Value {
        self.issued.fetch_add(1, Ordering::Relaxed);
        let ttl = self.ttl();
        let token = format!("CO{}", uuid::Uuid::new_v4().simple());
        self.access
            .write()
            .expect("oauth lock")
            .insert(token.clone(), SystemTime::now() + ttl);
        json!({
            "token_type": "bearer",
            "refresh_token": refresh_token,
            "access_token": token,
            "expires_in": ttl.as_secs(),
        })
    }

    /// Checks an OAuth access token.
    pub fn check(&self, token: &str) -> Result<(), AuthFailure> {
        let access = self.access.read().expect("oauth lock");
        let exp = access.get(token).ok_or(AuthFailure::Invalid)?;
        match SystemTime::now().duration_since(*exp) {
            Ok(ago) => Err(AuthFailure::Expired { ago }),
            Err(_) => Ok(()),
        }
    }
}

#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    #[allow(dead_code)]
    redirect_uri: Option<String>,
    code: Option<String>,
    refresh_token: Option<String>,
}

fn oauth_error(status: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({
            "status": status,
            "message": message,
            "correlationId": correlation_id(),
        })),
    )
        .into_response()
}

/// `POST /oauth/v1/token`.
pub async fn token(State(sim): State<HubSpotSim>, Form(req): Form<TokenRequest>) -> Response {
    let cfg = sim.config();
    if req.client_id.as_deref() != Some(cfg.client_id.as_str()) {
        return oauth_error("BAD_CLIENT_ID", "missing or unknown client id");
    }
    if req.client_secret.as_deref() != Some(cfg.client_secret.as_str()) {
        return oauth_error("BAD_CLIENT_SECRET", "missing or invalid client secret");
    }
    let oauth = sim.oauth();
    match req.grant_type.as_deref() {
        Some("authorization_code") => {
            let code = req.code.unwrap_or_default();
            if !oauth.codes.lock().expect("oauth lock").remove(&code) {
                return oauth_error("BAD_AUTH_CODE", "missing or unknown auth code");
            }
            let refresh = format!("na1-{}", uuid::Uuid::new_v4());
            oauth
                .refresh
                .write()
                .expect("oauth lock")
                .insert(refresh.clone());
            axum::Json(oauth.issue(refresh)).into_response()
        }
        Some("refresh_token") => {
            let refresh = req.refresh_token.unwrap_or_default();
            if sim.faults().refresh_refused()
                || !oauth.refresh.read().expect("oauth lock").contains(&refresh)
            {
                return oauth_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
            }
            axum::Json(oauth.issue(refresh)).into_response()
        }
        _ => oauth_error("BAD_GRANT_TYPE", "missing or unknown grant type"),
    }
}
