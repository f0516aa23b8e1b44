//! The failure classes a user sees for every external call, each with a
//! retry hint and the wait the vendor asked for.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why an external call failed, in the terms shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The record was rejected: required field, custom rule, bad value,
    /// a duplicate rule's likely match.
    FieldValidation,
    /// A create refused because a unique field already holds its value on
    /// the record `existing_id` (HubSpot's contact email, a Salesforce
    /// unique field): that record is the same one, not a likely match.
    AlreadyExists,
    /// The vendor's request budget is spent; wait `retry_after`.
    RateLimit,
    /// The access token expired or was revoked; refresh and retry.
    AuthExpired,
    /// The record does not exist (or no longer does).
    NotFound,
    /// 5xx, timeouts, connection errors: retry with backoff.
    Transient,
    /// The record changed since it was read (optimistic locking).
    StaleVersion,
    /// A webhook or request whose signature, secret or timestamp is wrong.
    Unauthenticated,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::FieldValidation => "field_validation",
            ErrorClass::AlreadyExists => "already_exists",
            ErrorClass::RateLimit => "rate_limit",
            ErrorClass::AuthExpired => "auth_expired",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Transient => "transient",
            ErrorClass::StaleVersion => "stale_version",
            ErrorClass::Unauthenticated => "unauthenticated",
        }
    }

    /// Whether repeating the same call later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimit | ErrorClass::AuthExpired | ErrorClass::Transient
        )
    }
}

/// A failed external call. `message` is the vendor's own text (safe to show:
/// it never contains credentials); `source` keeps the underlying cause.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", class.as_str())]
pub struct ConnectorError {
    pub class: ErrorClass,
    pub message: String,
    /// HTTP status, when the vendor answered.
    pub status: Option<u16>,
    /// How long the vendor asked to wait (Retry-After, limit headers).
    pub retry_after: Option<Duration>,
    /// Fields the vendor blamed.
    pub fields: Box<[String]>,
    /// Vendor error code, e.g. `REQUIRED_FIELD_MISSING`, `VALIDATION_ERROR`.
    pub code: Option<Box<str>>,
    /// For duplicates: the id of the record that already exists.
    pub existing_id: Option<String>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConnectorError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            status: None,
            retry_after: None,
            fields: Box::default(),
            code: None,
            existing_id: None,
            source: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub fn with_fields(mut self, fields: Vec<String>) -> Self {
        self.fields = fields.into_boxed_slice();
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into().into_boxed_str());
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn retryable(&self) -> bool {
        self.class.retryable()
    }

    /// Connection failures, timeouts and undecodable answers are transient.
    pub fn from_transport(err: reqwest::Error) -> Self {
        let msg = if err.is_timeout() {
            "request timed out".to_string()
        } else if err.is_connect() {
            "connection failed".to_string()
        } else {
            "request failed".to_string()
        };
        let status = err.status().map(|s| s.as_u16());
        let mut e = ConnectorError::new(ErrorClass::Transient, msg).with_source(err.without_url());
        e.status = status;
        e
    }
}
