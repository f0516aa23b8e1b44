//! Salesforce failures in extsync's classes. REST errors arrive as a JSON
//! array of `{message, errorCode, fields}`; composite results carry
//! `{statusCode, message, fields}` per record. The quota answer is
//! `403 REQUEST_LIMIT_EXCEEDED` with no `Retry-After`, so the wait is the
//! connector's configured limit back-off.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::connectors::{ConnectorError, ErrorClass};

/// One element of a Salesforce error array.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiErrorBody {
    #[serde(default)]
    pub message: String,
    #[serde(default, alias = "statusCode")]
    pub error_code: String,
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub duplicate_result: Option<Value>,
}

/// The class of an error code, for codes whose class does not follow from
/// the HTTP status (composite results have none).
pub fn class_of_code(code: &str) -> ErrorClass {
    match code {
        "INVALID_SESSION_ID" => ErrorClass::AuthExpired,
        "REQUEST_LIMIT_EXCEEDED" | "TOO_MANY_REQUESTS" => ErrorClass::RateLimit,
        "NOT_FOUND" | "ENTITY_IS_DELETED" | "INVALID_QUERY_LOCATOR" => ErrorClass::NotFound,
        "UNABLE_TO_LOCK_ROW"
        | "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        | "SERVER_UNAVAILABLE"
        | "UNKNOWN_EXCEPTION"
        | "QUERY_TIMEOUT" => ErrorClass::Transient,
        "PRECONDITION_FAILED" => ErrorClass::StaleVersion,
        _ => ErrorClass::FieldValidation,
    }
}

fn existing_id(e: &ApiErrorBody) -> Option<String> {
    if let Some(d) = &e.duplicate_result {
        return d
            .pointer("/matchResults/0/matchRecords/0/record/Id")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if e.error_code == "DUPLICATE_VALUE" {
        return e
            .message
            .rsplit_once("with id: ")
            .map(|(_, id)| id.trim().to_string());
    }
    None
}

/// A connector error from one Salesforce error body.
pub fn from_body(
    e: &ApiErrorBody,
    status: Option<StatusCode>,
    limit_wait: Duration,
) -> ConnectorError {
    let class = match status.map(|s| s.as_u16()) {
        Some(401) => ErrorClass::AuthExpired,
        Some(404) => ErrorClass::NotFound,
        Some(412) => ErrorClass::StaleVersion,
        Some(429) => ErrorClass::RateLimit,
        Some(s) if s >= 500 => ErrorClass::Transient,
        _ => class_of_code(&e.error_code),
    };
    let mut err = ConnectorError::new(class, e.message.clone())
        .with_fields(e.fields.clone())
        .with_code(e.error_code.clone());
    if let Some(s) = status {
        err = err.with_status(s.as_u16());
    }
    if class == ErrorClass::RateLimit {
        err = err.with_retry_after(limit_wait);
    }
    err.existing_id = existing_id(e);
    // A unique field's value is held by that record: the same one. A
    // duplicate rule's match (`DUPLICATES_DETECTED`) is only likely.
    if e.error_code == "DUPLICATE_VALUE" && err.existing_id.is_some() {
        err.class = ErrorClass::AlreadyExists;
    }
    err
}

/// Classifies a non-success HTTP answer.
pub fn from_response(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    limit_wait: Duration,
) -> ConnectorError {
    let parsed: Option<ApiErrorBody> = serde_json::from_slice::<Vec<ApiErrorBody>>(body)
        .ok()
        .and_then(|v| v.into_iter().next())
        .or_else(|| serde_json::from_slice::<ApiErrorBody>(body).ok());
    let mut err = match parsed {
        Some(e) if !e.error_code.is_empty() => from_body(&e, Some(status), limit_wait),
        _ => {
            let class = match status.as_u16() {
                401 => ErrorClass::AuthExpired,
                404 => ErrorClass::NotFound,
                412 => ErrorClass::StaleVersion,
                429 => ErrorClass::RateLimit,
                s if s >= 500 => ErrorClass::Transient,
                _ => ErrorClass::FieldValidation,
            };
            ConnectorError::new(class, format!("HTTP {status}")).with_status(status.as_u16())
        }
    };
    if err.class == ErrorClass::RateLimit {
        let wait = crate::connectors::http::retry_after(headers).unwrap_or(limit_wait);
        err = err.with_retry_after(wait);
    }
    err
}

/// The error of a composite record result `{success:false, errors:[…]}`.
pub fn from_composite(errors: &[ApiErrorBody], limit_wait: Duration) -> ConnectorError {
    match errors.first() {
        Some(e) => {
            let mut err = from_body(e, None, limit_wait);
            if errors.len() > 1 {
                err.message = errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
            }
            err
        }
        None => ConnectorError::new(ErrorClass::Transient, "record failed without an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_rest_errors() {
        let wait = Duration::from_secs(60);
        let h = reqwest::header::HeaderMap::new();
        let e = from_response(
            StatusCode::FORBIDDEN,
            &h,
            br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
            wait,
        );
        assert_eq!(e.class, ErrorClass::RateLimit);
        assert_eq!(e.retry_after, Some(wait));
        let e = from_response(
            StatusCode::BAD_REQUEST,
            &h,
            br#"[{"message":"Required fields are missing: [Name]","errorCode":"REQUIRED_FIELD_MISSING","fields":["Name"]}]"#,
            wait,
        );
        assert_eq!(e.class, ErrorClass::FieldValidation);
        assert_eq!(&*e.fields, ["Name"]);
        let e = from_response(StatusCode::BAD_GATEWAY, &h, b"<html>", wait);
        assert_eq!(e.class, ErrorClass::Transient);
        let e = from_response(
            StatusCode::BAD_REQUEST,
            &h,
            br#"[{"message":"duplicate value found: Alguna_Id__c duplicates value on record with id: 001Dn0000000001AAA","errorCode":"DUPLICATE_VALUE","fields":[]}]"#,
            wait,
        );
        assert_eq!(e.existing_id.as_deref(), Some("001Dn0000000001AAA"));
        assert_eq!(e.class, ErrorClass::AlreadyExists);
    }
}
