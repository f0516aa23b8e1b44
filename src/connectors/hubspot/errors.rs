//! HubSpot answers → [`ConnectorError`]: the whole-request error body
//! (`{status, message, correlationId, category, errors}`), the 429 body
//! (`errorType: RATE_LIMIT`, `policyName`) with the `X-HubSpot-RateLimit-*`
//! headers, and the per-input `StandardError`s of 207 batch answers.

use std::time::Duration;

use chrono::{Days, NaiveTime, Utc};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::connectors::error::{ConnectorError, ErrorClass};
use crate::connectors::http::{header_str, retry_after};

/// Wait for a ten-secondly limit when the headers don't say.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    policy_name: Option<String>,
    #[serde(default)]
    errors: Vec<ErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    context: Option<Value>,
}

/// `Contact already exists. Existing ID: 123` → `123`.
fn existing_id(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("Existing ID:")?;
    let id: String = rest
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Property names from `errors[].context.propertyName`, or from the
/// `Property values were not valid: [{…"name":"x"…}]` message.
fn blamed_fields(body: &ErrorBody) -> Vec<String> {
    let mut fields: Vec<String> = body
        .errors
        .iter()
        .filter_map(|e| e.context.as_ref()?.get("propertyName")?.as_array().cloned())
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    if fields.is_empty()
        && let Some(list) = body
            .message
            .as_deref()
            .and_then(|m| m.split_once("Property values were not valid: "))
            .and_then(|(_, json)| serde_json::from_str::<Vec<Value>>(json).ok())
    {
        fields = list
            .iter()
            .filter_map(|v| v.get("name")?.as_str().map(String::from))
            .collect();
    }
    fields.dedup();
    fields
}

/// How long a 429 asks to wait: `Retry-After` if sent, else by policy.
fn rate_limit_wait(headers: &HeaderMap, policy: Option<&str>) -> Duration {
    if let Some(d) = retry_after(headers) {
        return d;
    }
    match policy {
        Some("DAILY") => {
            let now = Utc::now();
            let midnight = now
                .date_naive()
                .checked_add_days(Days::new(1))
                .map(|d| d.and_time(NaiveTime::MIN).and_utc());
            midnight
                .and_then(|m| (m - now).to_std().ok())
                .unwrap_or(Duration::from_secs(3600))
        }
        Some("SECONDLY") => Duration::from_secs(1),
        _ => {
            let secondly_spent = header_str(headers, "x-hubspot-ratelimit-secondly-remaining")
                == Some("0")
                && header_str(headers, "x-hubspot-ratelimit-remaining")
                    .and_then(|r| r.parse::<u64>().ok())
                    .is_some_and(|r| r > 0);
            if secondly_spent {
                Duration::from_secs(1)
            } else {
                header_str(headers, "x-hubspot-ratelimit-interval-milliseconds")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_millis)
                    .unwrap_or(DEFAULT_INTERVAL)
            }
        }
    }
}

/// Classifies a non-success answer of the API.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ConnectorError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let message = parsed
        .message
        .clone()
        .unwrap_or_else(|| format!("HubSpot answered HTTP {status}"));
    let code = parsed
        .category
        .clone()
        .or_else(|| parsed.error_type.clone())
        .or_else(|| parsed.errors.first().and_then(|e| e.code.clone()));
    let class = match status {
        401 | 403 => ErrorClass::AuthExpired,
        404 => ErrorClass::NotFound,
        429 => ErrorClass::RateLimit,
        408 | 423 | 500..=599 => ErrorClass::Transient,
        _ => ErrorClass::FieldValidation,
    };
    let mut err = ConnectorError::new(class, message).with_status(status);
    if let Some(c) = code {
        err = err.with_code(c);
    }
    match class {
        ErrorClass::RateLimit => {
            err = err.with_retry_after(rate_limit_wait(headers, parsed.policy_name.as_deref()));
        }
        ErrorClass::Transient => {
            if let Some(d) = retry_after(headers) {
                err = err.with_retry_after(d);
            }
        }
        ErrorClass::FieldValidation => {
            err = err.with_fields(blamed_fields(&parsed));
            if status == 409 || parsed.category.as_deref() == Some("CONFLICT") {
                err = already_exists(err);
            }
        }
        _ => {}
    }
    err
}

