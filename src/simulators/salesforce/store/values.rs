//! Field values on the way into the store: request bodies from the sObject
//! and composite handlers are checked against the object's schema and
//! coerced to the stored form (dates `YYYY-MM-DD`, datetimes in
//! Salesforce's wire format, numbers and booleans from strings).

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::super::errors::ApiError;
use super::super::schema::{FieldDef, FieldType, ObjectSchema};

/// Salesforce's datetime wire format: `2024-01-15T10:30:00.000+0000`.
pub fn format_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

/// Parses Salesforce's datetime format and RFC 3339.
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Checks a request body against the schema: unknown fields are
/// `INVALID_FIELD`, read-only ones `INVALID_FIELD_FOR_INSERT_UPDATE`, values
/// of the wrong type `JSON_PARSER_ERROR`. Returns the values under their
/// canonical field names.
pub fn normalize_body(
    schema: &ObjectSchema,
    body: &Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut read_only = Vec::new();
    for (k, v) in body {
        if k == "attributes" {
            continue;
        }
        let Some(f) = schema.field(k) else {
            return Err(ApiError::field(
                "INVALID_FIELD",
                format!("No such column '{k}' on sobject of type {}", schema.name),
                vec![k.clone()],
            ));
        };
        if !f.writable {
            read_only.push(f.name.clone());
            continue;
        }
        out.insert(f.name.clone(), coerce(f, v)?);
    }
    if !read_only.is_empty() {
        return Err(ApiError::field(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!(
                "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                read_only.join(", ")
            ),
            read_only,
        ));
    }
    Ok(out)
}

fn coerce(f: &FieldDef, v: &Value) -> Result<Value, ApiError> {
    let bad = |what: &str| {
        ApiError::json_parse(format!(
            "Cannot deserialize instance of {what} from {} value {} or request may be missing a required field",
            match v {
                Value::String(_) => "VALUE_STRING",
                Value::Number(_) => "VALUE_NUMBER",
                Value::Bool(_) => "VALUE_BOOLEAN",
                Value::Array(_) => "START_ARRAY",
                Value::Object(_) => "START_OBJECT",
                Value::Null => "VALUE_NULL",
            },
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        ))
    };
    if v.is_null() {
        return Ok(Value::Null);
    }
    Ok(match f.kind {
        FieldType::Id
        | FieldType::String
        | FieldType::Textarea
        | FieldType::Email
        | FieldType::Phone
        | FieldType::Url
        | FieldType::Picklist
        | FieldType::Reference => match v {
            Value::String(s) => Value::String(s.clone()),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            _ => return Err(bad("string")),
        },
        FieldType::Double | FieldType::Currency | FieldType::Percent => match v {
            Value::Number(n) => Value::Number(n.clone()),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad("double"))?,
            _ => return Err(bad("double")),
        },
        FieldType::Int => match v {
            Value::Number(n) if n.is_i64() => Value::Number(n.clone()),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(|i| json!(i))
                .map_err(|_| bad("int"))?,
            _ => return Err(bad("int")),
        },
        FieldType::Boolean => match v {
            Value::Bool(b) => Value::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => return Err(bad("boolean")),
        },
        FieldType::Date => match v {
            Value::String(s) => {
                let d = NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                    .map_err(|_| bad("date"))?;
                Value::String(d.format("%Y-%m-%d").to_string())
            }
            _ => return Err(bad("date")),
        },
        FieldType::Datetime => match v {
            Value::String(s) => Value::String(format_datetime(
                parse_datetime(s).ok_or_else(|| bad("datetime"))?,
            )),
            _ => return Err(bad("datetime")),
        },
    })
}

/// RFC 3339 with milliseconds and `Z`, as SOQL datetime literals are written.
pub fn soql_datetime(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}
