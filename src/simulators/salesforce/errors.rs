//! Salesforce's error bodies: REST answers carry a JSON array of
//! `{message, errorCode, fields}`; composite results carry
//! `{statusCode, message, fields}` per record.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One Salesforce API error.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `None` for errors that are not about fields (the key is then absent).
    pub fields: Option<Vec<String>>,
    /// Extra keys, e.g. `duplicateResult`.
    pub extra: Option<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: None,
            extra: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn field(code: &'static str, message: impl Into<String>, fields: Vec<String>) -> Self {
        let mut e = Self::bad_request(code, message);
        e.fields = Some(fields);
        e
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        )
    }

    pub fn entity_deleted() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ENTITY_IS_DELETED",
            "entity is deleted",
        )
    }

    pub fn invalid_session() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        )
    }

    pub fn limit_exceeded() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
        )
    }

    pub fn json_parse(message: impl Into<String>) -> Self {
        Self::bad_request("JSON_PARSER_ERROR", message)
    }

    /// The REST form: one element of the error array.
    pub fn rest_json(&self) -> Value {
        let mut v = json!({ "message": self.message, "errorCode": self.code });
        if let Some(f) = &self.fields {
            v["fields"] = json!(f);
        }
        if let Some((k, x)) = &self.extra {
            v[*k] = x.clone();
        }
        v
    }

    /// The composite form: one element of a result's `errors`.
    pub fn composite_json(&self) -> Value {
        let mut v = json!({
            "statusCode": self.code,
            "message": self.message,
            "fields": self.fields.clone().unwrap_or_default(),
        });
        if let Some((k, x)) = &self.extra {
            v[*k] = x.clone();
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!([self.rest_json()]))).into_response()
    }
}

/// Several errors for one record (Salesforce reports all failed rules at once).
#[derive(Debug, Clone)]
pub struct ApiErrors(pub Vec<ApiError>);

impl From<ApiError> for ApiErrors {
    fn from(e: ApiError) -> Self {
        ApiErrors(vec![e])
    }
}

impl IntoResponse for ApiErrors {
    fn into_response(self) -> Response {
        let status = self
            .0
            .first()
            .map(|e| e.status)
            .unwrap_or(StatusCode::BAD_REQUEST);
        let body: Vec<Value> = self.0.iter().map(ApiError::rest_json).collect();
        (status, Json(Value::Array(body))).into_response()
    }
}
