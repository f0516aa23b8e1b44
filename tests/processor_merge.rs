//! Three-way merge and conflict strategies, per field, on compiled mappings.

use chrono::{TimeZone, Utc};
use extsync::config::{Strategy, parse_str};
use extsync::processor::bookkeeping::parked_changes;
use extsync::processor::mapping::Mappings;
use extsync::processor::merge::{Base, Parked, Side, Winner, merge};
use extsync::processor::state::RecordKey;
use serde_json::{Map, Value, json};

const PIPELINE: &str = r#"
name: merge
postgres: { url: "postgres://x" }
kafka: { brokers: "x" }
integrations:
  sf:
    provider: salesforce
    baseUrl: http://127.0.0.1:1
    entities:
      accounts:
        externalObject: Account
        table: public.accounts
        mappings:
          - { alguna: name, external: Name }
          - { alguna: email, external: Email__c }
          - { alguna: billingAddress.line1, external: BillingStreet, direction: alguna_to_external }
          - { alguna: mrr, external: MRR__c, direction: alguna_to_external, transform: number_to_currency }
          - { alguna: phone, external: Phone, direction: external_to_alguna }
          - { alguna: notes, external: Description }
        conflictResolution:
          default: latest_wins
          perField: { name: alguna_wins, email: manual, notes: external_wins }
"#;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn base() -> Base {
    let mut b = Base::default();
    for (k, a, e) in [
        ("name", json!("Acme"), json!("Acme")),
        ("email", json!("a@acme.test"), json!("a@acme.test")),
        ("billingAddress.line1", json!("1 Main"), json!("1 Main")),
        ("mrr", json!("100.00"), json!(100.0)),
        ("phone", json!("1"), json!("1")),
        ("notes", json!("n"), json!("n")),
    ] {
        b.alguna.insert(k.into(), a);
        b.external.insert(k.into(), e);
    }
    b
}

fn alguna(over: Value) -> Map<String, Value> {
    let mut m = obj(
        json!({"name": "Acme", "email": "a@acme.test", "billingAddress": {"line1": "1 Main"}, "mrr": "100.00", "phone": "1", "notes": "n"}),
    );
    for (k, v) in obj(over) {
        m.insert(k, v);
    }
    m
}

fn external(over: Value) -> Map<String, Value> {
    let mut m = obj(
        json!({"Name": "Acme", "Email__c": "a@acme.test", "BillingStreet": "1 Main", "MRR__c": 100.0, "Phone": "1", "Description": "n"}),
    );
    for (k, v) in obj(over) {
        m.insert(k, v);
    }
    m
}

fn run(a: Value, e: Value, a_at: i64, e_at: i64) -> extsync::processor::merge::Merge {
    let pipeline = parse_str(PIPELINE, "merge.yaml").unwrap();
    let mappings = Mappings::compile(&pipeline).unwrap();
    let entity = mappings.for_external("sf", "accounts").unwrap();
    let (a, e) = (alguna(a), external(e));
    merge(
        &mappings,
        entity,
        base(),
        Side {
            fields: &a,
            changed_at: Utc.timestamp_opt(a_at, 0).unwrap(),
        },
        Side {
            fields: &e,
            changed_at: Utc.timestamp_opt(e_at, 0).unwrap(),
        },
    )
    .unwrap()
}

#[test]
fn unchanged_records_write_nothing() {
    let m = run(json!({}), json!({}), 0, 0);
    assert!(m.to_external.is_empty() && m.to_alguna.is_empty() && m.resolutions.is_empty());
    assert_eq!(m.base, base());
}

#[test]
fn one_sided_changes_flow_to_the_other_side_with_transforms() {
    let m = run(
        json!({"mrr": "1250.5", "billingAddress": {"line1": "2 Oak"}}),
        json!({"Phone": "2"}),
        10,
        20,
    );
    assert_eq!(
        Value::Object(m.to_external.clone()),
        json!({"MRR__c": 1250.5, "BillingStreet": "2 Oak"})
    );
    assert_eq!(Value::Object(m.to_alguna.clone()), json!({"phone": "2"}));
    assert!(m.resolutions.is_empty());
    assert_eq!(m.base.external["mrr"], json!(1250.5));
    assert_eq!(m.base.alguna["phone"], json!("2"));
}

