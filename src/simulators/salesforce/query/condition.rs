//! `WHERE` conditions against one sObject: binding resolves field names and
//! checks literal types against the schema (`INVALID_FIELD`,
//! `INVALID_QUERY_FILTER_OPERATOR`), and the bound [`Cond`] tests stored
//! records, for queries and for the store's validation rules.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::super::errors::ApiError;
use super::super::schema::{FieldType, ObjectSchema};
use super::super::store::{format_datetime, normalize_id};
use super::parser::{Expr, Literal};

#[derive(Debug, Clone)]
pub enum Bound {
    Null,
    Bool(bool),
    Num(f64),
    /// Compared byte-wise (ids, normalized dates and datetimes).
    Exact(String),
    /// Compared ignoring case (lowercased).
    Fold(String),
}

/// A condition resolved against one sObject's schema.
#[derive(Debug, Clone)]
pub enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp {
        field: String,
        op: &'static str,
        value: Bound,
    },
    In {
        field: String,
        values: Vec<Bound>,
        negated: bool,
    },
    Like {
        field: String,
        pattern: Vec<char>,
    },
}

pub(super) fn no_such_column(field: &str, object: &str) -> ApiError {
    ApiError::bad_request(
        "INVALID_FIELD",
        format!(
            "No such column '{field}' on entity '{object}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
        ),
    )
}

fn bind_literal(kind: FieldType, lit: &Literal, field: &str) -> Result<Bound, ApiError> {
    let mismatch = || {
        ApiError::bad_request(
            "INVALID_QUERY_FILTER_OPERATOR",
            format!(
                "value of filter criterion for field '{field}' must be of type {kind:?} and should not be enclosed in quotes"
            ),
        )
    };
    Ok(match (kind, lit) {
        (_, Literal::Null) => Bound::Null,
        (FieldType::Boolean, Literal::Bool(b)) => Bound::Bool(*b),
        (k, Literal::Num(n)) if k.is_numeric() => Bound::Num(*n),
        (FieldType::Datetime, Literal::DateTime(t)) => Bound::Exact(format_datetime(*t)),
        (FieldType::Datetime, Literal::Date(d)) => Bound::Exact(format_datetime(
            d.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
        )),
        (FieldType::Date, Literal::Date(d)) => Bound::Exact(d.format("%Y-%m-%d").to_string()),
        (FieldType::Id | FieldType::Reference, Literal::Str(s)) => {
            Bound::Exact(normalize_id(s).unwrap_or_else(|| s.clone()))
        }
        (
            FieldType::String
            | FieldType::Textarea
            | FieldType::Email
            | FieldType::Phone
            | FieldType::Url
            | FieldType::Picklist,
            Literal::Str(s),
        ) => Bound::Fold(s.to_lowercase()),
        _ => return Err(mismatch()),
    })
}

/// Resolves field names (case-insensitively) and literal types.
pub fn bind(expr: &Expr, schema: &ObjectSchema) -> Result<Cond, ApiError> {
    let field = |name: &str| {
        schema
            .field(name)
            .ok_or_else(|| no_such_column(name, &schema.name))
    };
    Ok(match expr {
        Expr::And(a, b) => Cond::And(Box::new(bind(a, schema)?), Box::new(bind(b, schema)?)),
        Expr::Or(a, b) => Cond::Or(Box::new(bind(a, schema)?), Box::new(bind(b, schema)?)),
        Expr::Not(a) => Cond::Not(Box::new(bind(a, schema)?)),
        Expr::Cmp(name, op, lit) => {
            let f = field(name)?;
            Cond::Cmp {
                field: f.name.clone(),
                op,
                value: bind_literal(f.kind, lit, &f.name)?,
            }
        }
        Expr::In(name, lits, negated) => {
            let f = field(name)?;
            Cond::In {
                field: f.name.clone(),
                values: lits
                    .iter()
                    .map(|l| bind_literal(f.kind, l, &f.name))
                    .collect::<Result<_, _>>()?,
                negated: *negated,
            }
        }
        Expr::Like(name, pattern) => {
            let f = field(name)?;
            Cond::Like {
                field: f.name.clone(),
                pattern: pattern.to_lowercase().chars().collect(),
            }
        }
    })
}

pub(super) fn fold_cmp(a: &str, b: &str) -> Ordering {
    a.chars()
        .flat_map(char::to_lowercase)
        .cmp(b.chars().flat_map(char::to_lowercase))
}

fn compare(v: &Value, b: &Bound) -> Option<Ordering> {
    match (v, b) {
        (Value::Bool(x), Bound::Bool(y)) => Some(x.cmp(y)),
        (Value::Number(x), Bound::Num(y)) => x.as_f64()?.partial_cmp(y),
        (Value::String(x), Bound::Exact(y)) => Some(x.as_str().cmp(y.as_str())),
        (Value::String(x), Bound::Fold(y)) => Some(fold_cmp(x, y)),
        _ => None,
    }
}

fn like(text: &[char], pattern: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('%', rest)) => (0..=text.len()).any(|i| like(&text[i..], rest)),
        Some(('_', rest)) => !text.is_empty() && like(&text[1..], rest),
        Some((c, rest)) => text.first() == Some(c) && like(&text[1..], rest),
    }
}

impl Cond {
    /// Whether `rec` satisfies the condition.
    pub fn matches(&self, rec: &Map<String, Value>) -> bool {
        match self {
            Cond::And(a, b) => a.matches(rec) && b.matches(rec),
            Cond::Or(a, b) => a.matches(rec) || b.matches(rec),
            Cond::Not(a) => !a.matches(rec),
            Cond::Cmp { field, op, value } => {
                let v = rec.get(field).unwrap_or(&Value::Null);
                let is_null = v.is_null() || v.as_str() == Some("");
                match (value, *op) {
                    (Bound::Null, "=") => is_null,
                    (Bound::Null, "!=") => !is_null,
                    (Bound::Null, _) => false,
                    (_, "!=") if is_null => true,
                    (_, _) if is_null => false,
                    (b, op) => match compare(v, b) {
                        Some(o) => match op {
                            "=" => o == Ordering::Equal,
                            "!=" => o != Ordering::Equal,
                            "<" => o == Ordering::Less,
                            "<=" => o != Ordering::Greater,
                            ">" => o == Ordering::Greater,
                            ">=" => o != Ordering::Less,
                            _ => false,
                        },
                        None => op == "!=",
                    },
                }
            }
            Cond::In {
                field,
                values,
                negated,
            } => {
                let v = rec.get(field).unwrap_or(&Value::Null);
                let found = values.iter().any(|b| match b {
                    Bound::Null => v.is_null(),
                    b => compare(v, b) == Some(Ordering::Equal),
                });
                found != *negated
            }
            Cond::Like { field, pattern } => match rec.get(field) {
                Some(Value::String(s)) => {
                    let text: Vec<char> = s.to_lowercase().chars().collect();
                    like(&text, pattern)
                }
                _ => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn like_and_in() {
        let q = super::super::parse("SELECT Id FROM Contact WHERE Email LIKE '%@EXAMPLE.com' AND LastName NOT IN ('a', 'b')").unwrap();
        let schema = &super::super::super::schema::build(&[]).unwrap()[1];
        let c = bind(q.filter.as_ref().unwrap(), schema).unwrap();
        let mut rec = Map::new();
        rec.insert("Email".into(), json!("x@example.com"));
        rec.insert("LastName".into(), json!("c"));
        assert!(c.matches(&rec));
        rec.insert("LastName".into(), json!("A"));
        assert!(!c.matches(&rec));
    }
}
