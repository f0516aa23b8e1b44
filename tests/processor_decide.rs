//! Planning per change: linking, creates, echo suppression, deletes,
//! parent-before-child and failing transforms.

use chrono::{TimeZone, Utc};
use extsync::config::parse_str;
use extsync::connectors::record::ChangeOp;
use extsync::delivery::ExternalWriteOp;
use extsync::ingest::{ChangeSource, ExternalChange};
use extsync::processor::change::BillingChange;
use extsync::processor::change::RETRY_ORIGIN;
use extsync::processor::decide::{Plan, billing_change, external_change};
use extsync::processor::events::SkipReason;
use extsync::processor::mapping::Mappings;
use extsync::processor::state::RecordState;
use serde_json::{Map, Value, json};

const PIPELINE: &str = r#"
name: decide
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
        externalIdField: external_id
        billingIdField: Alguna_Id__c
        mappings:
          - { alguna: name, external: Name }
          - { alguna: email, external: Email__c }
          - { alguna: mrr, external: MRR__c, direction: alguna_to_external, transform: number_to_currency }
          - { alguna: code, external: Code__c, transform: custom, function: "if (value === 'bad') throw new Error('code rejected'); return value;" }
        matching: { fields: [email], mode: exact, createIfNotFound: true }
      subscriptions:
        externalObject: Opportunity
        table: public.subscriptions
        parent: { entity: accounts, alguna: account_id, external: AccountId }
        mappings:
          - { alguna: product, external: Product__c, direction: alguna_to_external }
"#;

fn mappings() -> Mappings {
    Mappings::compile(&parse_str(PIPELINE, "d.yaml").unwrap()).unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn billing(table: &str, op: &str, row: Value, at: i64) -> BillingChange {
    BillingChange {
        schema: "public".into(),
        table: table.into(),
        key: obj(json!({"id": row["id"].clone()})),
        op: op.into(),
        after: (op != "d").then(|| obj(row)),
        committed_at: Utc.timestamp_opt(at, 0).unwrap(),
        origin: None,
    }
}

fn external(id: &str, version: &str, fields: Value, at: i64) -> ExternalChange {
    ExternalChange {
        system: "salesforce".into(),
        integration: "sf".into(),
        entity: "accounts".into(),
        object: "Account".into(),
        external_id: id.into(),
        op: ChangeOp::Update,
        after: Some(obj(fields)),
        changed_fields: vec![],
        version: version.into(),
        modified_at: Utc.timestamp_opt(at, 0).unwrap(),
        source: ChangeSource::Webhook,
        origin: None,
        received_at: Utc::now(),
    }
}

#[test]
fn new_billing_record_is_created_by_upsert_key_with_transforms() {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let row = json!({"id": 7, "name": "Acme", "email": "a@x.test", "mrr": "10.5", "code": "A1", "external_id": null});
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("accounts", "c", row, 1),
        &[],
        None,
    );
    let Plan::Write {
        external: Some(w),
        billing: None,
        ..
    } = d.plan
    else {
        panic!("{:?}", d.plan)
    };
    assert_eq!(w.op, ExternalWriteOp::Create);
    assert_eq!(
        Value::Object(w.fields),
        json!({"Name": "Acme", "Email__c": "a@x.test", "MRR__c": 10.5, "Code__c": "A1", "Alguna_Id__c": "7"})
    );
    assert_eq!(w.billing_id_field.as_deref(), Some("Alguna_Id__c"));
    assert_eq!(d.state.base.alguna["name"], json!("Acme"));
    assert!(d.state.written_hash.is_some());
}

#[test]
fn external_id_on_the_row_links_without_creating() {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let row = json!({"id": 7, "name": "Acme", "email": "a@x.test", "mrr": "10", "code": "A", "external_id": "salesforce:001ABC"});
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("accounts", "u", row, 1),
        &[],
        None,
    );
    assert_eq!(d.state.external_id.as_deref(), Some("001ABC"));
    let Plan::Write {
        external: Some(w), ..
    } = d.plan
    else {
        panic!("{:?}", d.plan)
    };
    assert_eq!(
        w.op,
        ExternalWriteOp::Update {
            external_id: "001ABC".into()
        }
    );
}

#[test]
fn match_rules_link_to_an_existing_external_record() {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let row = json!({"id": 7, "name": "Acme", "email": "A@X.test ", "mrr": "10", "code": "A"});
    let candidates = vec![
        (
            "001A".to_string(),
            obj(json!({"Name": "Other", "Email__c": "b@x.test"})),
        ),
        (
            "001B".to_string(),
            obj(json!({"Name": "Acme", "Email__c": "a@x.test", "MRR__c": 10.0, "Code__c": "A"})),
        ),
    ];
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("accounts", "c", row, 1),
        &candidates,
        None,
    );
    assert_eq!(d.state.external_id.as_deref(), Some("001B"));
    let dup = vec![
        ("001A".to_string(), obj(json!({"Email__c": "a@x.test"}))),
        ("001B".to_string(), obj(json!({"Email__c": "a@x.test"}))),
    ];
    let row = json!({"id": 8, "name": "Acme", "email": "a@x.test"});
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("accounts", "c", row, 1),
        &dup,
        None,
    );
    assert!(
        matches!(d.plan, Plan::Review(ref c) if c.len() == 2),
        "{:?}",
        d.plan
    );
    assert_eq!(d.state.external_id, None);
}