#[test]
fn one_way_fields_ignore_the_other_side() {
    // External edits to an alguna_to_external field are not synced back, and
    // billing edits to an external_to_alguna field are not pushed.
    let m = run(
        json!({"phone": "9"}),
        json!({"BillingStreet": "elsewhere", "MRR__c": 1.0}),
        10,
        20,
    );
    assert!(m.to_external.is_empty(), "{:?}", m.to_external);
    assert!(m.to_alguna.is_empty(), "{:?}", m.to_alguna);
    assert!(m.resolutions.is_empty());
}

#[test]
fn per_field_alguna_wins_overrides_latest_wins() {
    let m = run(
        json!({"name": "Acme Billing"}),
        json!({"Name": "Acme CRM"}),
        10,
        20,
    );
    assert_eq!(m.to_external.get("Name"), Some(&json!("Acme Billing")));
    assert!(!m.to_alguna.contains_key("name"));
    let r = &m.resolutions[0];
    assert_eq!(
        (r.field.as_str(), r.strategy, r.winner),
        ("name", Strategy::AlgunaWins, Winner::Alguna)
    );
    assert_eq!(
        (r.alguna_value.clone(), r.external_value.clone()),
        (json!("Acme Billing"), json!("Acme CRM"))
    );
    assert_eq!(r.base_alguna, Some(json!("Acme")));
}

#[test]
fn per_field_external_wins() {
    let m = run(
        json!({"notes": "billing"}),
        json!({"Description": "crm"}),
        30,
        20,
    );
    assert_eq!(m.to_alguna.get("notes"), Some(&json!("crm")));
    assert_eq!(m.resolutions[0].winner, Winner::External);
}

#[test]
fn latest_wins_compares_commit_and_modification_times() {
    // `phone` made bidirectional and `notes` left to the default strategy.
    let yaml = PIPELINE.replace("notes: external_wins", "phone: latest_wins");
    let yaml = yaml.replace(
        "{ alguna: phone, external: Phone, direction: external_to_alguna }",
        "{ alguna: phone, external: Phone }",
    );
    let pipeline = parse_str(&yaml, "m.yaml").unwrap();
    let mappings = Mappings::compile(&pipeline).unwrap();
    let entity = mappings.for_external("sf", "accounts").unwrap();
    let a = alguna(json!({"phone": "from-billing", "notes": "nb"}));
    let e = external(json!({"Phone": "from-crm", "Description": "ne"}));
    let at = |s| Utc.timestamp_opt(s, 0).unwrap();
    let newer_external = merge(
        &mappings,
        entity,
        base(),
        Side {
            fields: &a,
            changed_at: at(10),
        },
        Side {
            fields: &e,
            changed_at: at(20),
        },
    )
    .unwrap();
    assert_eq!(
        newer_external.to_alguna.get("phone"),
        Some(&json!("from-crm"))
    );
    assert_eq!(newer_external.to_alguna.get("notes"), Some(&json!("ne")));
    let newer_billing = merge(
        &mappings,
        entity,
        base(),
        Side {
            fields: &a,
            changed_at: at(30),
        },
        Side {
            fields: &e,
            changed_at: at(20),
        },
    )
    .unwrap();
    assert_eq!(
        newer_billing.to_external.get("Phone"),
        Some(&json!("from-billing"))
    );
    assert_eq!(newer_billing.resolutions.len(), 2);
    assert!(
        newer_billing
            .resolutions
            .iter()
            .all(|r| r.strategy == Strategy::LatestWins)
    );
}

#[test]
fn manual_conflicts_park_the_field_and_sync_the_rest() {
    let m = run(
        json!({"email": "billing@acme.test", "mrr": "200"}),
        json!({"Email__c": "crm@acme.test", "Phone": "5"}),
        10,
        20,
    );
    let parked: Vec<_> = m.manual().collect();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].field, "email");
    assert_eq!(parked[0].base_external, Some(json!("a@acme.test")));
    assert!(!m.to_external.contains_key("Email__c") && !m.to_alguna.contains_key("email"));
    // Parked fields keep their base, so the conflict stays visible.
    assert_eq!(m.base.alguna["email"], json!("a@acme.test"));
    // Non-conflicting fields still sync.
    assert_eq!(m.to_external.get("MRR__c"), Some(&json!(200.0)));
    assert_eq!(m.to_alguna.get("phone"), Some(&json!("5")));
}

