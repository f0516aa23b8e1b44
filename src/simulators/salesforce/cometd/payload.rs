//! Change event payloads: what a store write puts in the event the change
//! log keeps and `/meta/connect` delivers — the `ChangeEventHeader` and the
//! record's field values.

use serde_json::{Map, Value, json};

use super::super::schema::ObjectSchema;

fn put_compound(payload: &mut Map<String, Value>, compound: &str, part: &str, v: Value) {
    let entry = payload
        .entry(compound.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = entry {
        m.insert(part.to_string(), v);
    }
}

/// The `payload` of a change event: the header plus field values —
/// all non-null fields for CREATE, the changed ones for UPDATE, none for
/// DELETE. Address and name parts are grouped in their compound field.
pub fn event_payload(
    schema: &ObjectSchema,
    change_type: &str,
    mut header: Value,
    rec: &Map<String, Value>,
    before: Option<&Map<String, Value>>,
) -> Value {
    let mut payload = Map::new();
    let mut changed = Vec::new();
    let mut nulled = Vec::new();
    let skip = ["Id", "IsDeleted", "SystemModstamp"];
    if change_type != "DELETE" {
        for f in &schema.fields {
            if skip.contains(&f.name.as_str()) {
                continue;
            }
            let v = rec.get(&f.name).cloned().unwrap_or(Value::Null);
            let include = match before {
                None => !v.is_null(),
                Some(old) => {
                    let was = old.get(&f.name).cloned().unwrap_or(Value::Null);
                    let differs = was != v;
                    let always = f.name == "LastModifiedDate";
                    if differs || always {
                        let name = match f.compound {
                            Some((c, p)) => format!("{c}.{p}"),
                            None => f.name.clone(),
                        };
                        if v.is_null() {
                            nulled.push(name.clone());
                        }
                        changed.push(name);
                    }
                    differs || always
                }
            };
            if !include {
                continue;
            }
            match f.compound {
                Some((c, p)) => put_compound(&mut payload, c, p, v),
                None => {
                    payload.insert(f.name.clone(), v);
                }
            }
        }
    }
    header["changedFields"] = json!(changed);
    header["nulledFields"] = json!(nulled);
    header["diffFields"] = json!([]);
    payload.insert("ChangeEventHeader".into(), header);
    Value::Object(payload)
}