fn linked() -> RecordState {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let row = json!({"id": 7, "name": "Acme", "email": "a@x.test", "mrr": "10", "code": "A", "external_id": "001ABC"});
    let mut s = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("accounts", "c", row, 1),
        &[],
        None,
    )
    .state;
    // The external side now holds exactly what was written.
    s.base = extsync::processor::merge::Base::default();
    for (k, a, x) in [
        ("name", json!("Acme"), json!("Acme")),
        ("email", json!("a@x.test"), json!("a@x.test")),
        ("mrr", json!("10"), json!(10.0)),
        ("code", json!("A"), json!("A")),
    ] {
        s.base.alguna.insert(k.into(), a);
        s.base.external.insert(k.into(), x);
    }
    s
}

#[test]
fn echoes_of_own_writes_are_dropped_by_content_hash_and_origin() {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let mut state = linked();
    state.external_image =
        obj(json!({"Name": "Acme", "Email__c": "a@x.test", "MRR__c": 10.0, "Code__c": "A"}));
    state.written_hash = Some(extsync::processor::decide::external_hash(
        e,
        &state.external_image,
    ));
    let view = obj(json!({"name": "Acme", "email": "a@x.test", "mrr": "10", "code": "A"}));
    let echo = external(
        "001ABC",
        "v2",
        json!({"Name": "Acme", "Email__c": "a@x.test", "MRR__c": 10.0, "Code__c": "A", "LastModifiedDate": "x"}),
        5,
    );
    let d = external_change(&m, e, &state, "7", &echo, Some(&view));
    assert_eq!(d.plan, Plan::Nothing(SkipReason::Echo));
    assert_eq!(d.state.external_version.as_deref(), Some("v2"));

    let mut by_origin = external(
        "001ABC",
        "v3",
        json!({"Name": "Acme", "Email__c": "a@x.test", "MRR__c": 10.0, "Code__c": "A"}),
        6,
    );
    by_origin.origin = Some("com/salesforce/api/rest/60.0;client=extsync".into());
    assert_eq!(
        external_change(&m, e, &state, "7", &by_origin, Some(&view)).plan,
        Plan::Nothing(SkipReason::Echo)
    );

    // The same version twice is not processed twice.
    let d2 = external_change(&m, e, &d.state, "7", &echo, Some(&view));
    assert_eq!(d2.plan, Plan::Nothing(SkipReason::VersionSeen));
}

#[test]
fn an_echo_carrying_someone_elses_edit_is_not_dropped() {
    // extsync wrote Name; just before its write landed, a person changed
    // Email__c. The version extsync's write returned, and the image read
    // for the echo (tagged with extsync's origin), both include that edit.
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let mut state = linked();
    state.external_image =
        obj(json!({"Name": "Acme Two", "Email__c": "a@x.test", "MRR__c": 10.0, "Code__c": "A"}));
    state.written_hash = Some(extsync::processor::decide::external_hash(
        e,
        &state.external_image,
    ));
    state.external_version = Some("v5".into());
    let view = obj(json!({"name": "Acme Two", "email": "a@x.test", "mrr": "10", "code": "A"}));
    let mut echo = external(
        "001ABC",
        "v5",
        json!({"Name": "Acme Two", "Email__c": "person@x.test", "MRR__c": 10.0, "Code__c": "A"}),
        9,
    );
    echo.origin = Some("com/salesforce/api/rest/60.0;client=extsync".into());
    let d = external_change(&m, e, &state, "7", &echo, Some(&view));
    let Plan::Write {
        billing: Some(cols),
        ..
    } = d.plan
    else {
        panic!("the person's edit must reach billing: {:?}", d.plan);
    };
    assert_eq!(cols.get("email"), Some(&json!("person@x.test")));
    assert!(!cols.contains_key("name"), "{cols:?}");
}

#[test]
fn external_edit_flows_to_billing_columns() {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let state = linked();
    let view = obj(json!({"name": "Acme", "email": "a@x.test", "mrr": "10", "code": "A"}));
    let ch = external(
        "001ABC",
        "v2",
        json!({"Name": "Acme Inc", "Email__c": "a@x.test", "MRR__c": 999.0, "Code__c": "A"}),
        5,
    );
    let d = external_change(&m, e, &state, "7", &ch, Some(&view));
    let Plan::Write {
        external: None,
        billing: Some(cols),
        resolutions,
    } = d.plan
    else {
        panic!("{:?}", d.plan)
    };
    // MRR is one-way alguna → external: the external edit is not synced back.
    assert_eq!(Value::Object(cols), json!({"name": "Acme Inc"}));
    assert!(resolutions.is_empty());
}

