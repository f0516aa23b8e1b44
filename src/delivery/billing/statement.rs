//! One billing write as SQL: a version-guarded `UPDATE … RETURNING 1` and
//! the `SELECT 1` that tells a skipped write (the row is newer) from a
//! missing row. Every name is checked against the catalog first.

use serde_json::{Map, Value};

use super::catalog::{Table, cast, text_form};
use super::{BillingError, BillingWriter};
use crate::delivery::intent::BillingWrite;
use crate::sql::quote_ident;

impl BillingWriter {
    /// The statement and parameters of one write, after checking every
    /// name it uses.
    pub(super) fn plan(&self, table: &Table, w: &BillingWrite) -> Result<Plan, BillingError> {
        let column = |name: &str| {
            table
                .columns
                .get(name)
                .ok_or_else(|| BillingError::UnknownColumn {
                    table: w.table.clone(),
                    column: name.to_string(),
                })
        };
        let version_name = self.config.version_column.as_str();
        let version =
            table
                .columns
                .get(version_name)
                .ok_or_else(|| BillingError::NoVersionColumn {
                    table: w.table.clone(),
                    column: version_name.to_string(),
                })?;
        if w.key.is_empty() {
            return Err(BillingError::NoKey {
                table: w.table.clone(),
            });
        }
        let mut params: Vec<Option<String>> = Vec::new();
        let mut sets = Vec::new();
        for (name, value) in &w.columns {
            let c = column(name)?;
            if c.generated {
                return Err(BillingError::Generated {
                    table: w.table.clone(),
                    column: name.clone(),
                });
            }
            if name == version_name {
                continue;
            }
            params.push(text_form(value, c.form));
            sets.push(format!("{} = {}", quote_ident(name), cast(params.len(), c)));
        }
        params.push(Some(w.as_of.to_rfc3339()));
        let as_of = cast(params.len(), version);
        let quoted_version = quote_ident(version_name);
        sets.push(format!("{quoted_version} = {as_of}"));
        let mut conds = Vec::new();
        let mut exists_conds = Vec::new();
        for (i, (name, value)) in w.key.iter().enumerate() {
            let c = column(name)?;
            params.push(text_form(value, c.form));
            conds.push(format!("{} = {}", quote_ident(name), cast(params.len(), c)));
            exists_conds.push(format!("{} = {}", quote_ident(name), cast(i + 1, c)));
        }
        let key_cond = conds.join(" AND ");
        let update = format!(
            "UPDATE {table} SET {sets} WHERE {key_cond} \
             AND ({quoted_version} IS NULL OR {quoted_version} <= {as_of}) RETURNING 1",
            table = table.quoted,
            sets = sets.join(", "),
        );
        let exists = format!(
            "SELECT 1 FROM {} WHERE {}",
            table.quoted,
            exists_conds.join(" AND ")
        );
        Ok(Plan {
            update,
            exists,
            params,
            billing_id: key_text(&w.key),
        })
    }
}

/// One write's statements and their parameters.
pub(super) struct Plan {
    pub(super) update: String,
    /// Whether the key's row exists (asked when the update changed nothing).
    pub(super) exists: String,
    pub(super) params: Vec<Option<String>>,
    pub(super) billing_id: String,
}

/// The key's values as one id: the value itself for a one-column key,
/// `col=value` pairs otherwise.
fn key_text(key: &Map<String, Value>) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if key.len() == 1 {
        return key.values().next().map(text).unwrap_or_default();
    }
    key.iter()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_text_names_the_record() {
        let one: Map<String, Value> = [("id".to_string(), json!(42))].into_iter().collect();
        assert_eq!(key_text(&one), "42");
        let two: Map<String, Value> = [("a".to_string(), json!("x")), ("b".to_string(), json!(1))]
            .into_iter()
            .collect();
        assert_eq!(key_text(&two), "a=x,b=1");
    }
}
