//! The billing writer's view of the catalog: each table's columns, their
//! types and how a JSON value becomes the text the column's type parses.
//! Read once per table, and again when a write names an unknown column.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio_postgres::Client;

use super::{BillingError, BillingWriter, pg};
use crate::delivery::intent::BillingWrite;
use crate::sql::quote_table;

/// One column as the catalog describes it.
#[derive(Debug, Clone)]
pub(super) struct Column {
    /// `format_type` of the column, valid in a cast.
    pub(super) sql_type: String,
    pub(super) form: ValueForm,
    pub(super) generated: bool,
}

/// How a JSON value is turned into the text the column's type parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValueForm {
    Scalar,
    Json,
    Array,
}

#[derive(Debug)]
pub(super) struct Table {
    /// `"schema"."table"`.
    pub(super) quoted: String,
    pub(super) columns: HashMap<String, Column>,
}

impl BillingWriter {
    /// The catalog entry of `name`, read once and again when a write names
    /// a column it does not know (the table may have changed).
    pub(super) async fn table(
        &self,
        client: &Client,
        name: &str,
        w: &BillingWrite,
    ) -> Result<Arc<Table>, BillingError> {
        let mut tables = self.tables.lock().await;
        if let Some(t) = tables.get(name) {
            let known = w
                .key
                .keys()
                .chain(w.columns.keys())
                .all(|c| t.columns.contains_key(c));
            if known {
                return Ok(t.clone());
            }
        }
        let (schema, table) = name
            .split_once('.')
            .filter(|(s, t)| !s.is_empty() && !t.is_empty())
            .ok_or_else(|| BillingError::InvalidTable {
                table: name.to_string(),
            })?;
        let rows = client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                        t.typname::text, t.typcategory::text, a.attgenerated::text <> '' \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
                   AND a.attnum > 0 AND NOT a.attisdropped",
                &[&schema, &table],
            )
            .await
            .map_err(pg("reading the table catalog"))?;
        if rows.is_empty() {
            return Err(BillingError::UnknownTable {
                table: name.to_string(),
            });
        }
        let columns = rows
            .iter()
            .map(|r| {
                let typname: String = r.get(2);
                let category: String = r.get(3);
                let form = if typname == "json" || typname == "jsonb" {
                    ValueForm::Json
                } else if category == "A" {
                    ValueForm::Array
                } else {
                    ValueForm::Scalar
                };
                (
                    r.get::<_, String>(0),
                    Column {
                        sql_type: r.get(1),
                        form,
                        generated: r.get(4),
                    },
                )
            })
            .collect();
        let t = Arc::new(Table {
            quoted: quote_table(schema, table),
            columns,
        });
        tables.insert(name.to_string(), t.clone());
        Ok(t)
    }
}

/// `$n` cast to the column's type.
pub(super) fn cast(n: usize, c: &Column) -> String {
    match c.form {
        ValueForm::Array => format!(
            "(CASE WHEN ${n}::text IS NULL THEN NULL \
             ELSE ARRAY(SELECT pg_catalog.jsonb_array_elements_text(${n}::text::jsonb)) END)::{}",
            c.sql_type
        ),
        _ => format!("(${n}::text)::{}", c.sql_type),
    }
}

/// The text the column's type parses for `value`; `None` is SQL NULL.
pub(super) fn text_form(value: &Value, form: ValueForm) -> Option<String> {
    match (value, form) {
        (Value::Null, _) => None,
        (v, ValueForm::Json) => Some(v.to_string()),
        (Value::String(s), ValueForm::Array) => {
            Some(Value::Array(vec![s.clone().into()]).to_string())
        }
        (v @ Value::Array(_), ValueForm::Array) => Some(v.to_string()),
        (Value::String(s), _) => Some(s.clone()),
        (Value::Bool(b), _) => Some(b.to_string()),
        (Value::Number(n), _) => Some(n.to_string()),
        (v, _) => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_take_the_text_form_of_their_column() {
        assert_eq!(
            text_form(&json!("x"), ValueForm::Scalar).as_deref(),
            Some("x")
        );
        assert_eq!(
            text_form(&json!("x"), ValueForm::Json).as_deref(),
            Some("\"x\"")
        );
        assert_eq!(
            text_form(&json!(1.5), ValueForm::Scalar).as_deref(),
            Some("1.5")
        );
        assert_eq!(
            text_form(&json!({"a": 1}), ValueForm::Json).as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(
            text_form(&json!(["a", "b"]), ValueForm::Array).as_deref(),
            Some("[\"a\",\"b\"]")
        );
        assert_eq!(text_form(&Value::Null, ValueForm::Json), None);
    }
}
