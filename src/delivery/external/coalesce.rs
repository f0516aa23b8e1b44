//! Before the waves: successive writes of one record that do the same thing
//! — updates of one external record, or creates of one billing record —
//! fold into the first of them, carrying the latest value of every field.
//! A record changed ten times while extsync was busy costs one call, not
//! ten, of an API budget that is often a request a second; the values in
//! between were already superseded in the billing database.
//!
//! ```text
//!  ExternalWrite* ─► coalesce (one write per run of like writes of a record) ─► waves ─► groups
//! ```
//!
//! Every folded write takes the outcome of the write that carried it.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::delivery::intent::{ExternalWrite, ExternalWriteOp};

/// The writes to send and, for each input write, the position of the sent
/// write that carries it; `None` when no two writes fold.
pub(super) fn coalesce(writes: &[ExternalWrite]) -> Option<(Vec<ExternalWrite>, Vec<usize>)> {
    let mut sent: Vec<ExternalWrite> = Vec::with_capacity(writes.len());
    let mut carrier = Vec::with_capacity(writes.len());
    // The last sent write of each record, by (object, billing id).
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    let mut folded = false;
    for w in writes {
        let record = (w.object.as_str(), w.billing_id.as_str());
        match last.get(&record) {
            Some(&k) if folds_into(&sent[k], w) => {
                let into = &mut sent[k];
                merge_fields(&mut into.fields, &w.fields);
                into.idempotency_key.clone_from(&w.idempotency_key);
                carrier.push(k);
                folded = true;
            }
            _ => {
                last.insert(record, sent.len());
                carrier.push(sent.len());
                sent.push(w.clone());
            }
        }
    }
    folded.then_some((sent, carrier))
}

/// Whether `next` can ride on `earlier`, the last write of its record:
/// both update the same external record, or both create it the same way.
fn folds_into(earlier: &ExternalWrite, next: &ExternalWrite) -> bool {
    match (&earlier.op, &next.op) {
        (
            ExternalWriteOp::Update { external_id: a },
            ExternalWriteOp::Update { external_id: b },
        ) => a == b,
        (ExternalWriteOp::Create, ExternalWriteOp::Create) => {
            earlier.billing_id_field == next.billing_id_field
        }
        _ => false,
    }
}

/// Sets `later`'s fields over `into`'s; nested objects merge field by field.
fn merge_fields(into: &mut Map<String, Value>, later: &Map<String, Value>) {
    for (k, v) in later {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_fields(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(billing_id: &str, op: ExternalWriteOp, fields: Value, key: &str) -> ExternalWrite {
        ExternalWrite {
            integration: "sf".into(),
            entity: "accounts".into(),
            object: "Account".into(),
            billing_id: billing_id.into(),
            op,
            fields: fields.as_object().unwrap().clone(),
            billing_id_field: Some("Alguna_Id__c".into()),
            idempotency_key: key.into(),
        }
    }

    fn update(id: &str) -> ExternalWriteOp {
        ExternalWriteOp::Update {
            external_id: id.into(),
        }
    }

    #[test]
    fn updates_of_one_record_fold_into_the_first_with_the_latest_values() {
        let writes = vec![
            write("1", update("001A"), json!({"Name": "A", "MRR__c": 1}), "k1"),
            write("2", update("001B"), json!({"Name": "B"}), "k2"),
            write("1", update("001A"), json!({"MRR__c": 2}), "k3"),
            write(
                "1",
                update("001A"),
                json!({"BillingAddress": {"city": "Oslo"}}),
                "k4",
            ),
            write(
                "1",
                update("001A"),
                json!({"BillingAddress": {"street": "Main"}}),
                "k5",
            ),
        ];
        let (sent, carrier) = coalesce(&writes).expect("folds");
        assert_eq!(carrier, vec![0, 1, 0, 0, 0]);
        assert_eq!(sent.len(), 2);
        assert_eq!(
            Value::Object(sent[0].fields.clone()),
            json!({"Name": "A", "MRR__c": 2, "BillingAddress": {"city": "Oslo", "street": "Main"}})
        );
        assert_eq!(sent[0].idempotency_key, "k5", "the latest change's key");
        assert_eq!(sent[1], writes[1]);
    }

    #[test]
    fn unlike_writes_of_a_record_stay_in_order() {
        let writes = vec![
            write("1", ExternalWriteOp::Create, json!({"Name": "A"}), "k1"),
            write("1", update("001A"), json!({"Name": "B"}), "k2"),
            write(
                "1",
                ExternalWriteOp::Delete {
                    external_id: "001A".into(),
                },
                json!({}),
                "k3",
            ),
            write("1", update("001A"), json!({"Name": "C"}), "k4"),
            write("1", update("001Z"), json!({"Name": "D"}), "k5"),
        ];
        assert!(coalesce(&writes).is_none(), "nothing folds");
    }

    #[test]
    fn creates_of_one_record_fold_and_a_later_run_starts_anew() {
        let writes = vec![
            write("1", ExternalWriteOp::Create, json!({"Name": "A"}), "k1"),
            write(
                "1",
                ExternalWriteOp::Create,
                json!({"Email__c": "a@x"}),
                "k2",
            ),
            write("1", update("001A"), json!({"Name": "B"}), "k3"),
            write("1", update("001A"), json!({"Name": "C"}), "k4"),
        ];
        let (sent, carrier) = coalesce(&writes).expect("folds");
        assert_eq!(carrier, vec![0, 0, 1, 1]);
        assert_eq!(
            Value::Object(sent[0].fields.clone()),
            json!({"Name": "A", "Email__c": "a@x"})
        );
        assert_eq!(Value::Object(sent[1].fields.clone()), json!({"Name": "C"}));
    }
}