/// Classifies one entry of a batch answer's `errors`.
pub fn classify_item(item: &Value) -> ConnectorError {
    let parsed: ErrorBody = serde_json::from_value(item.clone()).unwrap_or_default();
    let message = parsed
        .message
        .clone()
        .unwrap_or_else(|| "HubSpot rejected this input".to_string());
    let category = parsed.category.clone().unwrap_or_default();
    let (class, status) = match category.as_str() {
        "OBJECT_NOT_FOUND" => (ErrorClass::NotFound, 404),
        "CONFLICT" => (ErrorClass::FieldValidation, 409),
        "RATE_LIMITS" | "RATE_LIMIT" => (ErrorClass::RateLimit, 429),
        "VALIDATION_ERROR" | "INVALID_PARAMS" | "PROPERTY_DOESNT_EXIST" => {
            (ErrorClass::FieldValidation, 400)
        }
        _ => (ErrorClass::Transient, 500),
    };
    let mut err = ConnectorError::new(class, message).with_status(status);
    if !category.is_empty() {
        err = err.with_code(category);
    }
    if class == ErrorClass::FieldValidation {
        err = already_exists(err.with_fields(blamed_fields(&parsed)));
    }
    err
}

/// A conflict naming the record that holds the unique value (`Contact
/// already exists. Existing ID: …`) is [`ErrorClass::AlreadyExists`].
fn already_exists(mut err: ConnectorError) -> ConnectorError {
    err.existing_id = existing_id(&err.message);
    if err.existing_id.is_some() {
        err.class = ErrorClass::AlreadyExists;
    }
    err
}

/// A copy for every input of a call that failed as a whole (the cause stays with the first).
pub fn duplicate(err: &ConnectorError) -> ConnectorError {
    ConnectorError {
        class: err.class,
        message: err.message.clone(),
        status: err.status,
        retry_after: err.retry_after,
        fields: err.fields.clone(),
        code: err.code.clone(),
        existing_id: err.existing_id.clone(),
        source: None,
    }
}

/// An answer that could not be decoded.
pub fn undecodable(what: &str, err: serde_json::Error) -> ConnectorError {
    ConnectorError::new(
        ErrorClass::Transient,
        format!("HubSpot answered an undecodable {what}"),
    )
    .with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_carries_existing_id() {
        let body = br#"{"status":"error","message":"Contact already exists. Existing ID: 10042","correlationId":"x","category":"CONFLICT"}"#;
        let e = classify(409, &HeaderMap::new(), body);
        assert_eq!(e.class, ErrorClass::AlreadyExists);
        assert_eq!(e.existing_id.as_deref(), Some("10042"));
        assert_eq!(e.code.as_deref(), Some("CONFLICT"));
    }

    #[test]
    fn validation_names_fields_from_message() {
        let body = br#"{"status":"error","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"Property \\\"foo\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"foo\"}]","category":"VALIDATION_ERROR"}"#;
        let e = classify(400, &HeaderMap::new(), body);
        assert_eq!(&*e.fields, ["foo".to_string()]);
    }

    #[test]
    fn ten_secondly_waits_the_interval() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            "10000".parse().unwrap(),
        );
        h.insert("x-hubspot-ratelimit-remaining", "0".parse().unwrap());
        let body = br#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}"#;
        let e = classify(429, &h, body);
        assert_eq!(e.class, ErrorClass::RateLimit);
        assert_eq!(e.retry_after, Some(Duration::from_secs(10)));
    }
}
