//! Writing: single calls (`POST`, `PATCH`, `DELETE` on `/crm/v3/objects/{type}`)
//! and the batch forms (`…/batch/{create|update|upsert|archive}`, ≤ 100).
//!
//! A `write_batch` call is cut into runs of one operation kind, in input
//! order, each at most 100 inputs and never naming a record twice (HubSpot
//! refuses duplicate ids). Every input carries its position as
//! `objectWriteTraceId`, which HubSpot echoes in results and in the
//! `context` of 207 errors, so each outcome finds its input.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::errors::{classify_item, duplicate};
use super::read::encode_segment;
use super::{HubSpotConnector, MAX_BATCH};
use crate::connectors::error::{ConnectorError, ErrorClass};
use crate::connectors::record::{WriteOp, WriteOutcome};

/// Property values as HubSpot takes them: `null` clears a property (`""`).
fn properties(fields: &Map<String, Value>) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|(k, v)| {
                let v = if v.is_null() {
                    Value::String(String::new())
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

fn outcome(v: &Value, created: bool) -> Result<WriteOutcome, ConnectorError> {
    let id = v["id"].as_str().ok_or_else(|| {
        ConnectorError::new(
            ErrorClass::Transient,
            "HubSpot answered a write without an id",
        )
    })?;
    Ok(WriteOutcome {
        id: id.to_string(),
        created,
        version: v["updatedAt"].as_str().map(String::from),
    })
}

pub async fn write(
    c: &HubSpotConnector,
    object: &str,
    op: WriteOp,
) -> Result<WriteOutcome, ConnectorError> {
    c.properties_of(object)?;
    let base = format!("/crm/v3/objects/{object}");
    match op {
        WriteOp::Create { fields } => {
            let body = json!({ "properties": properties(&fields) });
            let a = c.call(Method::POST, &base, &[], Some(&body)).await?;
            outcome(&a.json("create answer")?, true)
        }
        WriteOp::Update { id, fields } => {
            let body = json!({ "properties": properties(&fields) });
            let path = format!("{base}/{}", encode_segment(&id));
            let a = c.call(Method::PATCH, &path, &[], Some(&body)).await?;
            outcome(&a.json("update answer")?, false)
        }
        WriteOp::Delete { id } => {
            let path = format!("{base}/{}", encode_segment(&id));
            c.call(Method::DELETE, &path, &[], None).await?;
            Ok(WriteOutcome {
                id,
                created: false,
                version: None,
            })
        }
        op @ WriteOp::Upsert { .. } => {
            let mut results = write_batch(c, object, vec![op]).await?;
            results.pop().unwrap_or_else(|| Err(no_result()))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Update,
    Upsert,
    Archive,
}

fn kind_of(op: &WriteOp) -> (Kind, Option<String>) {
    match op {
        WriteOp::Create { .. } => (Kind::Create, None),
        WriteOp::Update { id, .. } => (Kind::Update, Some(id.clone())),
        WriteOp::Upsert {
            id_field, id_value, ..
        } => (
            Kind::Upsert,
            Some(format!("{id_field}\u{0}{}", id_value.to_lowercase())),
        ),
        WriteOp::Delete { id } => (Kind::Archive, Some(id.clone())),
    }
}

/// Cuts `ops` into batch calls: one kind each, ≤ 100, no record twice.
fn plan(ops: &[WriteOp]) -> Vec<(Kind, Vec<usize>)> {
    let mut runs: Vec<(Kind, Vec<usize>)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        let (kind, key) = kind_of(op);
        let fits = runs.last().is_some_and(|(k, idx)| {
            *k == kind && idx.len() < MAX_BATCH && key.as_ref().is_none_or(|k| !seen.contains(k))
        });
        if !fits {
            runs.push((kind, Vec::new()));
            seen.clear();
        }
        if let Some(k) = key {
            seen.insert(k);
        }
        runs.last_mut().expect("a run").1.push(i);
    }
    runs
}

fn no_result() -> ConnectorError {
    ConnectorError::new(
        ErrorClass::Transient,
        "HubSpot returned no result for this input",
    )
}

pub async fn write_batch(
    c: &HubSpotConnector,
    object: &str,
    ops: Vec<WriteOp>,
) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError> {
    c.properties_of(object)?;
    let mut results: Vec<Option<Result<WriteOutcome, ConnectorError>>> =
        (0..ops.len()).map(|_| None).collect();
    let mut stopped: Option<ConnectorError> = None;
    for (n, (kind, idx)) in plan(&ops).into_iter().enumerate() {
        if let Some(e) = &stopped {
            for k in idx {
                results[k] = Some(Err(duplicate(e)));
            }
            continue;
        }
        match run(c, object, kind, &ops, &idx).await {
            Ok(per_input) => {
                for (k, r) in per_input {
                    results[k] = Some(r);
                }
            }
            Err(e) if n == 0 && e.retryable() => return Err(e),
            Err(e) => {
                for &k in &idx {
                    results[k] = Some(Err(duplicate(&e)));
                }
                if e.retryable() {
                    stopped = Some(e);
                }
            }
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(no_result())))
        .collect())
}

type PerInput = Vec<(usize, Result<WriteOutcome, ConnectorError>)>;

async fn run(
    c: &HubSpotConnector,
    object: &str,
    kind: Kind,
    ops: &[WriteOp],
    idx: &[usize],
) -> Result<PerInput, ConnectorError> {
    let inputs: Vec<Value> = idx
        .iter()
        .map(|&k| {
            let trace = k.to_string();
            match &ops[k] {
                WriteOp::Create { fields } => {
                    json!({"properties": properties(fields), "objectWriteTraceId": trace})
                }
                WriteOp::Update { id, fields } => {
                    json!({"id": id, "properties": properties(fields), "objectWriteTraceId": trace})
                }
                WriteOp::Upsert {
                    id_field,
                    id_value,
                    fields,
                } => json!({
                    "id": id_value,
                    "idProperty": id_field,
                    "properties": properties(fields),
                    "objectWriteTraceId": trace,
                }),
                WriteOp::Delete { id } => json!({"id": id}),
            }
        })
        .collect();
    let action = match kind {
        Kind::Create => "create",
        Kind::Update => "update",
        Kind::Upsert => "upsert",
        Kind::Archive => "archive",
    };
    let answer = c
        .call(
            Method::POST,
            &format!("/crm/v3/objects/{object}/batch/{action}"),
            &[],
            Some(&json!({ "inputs": inputs })),
        )
        .await?;
    if kind == Kind::Archive {
        return Ok(idx
            .iter()
            .map(|&k| {
                let WriteOp::Delete { id } = &ops[k] else {
                    unreachable!("archive runs hold deletes")
                };
                (
                    k,
                    Ok(WriteOutcome {
                        id: id.clone(),
                        created: false,
                        version: None,
                    }),
                )
            })
            .collect());
    }
    let v = answer.json("batch answer")?;
    Ok(match_results(kind, ops, idx, &v))
}

/// The input a result or error names: its trace id, else its record id or upsert value.
fn owner(
    kind: Kind,
    ops: &[WriteOp],
    idx: &[usize],
    trace: Option<&str>,
    id: Option<&str>,
) -> Option<usize> {
    if let Some(k) = trace.and_then(|t| t.parse::<usize>().ok())
        && idx.contains(&k)
    {
        return Some(k);
    }
    let id = id?;
    idx.iter().copied().find(|&k| match (&ops[k], kind) {
        (WriteOp::Update { id: want, .. }, Kind::Update) => want == id,
        (WriteOp::Upsert { id_value, .. }, Kind::Upsert) => id_value.eq_ignore_ascii_case(id),
        _ => false,
    })
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn match_results(kind: Kind, ops: &[WriteOp], idx: &[usize], v: &Value) -> PerInput {
    let mut out: HashMap<usize, Result<WriteOutcome, ConnectorError>> = HashMap::new();
    let mut unowned = Vec::new();
    for r in v["results"].as_array().into_iter().flatten() {
        let upsert_value = match kind {
            Kind::Upsert => idx.iter().find_map(|&k| match &ops[k] {
                WriteOp::Upsert {
                    id_field, id_value, ..
                } if r["properties"][id_field]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(id_value)) =>
                {
                    Some(id_value.as_str())
                }
                _ => None,
            }),
            _ => r["id"].as_str(),
        };
        let created = kind == Kind::Create || r["new"].as_bool() == Some(true);
        match owner(
            kind,
            ops,
            idx,
            r["objectWriteTraceId"].as_str(),
            upsert_value,
        ) {
            Some(k) => {
                out.insert(k, outcome(r, created));
            }
            None => unowned.push((r, created)),
        }
    }
    for e in v["errors"].as_array().into_iter().flatten() {
        let ctx = &e["context"];
        let mut owners: Vec<usize> = strings(&ctx["objectWriteTraceId"])
            .into_iter()
            .filter_map(|t| owner(kind, ops, idx, Some(t), None))
            .collect();
        if owners.is_empty() {
            owners = strings(&ctx["ids"])
                .into_iter()
                .filter_map(|id| owner(kind, ops, idx, None, Some(id)))
                .collect();
        }
        if owners.is_empty() && idx.len() == 1 {
            owners.push(idx[0]);
        }
        for k in owners {
            out.insert(k, Err(classify_item(e)));
        }
    }
    let mut unowned = unowned.into_iter();
    idx.iter()
        .map(|&k| {
            let r = out.remove(&k).unwrap_or_else(|| match unowned.next() {
                Some((r, created)) if kind == Kind::Create => outcome(r, created),
                _ => Err(no_result()),
            });
            (k, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: &str) -> WriteOp {
        WriteOp::Update {
            id: id.into(),
            fields: Map::new(),
        }
    }

    #[test]
    fn plan_splits_kinds_sizes_and_repeated_ids() {
        let mut ops: Vec<WriteOp> = (0..150)
            .map(|_| WriteOp::Create { fields: Map::new() })
            .collect();
        ops.push(update("1"));
        ops.push(update("2"));
        ops.push(update("1"));
        ops.push(WriteOp::Delete { id: "1".into() });
        let runs = plan(&ops);
        let shape: Vec<(Kind, usize)> = runs.iter().map(|(k, i)| (*k, i.len())).collect();
        assert_eq!(
            shape,
            vec![
                (Kind::Create, 100),
                (Kind::Create, 50),
                (Kind::Update, 2),
                (Kind::Update, 1),
                (Kind::Archive, 1)
            ]
        );
    }
}
