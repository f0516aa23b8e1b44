//! OAuth 2.0 as Salesforce's token endpoint does it: `refresh_token`,
//! `client_credentials`, `password` and `authorization_code` grants at
//! `/services/oauth2/token`, answers without `expires_in`, and sessions that
//! end after the configured lifetime or when `/__admin/tokens/expire` (or the
//! `expireTokens` fault) revokes them — then every call answers
//! `401 [{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`.
//! While the `refuseRefresh` fault is set, every `refresh_token` grant answers
//! `400 {"error":"invalid_grant","error_description":"expired access/refresh token"}`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use super::Shared;
use super::errors::ApiError;
use super::store::{ORG_ID, USER_ID};

/// A connected app allowed to get tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: String,
    /// Refresh tokens valid for this app from the start.
    #[serde(default)]
    pub refresh_tokens: Vec<String>,
}

/// A user for the username-password grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimUser {
    pub username: String,
    pub password: String,
}

/// The session behind a valid access token.
#[derive(Debug, Clone)]
pub struct Session {
    pub client_id: String,
}

struct Issued {
    client_id: String,
    at: Instant,
}

/// Issued access tokens, refresh tokens and authorization codes.
pub struct Tokens {
    lifetime: Duration,
    access: Mutex<HashMap<String, Issued>>,
    refresh: Mutex<HashSet<(String, String)>>,
    codes: Mutex<HashMap<String, String>>,
}