#[test]
fn both_sides_making_the_same_change_is_not_a_conflict() {
    let m = run(
        json!({"name": "Same", "mrr": "300.00"}),
        json!({"Name": "Same"}),
        10,
        20,
    );
    assert!(m.resolutions.is_empty());
    assert!(!m.to_external.contains_key("Name"));
    assert_eq!(m.base.alguna["name"], json!("Same"));
    assert_eq!(m.base.external["name"], json!("Same"));
}

/// A merge of `a` and `e` against `base`; billing changed at 10, the external side at 20.
fn run_with(base: Base, a: Value, e: Value) -> extsync::processor::merge::Merge {
    let pipeline = parse_str(PIPELINE, "merge.yaml").unwrap();
    let mappings = Mappings::compile(&pipeline).unwrap();
    let entity = mappings.for_external("sf", "accounts").unwrap();
    let (a, e) = (alguna(a), external(e));
    merge(
        &mappings,
        entity,
        base,
        Side {
            fields: &a,
            changed_at: Utc.timestamp_opt(10, 0).unwrap(),
        },
        Side {
            fields: &e,
            changed_at: Utc.timestamp_opt(20, 0).unwrap(),
        },
    )
    .unwrap()
}

#[test]
fn a_parked_conflict_is_recorded_once_while_its_values_stay() {
    let first = run(
        json!({"email": "billing@acme.test"}),
        json!({"Email__c": "crm@acme.test"}),
        10,
        20,
    );
    assert_eq!(first.resolutions.len(), 1);
    assert_eq!(
        first.base.parked.get("email"),
        Some(&Parked {
            alguna: json!("billing@acme.test"),
            external: json!("crm@acme.test"),
        })
    );
    assert_eq!(
        first.resolutions[0]
            .alguna_changed_at
            .map(|t| t.timestamp()),
        Some(10)
    );
    assert_eq!(first.resolutions[0].external_field, "Email__c");

    // A later change to another field: the parked conflict is not repeated.
    let later = run_with(
        first.base.clone(),
        json!({"email": "billing@acme.test", "notes": "more"}),
        json!({"Email__c": "crm@acme.test"}),
    );
    assert!(later.resolutions.is_empty(), "{:?}", later.resolutions);
    assert_eq!(later.to_external.get("Description"), Some(&json!("more")));
    assert!(!later.to_external.contains_key("Email__c") && !later.to_alguna.contains_key("email"));
    assert_eq!(later.base.parked, first.base.parked);

    // A new value on one side is a new conflict, against the same base.
    let changed = run_with(
        first.base.clone(),
        json!({"email": "billing2@acme.test"}),
        json!({"Email__c": "crm@acme.test"}),
    );
    assert_eq!(changed.resolutions.len(), 1);
    assert_eq!(
        changed.resolutions[0].base_alguna,
        Some(json!("a@acme.test"))
    );
    assert_eq!(
        changed.base.parked["email"].alguna,
        json!("billing2@acme.test")
    );
}

#[test]
fn a_parked_conflict_settles_when_both_sides_agree() {
    let first = run(
        json!({"email": "billing@acme.test"}),
        json!({"Email__c": "crm@acme.test"}),
        10,
        20,
    );
    let agreed = run_with(
        first.base.clone(),
        json!({"email": "billing@acme.test"}),
        json!({"Email__c": "billing@acme.test"}),
    );
    assert!(agreed.resolutions.is_empty());
    assert!(agreed.base.parked.is_empty());
    assert_eq!(agreed.base.alguna["email"], json!("billing@acme.test"));
    let key = RecordKey {
        integration: "sf".into(),
        entity: "accounts".into(),
        billing_id: "1".into(),
    };
    assert_eq!(
        parked_changes(&key, &first.base.parked, &agreed.base.parked),
        vec![(key.clone(), "email".to_string(), None)]
    );
    assert!(parked_changes(&key, &first.base.parked, &first.base.parked).is_empty());
}

#[test]
fn a_base_without_parked_conflicts_reads_as_before() {
    let stored = json!({"alguna": {"name": "Acme"}, "external": {"name": "Acme"}});
    let base: Base = serde_json::from_value(stored.clone()).unwrap();
    assert!(base.parked.is_empty());
    assert_eq!(serde_json::to_value(&base).unwrap(), stored);
}
