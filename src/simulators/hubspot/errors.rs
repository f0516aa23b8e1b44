//! HubSpot's error bodies: `{"status":"error","message","correlationId","category",…}`
//! for the whole request, and the `StandardError` form inside batch answers.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::store::{ObjectType, PropertyError, WriteError};

pub fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A failed request, rendered as HubSpot renders it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, category: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({
                "status": "error",
                "message": message.into(),
                "correlationId": correlation_id(),
                "category": category,
            }),
            headers: Vec::new(),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            "resource not found",
        )
    }

    pub fn unknown_object(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            format!("Unable to infer object type from: {name}"),
        )
    }

    pub fn bad_json(err: &serde_json::Error) -> Self {
        Self::validation(format!(
            "Invalid input JSON on line {}, column {}: {err}",
            err.line(),
            err.column()
        ))
    }

    /// The whole-request form of a refused write.
    pub fn from_write(ty: ObjectType, err: &WriteError) -> Self {
        let (status, body) = write_error_parts(ty, err);
        let mut body = body;
        body["correlationId"] = Value::String(correlation_id());
        ApiError {
            status,
            body,
            headers: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = value.parse() {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

/// `Property values were not valid: [{"isValid":false,…}]`, HubSpot's message
/// for property errors, plus the structured `errors` list.
fn property_errors(errors: &[PropertyError]) -> (String, Value) {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let listed: Vec<String> = errors
        .iter()
        .map(|e| {
            format!(
                "{{\"isValid\":false,\"message\":{},\"error\":{},\"name\":{},\"localizedErrorMessage\":{}}}",
                q(&e.message),
                q(&e.code),
                q(&e.name),
                q(&e.message)
            )
        })
        .collect();
    let message = format!("Property values were not valid: [{}]", listed.join(","));
    let details: Vec<Value> = errors
        .iter()
        .map(|e| {
            json!({
                "message": e.message,
                "code": e.code,
                "context": {"propertyName": [e.name]},
            })
        })
        .collect();
    (message, Value::Array(details))
}

/// Status and body (without correlation id) of a refused write.
pub fn write_error_parts(ty: ObjectType, err: &WriteError) -> (StatusCode, Value) {
    match err {
        WriteError::Validation(errors) => {
            let (message, details) = property_errors(errors);
            (
                StatusCode::BAD_REQUEST,
                json!({"status": "error", "message": message, "category": "VALIDATION_ERROR", "errors": details}),
            )
        }
        WriteError::Conflict { existing } => (
            StatusCode::CONFLICT,
            json!({
                "status": "error",
                "message": format!("{} already exists. Existing ID: {existing}", capitalized(ty)),
                "category": "CONFLICT",
            }),
        ),
        WriteError::NotFound(id) => (
            StatusCode::NOT_FOUND,
            json!({
                "status": "error",
                "message": format!("Object not found. objectId are usually numeric. ({id})"),
                "category": "OBJECT_NOT_FOUND",
            }),
        ),
    }
}

fn capitalized(ty: ObjectType) -> &'static str {
    match ty {
        ObjectType::Contacts => "Contact",
        ObjectType::Companies => "Company",
        ObjectType::Deals => "Deal",
    }
}

/// One entry of a batch answer's `errors` (`StandardError`), tied to the
/// inputs it concerns through `context`.
pub fn batch_error(ty: ObjectType, err: &WriteError, context: Value) -> Value {
    let (_, body) = write_error_parts(ty, err);
    json!({
        "status": "error",
        "category": body["category"],
        "message": body["message"],
        "context": context,
        "errors": body.get("errors").cloned().unwrap_or(json!([])),
        "links": {},
    })
}