impl Tokens {
    pub fn new(lifetime: Duration, apps: &[OAuthApp]) -> Self {
        let refresh = apps
            .iter()
            .flat_map(|a| {
                a.refresh_tokens
                    .iter()
                    .map(|r| (a.client_id.clone(), r.clone()))
            })
            .collect();
        Tokens {
            lifetime,
            access: Mutex::new(HashMap::new()),
            refresh: Mutex::new(refresh),
            codes: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a new access token for `client_id`.
    pub fn issue(&self, client_id: &str) -> String {
        let token = format!(
            "{}!AQ{}{}",
            &ORG_ID[..15],
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.access.lock().expect("tokens lock").insert(
            token.clone(),
            Issued {
                client_id: client_id.to_string(),
                at: Instant::now(),
            },
        );
        token
    }

    /// Revokes every access token issued so far; returns how many.
    pub fn expire_all(&self) -> usize {
        let mut access = self.access.lock().expect("tokens lock");
        let n = access.len();
        access.clear();
        n
    }

    /// The session of a bearer token, if it is still valid.
    pub fn validate(&self, token: &str) -> Option<Session> {
        let mut access = self.access.lock().expect("tokens lock");
        let issued = access.get(token)?;
        if issued.at.elapsed() >= self.lifetime {
            access.remove(token);
            return None;
        }
        Some(Session {
            client_id: issued.client_id.clone(),
        })
    }
}

/// The bearer token of a request (`Authorization: Bearer …` or `OAuth …`).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
        .then(|| token.trim())
}

/// Checks the request's session, revoking all tokens first when the
/// `expireTokens` fault was set.
pub fn authenticate(sim: &Shared, headers: &HeaderMap) -> Result<Session, ApiError> {
    if sim.faults.take_expire_tokens() {
        sim.tokens.expire_all();
    }
    bearer(headers)
        .and_then(|t| sim.tokens.validate(t))
        .ok_or_else(ApiError::invalid_session)
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

fn instance_url(sim: &Shared, headers: &HeaderMap) -> String {
    if let Some(u) = &sim.config.instance_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn sign(secret: &str, id: &str, issued_at: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// `POST /services/oauth2/token` (form-encoded).
pub async fn token(
    State(sim): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req = TokenRequest::parse(&body, &headers);
    match grant(&sim, &req) {
        Ok((app, new_refresh)) => token_response(&sim, &headers, app, new_refresh),
        Err(e) => e.into_response(),
    }
}

/// An OAuth error answer: `400 {"error", "error_description"}`.
struct OAuthError(&'static str, &'static str);

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        oauth_error(self.0, self.1)
    }
}

const UNSUPPORTED_GRANT: OAuthError =
    OAuthError("unsupported_grant_type", "grant type not supported");
const INVALID_CLIENT_ID: OAuthError = OAuthError("invalid_client_id", "client identifier invalid");
const INVALID_CLIENT: OAuthError = OAuthError("invalid_client", "invalid client credentials");

/// A token request's form fields and client credentials (from the form, or
/// from an `Authorization: Basic` header, which wins).
struct TokenRequest {
    form: HashMap<String, String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

impl TokenRequest {
    fn parse(body: &[u8], headers: &HeaderMap) -> Self {
        let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let mut req = TokenRequest {
            client_id: None,
            client_secret: None,
            form,
        };
        req.client_id = req.get("client_id").map(str::to_string);
        req.client_secret = req.get("client_secret").map(str::to_string);
        if let Some(basic) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            && let Ok(raw) = B64.decode(basic.trim())
            && let Ok(raw) = String::from_utf8(raw)
            && let Some((id, secret)) = raw.split_once(':')
        {
            req.client_id = Some(id.to_string());
            req.client_secret = Some(secret.to_string());
        }
        req
    }

    /// A non-empty form field.
    fn get(&self, k: &str) -> Option<&str> {
        self.form
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Whether the request carries `app`'s secret.
    fn secret_ok(&self, app: &OAuthApp) -> bool {
        self.client_secret.as_deref() == Some(app.client_secret.as_str())
    }

    /// The secret check of the grants that require one.
    fn check_secret(&self, app: &OAuthApp) -> Result<(), OAuthError> {
        if self.secret_ok(app) {
            Ok(())
        } else {
            Err(INVALID_CLIENT)
        }
    }
}

/// The app a token request authenticates as, and the refresh token to hand
/// out with the access token (`authorization_code` grants only).
fn grant<'s>(
    sim: &'s Shared,
    req: &TokenRequest,
) -> Result<(&'s OAuthApp, Option<String>), OAuthError> {
    let grant = req.get("grant_type").ok_or(UNSUPPORTED_GRANT)?;
    let client_id = req.client_id.as_deref().ok_or(INVALID_CLIENT_ID)?;
    let app = sim
        .config
        .apps
        .iter()
        .find(|a| a.client_id == client_id)
        .ok_or(INVALID_CLIENT_ID)?;
    let new_refresh = match grant {
        "refresh_token" => refresh_token_grant(sim, req, app).map(|()| None),
        "client_credentials" => req.check_secret(app).map(|()| None),
        "password" => password_grant(sim, req, app).map(|()| None),
        "authorization_code" => authorization_code_grant(sim, req, app).map(Some),
        _ => Err(UNSUPPORTED_GRANT),
    }?;
    Ok((app, new_refresh))
}

/// `grant_type=refresh_token`: a refresh token issued to the app (the
/// secret is optional, but must match when given); refused while the
/// `refuseRefresh` fault is set.
fn refresh_token_grant(sim: &Shared, req: &TokenRequest, app: &OAuthApp) -> Result<(), OAuthError> {
    if req.client_secret.is_some() && !req.secret_ok(app) {
        return Err(INVALID_CLIENT);
    }
    let valid = req.get("refresh_token").is_some_and(|r| {
        sim.tokens
            .refresh
            .lock()
            .expect("tokens lock")
            .contains(&(app.client_id.clone(), r.to_string()))
    });
    if !valid || sim.faults.refresh_refused() {
        return Err(OAuthError("invalid_grant", "expired access/refresh token"));
    }
    Ok(())
}

/// `grant_type=password`: the app's secret and a configured user's
/// username and password.
fn password_grant(sim: &Shared, req: &TokenRequest, app: &OAuthApp) -> Result<(), OAuthError> {
    req.check_secret(app)?;
    let ok = sim.config.users.iter().any(|u| {
        Some(u.username.as_str()) == req.get("username")
            && Some(u.password.as_str()) == req.get("password")
    });
    if !ok {
        return Err(OAuthError("invalid_grant", "authentication failure"));
    }
    Ok(())
}

/// `grant_type=authorization_code`: the app's secret and a one-time code
/// `/services/oauth2/authorize` issued to it; returns a new refresh token.
fn authorization_code_grant(
    sim: &Shared,
    req: &TokenRequest,
    app: &OAuthApp,
) -> Result<String, OAuthError> {
    req.check_secret(app)?;
    let code_client = req
        .get("code")
        .and_then(|c| sim.tokens.codes.lock().expect("tokens lock").remove(c));
    if code_client.as_deref() != Some(app.client_id.as_str()) {
        return Err(OAuthError("invalid_grant", "invalid authorization code"));
    }
    let r = format!("5Aep{}", uuid::Uuid::new_v4().simple());
    sim.tokens
        .refresh
        .lock()
        .expect("tokens lock")
        .insert((app.client_id.clone(), r.clone()));
    Ok(r)
}

/// The token answer: a new access token, the instance URL, the identity URL
/// and its signature, and the new refresh token if there is one.
fn token_response(
    sim: &Shared,
    headers: &HeaderMap,
    app: &OAuthApp,
    new_refresh: Option<String>,
) -> Response {
    let access_token = sim.tokens.issue(&app.client_id);
    let instance = instance_url(sim, headers);
    let id = format!("{instance}/id/{ORG_ID}/{USER_ID}");
    let issued_at = chrono::Utc::now().timestamp_millis().to_string();
    let mut body = json!({
        "access_token": access_token,
        "signature": sign(&app.client_secret, &id, &issued_at),
        "scope": "api refresh_token",
        "instance_url": instance,
        "id": id,
        "token_type": "Bearer",
        "issued_at": issued_at,
    });
    if let Some(r) = new_refresh {
        body["refresh_token"] = json!(r);
    }
    Json(body).into_response()
}

#[derive(Deserialize)]
pub struct AuthorizeArgs {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
}

/// `GET /services/oauth2/authorize`: the web-server flow, approved at once
/// (there is no user to ask), redirecting with a one-time `code`.
pub async fn authorize(State(sim): State<Shared>, Query(args): Query<AuthorizeArgs>) -> Response {
    if args.response_type.as_deref() != Some("code") {
        return oauth_error("unsupported_response_type", "response type not supported");
    }
    let Some(client_id) = args
        .client_id
        .filter(|c| sim.config.apps.iter().any(|a| &a.client_id == c))
    else {
        return oauth_error("invalid_client_id", "client identifier invalid");
    };
    let Some(redirect) = args.redirect_uri else {
        return oauth_error("redirect_uri_missing", "redirect_uri must be provided");
    };
    let code = format!("aPrx{}", uuid::Uuid::new_v4().simple());
    sim.tokens
        .codes
        .lock()
        .expect("tokens lock")
        .insert(code.clone(), client_id);
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("code", &code);
    if let Some(s) = &args.state {
        query.append_pair("state", s);
    }
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let location = format!("{redirect}{sep}{}", query.finish());
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}
