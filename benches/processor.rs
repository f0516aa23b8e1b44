//! Link + map + resolve with a warm state cache: the processor's per-change
//! CPU cost, without Kafka, Postgres or HTTP. Run with
//! `cargo bench --bench processor`; the last line is one JSON object with
//! the changes per second on one core.

use std::hint::black_box;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput};
use extsync::config::parse_str;
use extsync::processor::change::BillingChange;
use extsync::processor::decide::{billing_change, external_change};
use extsync::processor::mapping::Mappings;
use extsync::processor::merge::Base;
use extsync::processor::state::RecordState;
use serde_json::{Map, Value, json};

const PIPELINE: &str = r#"
name: bench
postgres: { url: "postgres://x" }
kafka: { brokers: "x" }
integrations:
  salesforce:
    provider: salesforce
    baseUrl: http://127.0.0.1:1
    entities:
      accounts:
        externalObject: Account
        table: public.accounts
        billingIdField: Alguna_Id__c
        mappings:
          - { alguna: name, external: Name }
          - { alguna: email, external: Email__c }
          - { alguna: billingAddress.line1, external: BillingStreet, direction: alguna_to_external }
          - { alguna: billingAddress.city, external: BillingCity, direction: alguna_to_external }
          - { alguna: mrr, external: MRR__c, direction: alguna_to_external, transform: number_to_currency }
          - { alguna: phone, external: Phone }
        conflictResolution:
          default: latest_wins
          perField: { name: alguna_wins }
"#;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// A linked record whose base matches both sides.
fn linked_state(i: usize) -> RecordState {
    let mut base = Base::default();
    for (k, a, e) in [
        (
            "name",
            json!(format!("Account {i}")),
            json!(format!("Account {i}")),
        ),
        (
            "email",
            json!(format!("ap{i}@x.test")),
            json!(format!("ap{i}@x.test")),
        ),
        ("billingAddress.line1", json!("1 Main"), json!("1 Main")),
        ("billingAddress.city", json!("Paris"), json!("Paris")),
        ("mrr", json!("100.00"), json!(100.0)),
        ("phone", json!("+33 1"), json!("+33 1")),
    ] {
        base.alguna.insert(k.into(), a);
        base.external.insert(k.into(), e);
    }
    RecordState {
        external_id: Some(format!("001{i:015}")),
        base,
        external_image: obj(json!({
            "Name": format!("Account {i}"), "Email__c": format!("ap{i}@x.test"), "BillingStreet": "1 Main",
            "BillingCity": "Paris", "MRR__c": 100.0, "Phone": "+33 1"
        })),
        external_version: Some("v1".into()),
        ..RecordState::default()
    }
}

fn change(i: usize) -> BillingChange {
    BillingChange {
        schema: "public".into(),
        table: "accounts".into(),
        key: obj(json!({"id": i})),
        op: "u".into(),
        after: Some(obj(json!({
            "id": i, "name": format!("Account {i}"), "email": format!("ap{i}@x.test"),
            "billing_address": {"line1": "1 Main", "city": "Paris"},
            "mrr": format!("{}.50", 100 + i % 7), "phone": "+33 1", "updated_at": "2026-01-01T00:00:00Z"
        }))),
        committed_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
        origin: None,
    }
}

fn main() {
    let pipeline = parse_str(PIPELINE, "bench.yaml").unwrap();
    let mappings = Mappings::compile(&pipeline).unwrap();
    let entity = mappings.for_external("salesforce", "accounts").unwrap();
    const N: usize = 10_000;
    // The warm cache: every record's state is in memory.
    let states: Vec<RecordState> = (0..N).map(linked_state).collect();
    let changes: Vec<BillingChange> = (0..N).map(change).collect();

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("processor");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("billing_change_linked", |b| {
        b.iter(|| {
            for (s, ch) in states.iter().zip(&changes) {
                black_box(billing_change(&mappings, entity, s, ch, &[], None));
            }
        })
    });
    let externals: Vec<_> = (0..N)
        .map(|i| extsync::ingest::ExternalChange {
            system: "salesforce".into(),
            integration: "salesforce".into(),
            entity: "accounts".into(),
            object: "Account".into(),
            external_id: format!("001{i:015}"),
            op: extsync::connectors::record::ChangeOp::Update,
            after: Some(obj(json!({"Name": format!("Renamed {i}"), "Email__c": format!("ap{i}@x.test"), "Phone": "+33 2"}))),
            changed_fields: vec![],
            version: "v2".into(),
            modified_at: Utc.timestamp_opt(1_800_000_100, 0).unwrap(),
            source: extsync::ingest::ChangeSource::Webhook,
            origin: None,
            received_at: Utc::now(),
        })
        .collect();
    let views: Vec<Map<String, Value>> = changes
        .iter()
        .map(|c| extsync::processor::record::billing_view(c.after.as_ref().unwrap()))
        .collect();
    group.bench_function("external_change_linked", |b| {
        b.iter(|| {
            for ((s, x), v) in states.iter().zip(&externals).zip(&views) {
                black_box(external_change(&mappings, entity, s, "1", x, Some(v)));
            }
        })
    });
    group.finish();

    // The summary line: a plain timed pass over both kinds, one core.
    let started = Instant::now();
    let rounds = 5;
    for _ in 0..rounds {
        for i in 0..N {
            black_box(billing_change(
                &mappings,
                entity,
                &states[i],
                &changes[i],
                &[],
                None,
            ));
            black_box(external_change(
                &mappings,
                entity,
                &states[i],
                "1",
                &externals[i],
                Some(&views[i]),
            ));
        }
    }
    let per_s = (2 * N * rounds) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bench": "processor", "changes_per_s_per_core": per_s.round(), "target": 200000})
    );
}
