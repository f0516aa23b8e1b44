//! Which records a query returns, in which order: the object and fields
//! checked against the schema, the `WHERE` condition applied to the
//! store's records, `ORDER BY` with `NULLS FIRST|LAST` and the id as the
//! last tie-break, then `OFFSET` and `LIMIT`. The ids feed the cursors of
//! the query endpoints.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::super::errors::ApiError;
use super::super::schema::FieldType;
use super::super::store::Store;
use super::Query;
use super::condition::{bind, fold_cmp, no_such_column};

fn sort_cmp(a: &Value, b: &Value, kind: FieldType) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => match kind {
            FieldType::Id | FieldType::Reference | FieldType::Date | FieldType::Datetime => {
                x.cmp(y)
            }
            _ => fold_cmp(x, y),
        },
        _ => Ordering::Equal,
    }
}

/// Ids of the records `q` selects, in order, after `OFFSET` and `LIMIT`.
pub fn select_ids(
    store: &Store,
    q: &Query,
    include_deleted: bool,
) -> Result<Vec<String>, ApiError> {
    let schema = store.schema(&q.object).ok_or_else(|| {
        ApiError::bad_request(
            "INVALID_TYPE",
            format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name.",
                q.object
            ),
        )
    })?;
    for f in &q.fields {
        if schema.field(f).is_none() {
            return Err(no_such_column(f, &schema.name));
        }
    }
    let cond = q.filter.as_ref().map(|e| bind(e, schema)).transpose()?;
    let mut keys = Vec::new();
    for k in &q.order {
        let f = schema
            .field(&k.field)
            .ok_or_else(|| no_such_column(&k.field, &schema.name))?;
        keys.push((f.name.clone(), f.kind, k.descending, k.nulls_last));
    }
    let mut rows: Vec<&Map<String, Value>> = store
        .scan(&q.object)
        .filter(|r| include_deleted || r.get("IsDeleted") != Some(&Value::Bool(true)))
        .filter(|r| cond.as_ref().is_none_or(|c| c.matches(r)))
        .collect();
    let id_of = |r: &Map<String, Value>| {
        r.get("Id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    rows.sort_by(|a, b| {
        for (field, kind, desc, nulls_last) in &keys {
            let va = a.get(field).unwrap_or(&Value::Null);
            let vb = b.get(field).unwrap_or(&Value::Null);
            let o = match (va.is_null(), vb.is_null()) {
                (true, true) => Ordering::Equal,
                (true, false) => {
                    if *nulls_last {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (false, true) => {
                    if *nulls_last {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (false, false) => {
                    let o = sort_cmp(va, vb, *kind);
                    if *desc { o.reverse() } else { o }
                }
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        id_of(a).cmp(&id_of(b))
    });
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(usize::MAX);
    Ok(rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(id_of)
        .collect())
}
