//! The billing record as mappings see it: a table row with camelCase keys
//! (`billing_address` → `billingAddress`) and JSON columns embedded, so paths
//! like `billingAddress.line1` reach into them; and dotted-path access to
//! either side's fields.

use serde_json::{Map, Value};

use crate::config::FieldPath;

/// `billing_address` → `billingAddress`.
pub fn camel_case(column: &str) -> String {
    let mut out = String::with_capacity(column.len());
    let mut upper = false;
    for c in column.chars() {
        if c == '_' {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `billingAddress` → `billing_address`.
pub fn snake_case(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 4);
    for c in field.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The mapping view of a captured row.
pub fn billing_view(row: &Map<String, Value>) -> Map<String, Value> {
    row.iter()
        .map(|(k, v)| (camel_case(k), v.clone()))
        .collect()
}

/// The value at `path`, if every segment exists. JSON `null` counts as present.
pub fn get<'a>(record: &'a Map<String, Value>, path: &FieldPath) -> Option<&'a Value> {
    // Most paths are one name.
    if !path.as_str().as_bytes().contains(&b'.') {
        return record.get(path.as_str());
    }
    let mut segments = path.segments();
    let mut current = record.get(segments.next()?)?;
    for seg in segments {
        current = current.as_object()?.get(seg)?;
    }
    Some(current)
}

/// Sets `path` to `value`, creating intermediate objects (and replacing
/// non-object intermediates).
pub fn set(record: &mut Map<String, Value>, path: &FieldPath, value: Value) {
    let segs: Vec<&str> = path.segments().collect();
    let (last, parents) = segs.split_last().expect("a path has a segment");
    let mut current = record;
    for seg in parents {
        let slot = current
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        current = slot.as_object_mut().expect("just made an object");
    }
    current.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> FieldPath {
        s.parse().unwrap()
    }

    #[test]
    fn names_convert_both_ways() {
        assert_eq!(camel_case("billing_address"), "billingAddress");
        assert_eq!(camel_case("mrr"), "mrr");
        assert_eq!(camel_case("current_version"), "currentVersion");
        assert_eq!(snake_case("billingAddress"), "billing_address");
        assert_eq!(snake_case(&camel_case("first_name")), "first_name");
    }

    #[test]
    fn nested_paths_read_and_write() {
        let row = json!({"billing_address": {"line1": "1 Main"}, "mrr": "12.50"});
        let mut view = billing_view(row.as_object().unwrap());
        assert_eq!(
            get(&view, &p("billingAddress.line1")),
            Some(&json!("1 Main"))
        );
        assert_eq!(get(&view, &p("billingAddress.city")), None);
        assert_eq!(get(&view, &p("mrr.x")), None);
        set(&mut view, &p("billingAddress.city"), json!("Paris"));
        set(&mut view, &p("currentVersion.mrr"), json!(10));
        assert_eq!(
            Value::Object(view),
            json!({
                "billingAddress": {"line1": "1 Main", "city": "Paris"},
                "mrr": "12.50",
                "currentVersion": {"mrr": 10}
            })
        );
    }
}