#[test]
fn failing_custom_transform_is_a_field_validation_failure() {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let row = json!({"id": 9, "name": "X", "email": "x@x.test", "mrr": "1", "code": "bad"});
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("accounts", "c", row, 1),
        &[],
        None,
    );
    match d.plan {
        Plan::Failed {
            error_type,
            message,
        } => {
            assert_eq!(error_type, "field_validation");
            assert!(message.contains("code rejected"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn child_waits_for_its_parent_then_carries_the_parent_id() {
    let m = mappings();
    let e = m.for_external("sf", "subscriptions").unwrap();
    let row = json!({"id": 3, "account_id": 7, "product": "Growth"});
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("subscriptions", "c", row.clone(), 1),
        &[],
        None,
    );
    assert_eq!(
        d.plan,
        Plan::NeedsParent {
            entity: "accounts".into(),
            billing_id: "7".into()
        }
    );
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("subscriptions", "c", row, 1),
        &[],
        Some("001ABC".into()),
    );
    let Plan::Write {
        external: Some(w), ..
    } = d.plan
    else {
        panic!("{:?}", d.plan)
    };
    assert_eq!(w.fields.get("AccountId"), Some(&json!("001ABC")));
}

#[test]
fn a_retry_after_the_parent_is_linked_writes_unless_a_later_change_was_synced() {
    let m = mappings();
    let e = m.for_external("sf", "subscriptions").unwrap();
    let row = json!({"id": 3, "account_id": 7, "product": "Growth"});
    let mut retry = billing("subscriptions", "c", row, 5);
    retry.origin = Some(RETRY_ORIGIN.into());
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &retry,
        &[],
        Some("001ABC".into()),
    );
    let Plan::Write {
        external: Some(w), ..
    } = d.plan
    else {
        panic!("{:?}", d.plan)
    };
    assert_eq!(w.op, ExternalWriteOp::Create);
    assert_eq!(w.fields.get("AccountId"), Some(&json!("001ABC")));

    // A later change of the record was synced meanwhile: the retry is stale.
    let synced_later = RecordState {
        billing_changed_at: Some(Utc.timestamp_opt(6, 0).unwrap()),
        ..RecordState::default()
    };
    let d = billing_change(&m, e, &synced_later, &retry, &[], Some("001ABC".into()));
    assert_eq!(d.plan, Plan::Nothing(SkipReason::Superseded));
}

#[test]
fn deletes_propagate_once_and_never_resurrect() {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let state = linked();
    let d = billing_change(
        &m,
        e,
        &state,
        &billing("accounts", "d", json!({"id": 7}), 9),
        &[],
        None,
    );
    let Plan::Write {
        external: Some(w), ..
    } = d.plan
    else {
        panic!("{:?}", d.plan)
    };
    assert_eq!(
        w.op,
        ExternalWriteOp::Delete {
            external_id: "001ABC".into()
        }
    );
    assert!(d.state.deleted);
    // A late external update of the deleted record does not bring it back.
    let view = obj(json!({"name": "Acme"}));
    let late = external("001ABC", "v9", json!({"Name": "Zombie"}), 10);
    assert_eq!(
        external_change(&m, e, &d.state, "7", &late, Some(&view)).plan,
        Plan::Nothing(SkipReason::Deleted)
    );
}

#[test]
fn a_record_already_carrying_the_billing_id_is_adopted_not_written_over() {
    // A create landed, then extsync died before remembering it; meanwhile
    // someone changed the email in Salesforce. The replayed insert adopts
    // the record and brings that email to billing instead of overwriting it.
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let row = json!({"id": 7, "name": "Acme", "email": "a@x.test", "mrr": "10.5", "code": "A1", "external_id": null});
    let existing = vec![(
        "001EXISTING".to_string(),
        obj(
            json!({"Name": "Acme", "Email__c": "person@x.test", "MRR__c": 10.5, "Code__c": "A1", "Alguna_Id__c": "7"}),
        ),
    )];
    let d = billing_change(
        &m,
        e,
        &RecordState::default(),
        &billing("accounts", "c", row, 1),
        &existing,
        None,
    );
    assert_eq!(d.state.external_id.as_deref(), Some("001EXISTING"));
    let Plan::Write {
        external: None,
        billing: Some(cols),
        ..
    } = d.plan
    else {
        panic!("{:?}", d.plan)
    };
    assert_eq!(Value::Object(cols), json!({"email": "person@x.test"}));
}

/// Hashes are stored with each record: their form must not change between
/// versions, or every stored echo guard would stop matching.
#[test]
fn the_external_hash_is_stable() {
    let m = mappings();
    let e = m.for_external("sf", "accounts").unwrap();
    let image = obj(json!({"Name": "Acme", "Email__c": "a@acme.test", "MRR__c": 12.5, "Other": 1}));
    let hash = extsync::processor::decide::external_hash(e, &image);
    // SHA-256 of {"Email__c":"a@acme.test","MRR__c":12.5,"Name":"Acme"}, first 16 bytes.
    assert_eq!(hash, "d429fc2b0970e95bc41b8b86413c3573");
}
