//! The Salesforce connector against the simulator: every operation and
//! every error class.

mod salesforce_support;

use std::time::{Duration, Instant};

use extsync::connectors::salesforce::{MAX_BATCH, SalesforceConnector, SalesforceSettings};
use extsync::connectors::{Connector, ErrorClass, WebhookRequest, WriteOp};
use extsync::simulators::FaultsSnapshot;
use extsync::simulators::salesforce::{
    CustomField, DuplicateRule, FieldType, SalesforceSimConfig, ValidationRule,
};
use salesforce_support::*;
use serde_json::json;

fn rules_config() -> SalesforceSimConfig {
    let mut c = SalesforceSimConfig::default();
    c.custom_fields.push(CustomField {
        object: "Account".into(),
        name: "Legacy_Id__c".into(),
        kind: FieldType::String,
        external_id: true,
        unique: false,
        required: false,
    });
    c.validation_rules.push(ValidationRule {
        object: "Opportunity".into(),
        name: "Amount_Not_Negative".into(),
        condition: "Amount < 0".into(),
        message: "Amount cannot be negative".into(),
        error_field: Some("Amount".into()),
    });
    c.duplicate_rules.push(DuplicateRule {
        object: "Contact".into(),
        name: "Contact_Email".into(),
        fields: vec!["Email".into()],
    });
    c
}

#[tokio::test]
async fn single_record_crud_and_upsert() {
    let org = start().await;
    let c = &org.connector;
    c.authenticate().await.unwrap();

    let created = c
        .write(
            "Account",
            WriteOp::Create {
                fields: fields(json!({"Name": "Acme", "BillingCity": "Paris", "MRR__c": 120.5})),
            },
        )
        .await
        .unwrap();
    assert!(created.created);
    assert!(created.id.starts_with("001") && created.id.len() == 18);

    let rec = c.read("Account", &created.id).await.unwrap();
    assert_eq!(rec.fields["Name"], json!("Acme"));
    assert_eq!(rec.fields["MRR__c"], json!(120.5));
    assert!(!rec.deleted);
    let first_version = rec.version.clone();

    tokio::time::sleep(Duration::from_millis(5)).await;
    c.write(
        "Account",
        WriteOp::Update {
            id: created.id.clone(),
            fields: fields(json!({"Name": "Acme Corp"})),
        },
    )
    .await
    .unwrap();
    let rec = c.read("Account", &created.id).await.unwrap();
    assert_eq!(rec.fields["Name"], json!("Acme Corp"));
    assert!(
        rec.version > first_version,
        "SystemModstamp moves on update"
    );

    let up = c
        .write(
            "Account",
            WriteOp::Upsert {
                id_field: "Alguna_Id__c".into(),
                id_value: "acct 42/x".into(),
                fields: fields(json!({"Name": "Upserted"})),
            },
        )
        .await
        .unwrap();
    assert!(up.created);
    let again = c
        .write(
            "Account",
            WriteOp::Upsert {
                id_field: "Alguna_Id__c".into(),
                id_value: "acct 42/x".into(),
                fields: fields(json!({"Name": "Upserted again"})),
            },
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.id, up.id);
    assert_eq!(
        c.read("Account", &up.id).await.unwrap().fields["Alguna_Id__c"],
        json!("acct 42/x")
    );

    c.write("Account", WriteOp::Delete { id: up.id.clone() })
        .await
        .unwrap();
    let gone = c.read("Account", &up.id).await.unwrap_err();
    assert_eq!(gone.class, ErrorClass::NotFound);
    assert_eq!(gone.code.as_deref(), Some("ENTITY_IS_DELETED"));

    let written = org.sim.written(0);
    assert_eq!(written.len(), 5);
    assert!(
        written
            .iter()
            .all(|w| w.client.as_deref() == Some("extsync")),
        "writes carry Sforce-Call-Options: client=extsync"
    );
    assert_eq!(
        written.iter().map(|w| w.op).collect::<Vec<_>>(),
        ["create", "update", "upsert", "upsert", "delete"]
    );
}

#[tokio::test]
async fn batch_writes_keep_order_and_fail_per_record() {
    let org = start().await;
    let c = &org.connector;
    let mut ops: Vec<WriteOp> = (0..150)
        .map(|i| WriteOp::Create {
            fields: fields(json!({"Name": format!("Batch {i}")})),
        })
        .collect();
    ops.insert(
        10,
        WriteOp::Create {
            fields: fields(json!({"BillingCity": "no name"})),
        },
    );
    let results = c.write_batch("Account", ops).await.unwrap();
    assert_eq!(results.len(), 151);
    let bad = results[10].as_ref().unwrap_err();
    assert_eq!(bad.class, ErrorClass::FieldValidation);
    assert_eq!(bad.code.as_deref(), Some("REQUIRED_FIELD_MISSING"));
    assert_eq!(*bad.fields, ["Name"]);
    let ids: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|o| o.id.clone())
        .collect();
    assert_eq!(ids.len(), 150);

    let mixed = vec![
        WriteOp::Update {
            id: ids[0].clone(),
            fields: fields(json!({"Name": "Renamed 0"})),
        },
        WriteOp::Update {
            id: ids[1].clone(),
            fields: fields(json!({"Nope__c": 1})),
        },
        WriteOp::Upsert {
            id_field: "Alguna_Id__c".into(),
            id_value: "b-1".into(),
            fields: fields(json!({"Name": "Upsert 1"})),
        },
        WriteOp::Upsert {
            id_field: "Alguna_Id__c".into(),
            id_value: "b-1".into(),
            fields: fields(json!({"Name": "Upsert 1 again"})),
        },
        WriteOp::Delete { id: ids[2].clone() },
        WriteOp::Delete { id: ids[2].clone() },
    ];
    let r = c.write_batch("Account", mixed).await.unwrap();
    assert!(r[0].is_ok());
    assert_eq!(
        r[1].as_ref().unwrap_err().code.as_deref(),
        Some("INVALID_FIELD")
    );
    assert!(r[2].as_ref().unwrap().created);
    assert!(!r[3].as_ref().unwrap().created);
    assert_eq!(r[2].as_ref().unwrap().id, r[3].as_ref().unwrap().id);
    assert!(r[4].is_ok());
    assert_eq!(r[5].as_ref().unwrap_err().class, ErrorClass::NotFound);

    let read = c
        .read_many(
            "Account",
            &[ids[0].clone(), ids[2].clone(), "001Dn000000zzzzAAA".into()],
        )
        .await
        .unwrap();
    assert_eq!(read.len(), 1, "deleted and unknown ids are left out");
    assert_eq!(read[0].fields["Name"], json!("Renamed 0"));

    let too_many: Vec<WriteOp> = (0..201)
        .map(|i| WriteOp::Create {
            fields: fields(json!({"Name": format!("x{i}")})),
        })
        .collect();
    assert_eq!(c.max_batch(), 200);
    assert_eq!(
        c.write_batch("Account", too_many).await.unwrap_err().class,
        ErrorClass::FieldValidation
    );
}

#[tokio::test]
async fn field_validation_errors_carry_vendor_codes() {
    let org = start_with(rules_config()).await;
    let c = &org.connector;
    let create = |object: &'static str, v: serde_json::Value| {
        let c = c.clone();
        async move { c.write(object, WriteOp::Create { fields: fields(v) }).await }
    };

    let e = create("Contact", json!({"FirstName": "Ann"}))
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::FieldValidation);
    assert_eq!(e.code.as_deref(), Some("REQUIRED_FIELD_MISSING"));
    assert_eq!(*e.fields, ["LastName"]);
    assert_eq!(e.status, Some(400));

    let e = create("Account", json!({"Name": "x", "Colour__c": "red"}))
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("INVALID_FIELD"));
    assert!(e.message.contains("Colour__c"));

    let e = create(
        "Opportunity",
        json!({"Name": "o", "StageName": "Prospecting", "CloseDate": "2025-01-31", "Amount": -5}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("FIELD_CUSTOM_VALIDATION_EXCEPTION"));
    assert_eq!(e.message, "Amount cannot be negative");
    assert_eq!(*e.fields, ["Amount"]);

    let e = create("Contact", json!({"LastName": "B", "Email": "not-an-email"}))
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("INVALID_EMAIL_ADDRESS"));

    let first = create(
        "Contact",
        json!({"LastName": "B", "Email": "b@example.com"}),
    )
    .await
    .unwrap();
    let e = create(
        "Contact",
        json!({"LastName": "C", "Email": "B@example.com"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("DUPLICATES_DETECTED"));
    assert_eq!(e.existing_id.as_deref(), Some(first.id.as_str()));
    assert_eq!(e.class, ErrorClass::FieldValidation, "a likely match only");

    let a = create("Account", json!({"Name": "u1", "Alguna_Id__c": "dup"}))
        .await
        .unwrap();
    let e = create("Account", json!({"Name": "u2", "Alguna_Id__c": "dup"}))
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("DUPLICATE_VALUE"));
    assert_eq!(e.existing_id.as_deref(), Some(a.id.as_str()));
    assert_eq!(e.class, ErrorClass::AlreadyExists);

    let e = create(
        "Contact",
        json!({"LastName": "D", "AccountId": "001Dn000000zzzzAAA"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("INVALID_CROSS_REFERENCE_KEY"));
    assert_eq!(*e.fields, ["AccountId"]);

    let e = create("Account", json!({"Name": "x", "MRR__c": "lots"}))
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("JSON_PARSER_ERROR"));

    for name in ["l1", "l2"] {
        create("Account", json!({"Name": name, "Legacy_Id__c": "same"}))
            .await
            .unwrap();
    }
    let e = c
        .write(
            "Account",
            WriteOp::Upsert {
                id_field: "Legacy_Id__c".into(),
                id_value: "same".into(),
                fields: fields(json!({"Name": "which?"})),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::FieldValidation);
    assert_eq!(e.status, Some(300));
}

#[tokio::test]
async fn missing_records_are_not_found() {
    let org = start().await;
    let c = &org.connector;
    let e = c.read("Account", "001Dn000000zzzzAAA").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::NotFound);
    assert_eq!(e.code.as_deref(), Some("NOT_FOUND"));
    let e = c
        .write(
            "Contact",
            WriteOp::Update {
                id: "003Dn000000zzzzAAA".into(),
                fields: fields(json!({"LastName": "x"})),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::NotFound);
    let e = c
        .write(
            "Account",
            WriteOp::Delete {
                id: "001Dn000000zzzzAAA".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::NotFound);
    let e = c.read("Account", "bad id").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::NotFound);
}

#[tokio::test]
async fn expired_session_is_refreshed_and_the_call_succeeds() {
    let config = SalesforceSimConfig {
        token_lifetime_secs: 1,
        ..Default::default()
    };
    let org = start_with(config).await;
    let c = &org.connector;
    let a = c
        .write(
            "Account",
            WriteOp::Create {
                fields: fields(json!({"Name": "before"})),
            },
        )
        .await
        .unwrap();

    // Revoked by the admin surface mid-run.
    assert!(org.sim.expire_tokens() >= 1);
    c.write(
        "Account",
        WriteOp::Update {
            id: a.id.clone(),
            fields: fields(json!({"Name": "after revoke"})),
        },
    )
    .await
    .unwrap();

    // Revoked by the shared fault switch.
    org.sim.faults().set(&FaultsSnapshot {
        expire_tokens: Some(true),
        ..Default::default()
    });
    assert_eq!(
        c.read("Account", &a.id).await.unwrap().fields["Name"],
        json!("after revoke")
    );

    // Expired by the configured session lifetime.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let page = c
        .write_batch(
            "Account",
            vec![WriteOp::Update {
                id: a.id.clone(),
                fields: fields(json!({"Name": "after lifetime"})),
            }],
        )
        .await
        .unwrap();
    assert!(page[0].is_ok());
}

#[tokio::test]
async fn bad_credentials_are_auth_expired() {
    let org = start().await;
    let mut creds = demo_credentials();
    creds.refresh_token = Some("revoked".into());
    let c = SalesforceConnector::new(settings(&org.url(), creds));
    let e = c.authenticate().await.unwrap_err();
    assert_eq!(e.class, ErrorClass::AuthExpired);
    assert_eq!(e.code.as_deref(), Some("invalid_grant"));
    assert!(!format!("{e:?}").contains("revoked"), "no secret in errors");

    let mut creds = demo_credentials();
    creds.client_secret = "wrong".into();
    creds.refresh_token = None;
    let c = SalesforceConnector::new(settings(&org.url(), creds));
    let e = c.read("Account", "001Dn000000zzzzAAA").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::AuthExpired);
    assert_eq!(e.code.as_deref(), Some("invalid_client"));

    let mut creds = demo_credentials();
    creds.refresh_token = None;
    let c = SalesforceConnector::new(settings(&org.url(), creds));
    c.authenticate().await.expect("client_credentials grant");
}

#[tokio::test]
async fn exhausted_quota_is_rate_limit_with_wait() {
    let org = start().await;
    let c = &org.connector;
    c.authenticate().await.unwrap();
    org.sim.set_api_usage(Some(10), Some(10));
    let e = c.read("Account", "001Dn000000zzzzAAA").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimit);
    assert_eq!(e.code.as_deref(), Some("REQUEST_LIMIT_EXCEEDED"));
    assert_eq!(e.status, Some(403));
    assert_eq!(e.retry_after, Some(LIMIT_WAIT));
    assert!(e.retryable());

    let e = c
        .write_batch(
            "Account",
            vec![WriteOp::Create {
                fields: fields(json!({"Name": "x"})),
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimit);

    org.sim.set_api_usage(Some(1_000), Some(0));
    c.write(
        "Account",
        WriteOp::Create {
            fields: fields(json!({"Name": "x"})),
        },
    )
    .await
    .unwrap();
    assert_eq!(org.sim.api_usage(), (1, 1_000));

    org.sim.faults().set(&FaultsSnapshot {
        exhaust_limits: Some(true),
        ..Default::default()
    });
    let e = c.read("Account", "001Dn000000zzzzAAA").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimit);
}

#[tokio::test]
async fn server_and_connection_failures_are_transient() {
    let org = start().await;
    let c = &org.connector;
    c.authenticate().await.unwrap();
    org.sim.faults().set(&FaultsSnapshot {
        fail_next: Some(1),
        fail_status: Some(503),
        ..Default::default()
    });
    let e = c.read("Account", "001Dn000000zzzzAAA").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
    assert_eq!(e.status, Some(503));
    assert_eq!(e.code.as_deref(), Some("SERVER_UNAVAILABLE"));
    let e = c.read("Account", "001Dn000000zzzzAAA").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::NotFound, "the fault was used up");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = SalesforceConnector::new(settings(&format!("http://{closed}"), demo_credentials()));
    let e = c.authenticate().await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
}

#[tokio::test]
async fn answers_slower_than_the_request_timeout_are_transient() {
    let org = start().await;
    let mut s = settings(&org.url(), demo_credentials());
    s.request_timeout = Duration::from_millis(300);
    let c = SalesforceConnector::new(s);
    let a = c
        .write(
            "Account",
            WriteOp::Create {
                fields: fields(json!({"Name": "Slow Co"})),
            },
        )
        .await
        .unwrap();
    c.read("Account", &a.id).await.unwrap();

    org.sim.faults().set(&FaultsSnapshot {
        latency_ms: Some(3_000),
        ..Default::default()
    });
    let started = Instant::now();
    let e = c.read("Account", &a.id).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(e.retryable());
    assert!(e.message.contains("timed out"), "{e}");
    assert_eq!(e.status, None, "no answer arrived");
    assert!(
        took < Duration::from_millis(2_500),
        "the call gave up at its own timeout, not the simulator's latency: {took:?}"
    );
    let cause = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<reqwest::Error>())
        .expect("the transport error is kept as the source");
    assert!(cause.is_timeout());

    org.sim.faults().set(&FaultsSnapshot {
        latency_ms: Some(0),
        ..Default::default()
    });
    let rec = c.read("Account", &a.id).await.unwrap();
    assert_eq!(rec.fields["Name"], json!("Slow Co"));
}

#[tokio::test]
async fn find_by_field_returns_exact_matches_only() {
    let org = start().await;
    let c = &org.connector;
    let billing_id = |i: usize| format!("cus_{i}");
    let mut ids = std::collections::HashMap::new();
    let all: Vec<usize> = (0..250).collect();
    for chunk in all.chunks(MAX_BATCH) {
        let ops = chunk
            .iter()
            .map(|&i| WriteOp::Create {
                fields: fields(json!({"Name": format!("Acct {i}"), "Alguna_Id__c": billing_id(i)})),
            })
            .collect();
        for (i, r) in chunk
            .iter()
            .zip(c.write_batch("Account", ops).await.unwrap())
        {
            ids.insert(billing_id(*i), r.unwrap().id);
        }
    }
    let quoted = c
        .write(
            "Account",
            WriteOp::Create {
                fields: fields(json!({"Name": "O'Brien Ltd", "Alguna_Id__c": "cus_o'brien\\x"})),
            },
        )
        .await
        .unwrap();

    // One value: only the record holding exactly it, not cus_20…cus_249.
    let found = c
        .find_by_field("Account", "Alguna_Id__c", &[billing_id(2)])
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].object, "Account");
    assert_eq!(found[0].id, ids[&billing_id(2)]);
    assert_eq!(found[0].fields["Alguna_Id__c"], json!("cus_2"));
    assert_eq!(found[0].fields["Name"], json!("Acct 2"));
    assert!(!found[0].deleted);

    let found = c
        .find_by_field("Account", "Alguna_Id__c", &["cus_o'brien\\x".to_string()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "quotes and backslashes are escaped");
    assert_eq!(found[0].id, quoted.id);

    // None: values without a record are left out, without an error.
    let none = c
        .find_by_field(
            "Account",
            "Alguna_Id__c",
            &["cus_missing".to_string(), "cus_".to_string()],
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(
        c.find_by_field("Contact", "Alguna_Id__c", &[billing_id(2)])
            .await
            .unwrap()
            .is_empty(),
        "another object's records are not matched"
    );

    // Several: more values than one query holds, some without a record.
    let mut values: Vec<String> = (0..250).map(billing_id).collect();
    values.push("cus_missing".into());
    let found = c
        .find_by_field("Account", "Alguna_Id__c", &values)
        .await
        .unwrap();
    assert_eq!(found.len(), 250);
    let mut seen = std::collections::HashSet::new();
    for r in &found {
        let key = r.fields["Alguna_Id__c"].as_str().unwrap().to_string();
        assert_eq!(r.id, ids[&key], "{key} maps to its own record");
        assert!(seen.insert(key), "each record once");
    }

    // A deleted record is no longer found.
    c.write(
        "Account",
        WriteOp::Delete {
            id: ids[&billing_id(7)].clone(),
        },
    )
    .await
    .unwrap();
    assert!(
        c.find_by_field("Account", "Alguna_Id__c", &[billing_id(7)])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn conditional_update_of_a_changed_record_is_stale_version() {
    let org = start().await;
    let c = &org.connector;
    let a = c
        .write(
            "Account",
            WriteOp::Create {
                fields: fields(json!({"Name": "v1"})),
            },
        )
        .await
        .unwrap();
    let read_at = chrono::Utc::now() - chrono::Duration::seconds(5);
    let e = c
        .update_if_unmodified("Account", &a.id, fields(json!({"Name": "v2"})), read_at)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::StaleVersion);
    assert_eq!(e.status, Some(412));
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    c.update_if_unmodified("Account", &a.id, fields(json!({"Name": "v2"})), later)
        .await
        .unwrap();
}

#[tokio::test]
async fn webhooks_are_refused() {
    let org = start().await;
    let req = WebhookRequest {
        method: "POST".into(),
        url: "http://127.0.0.1/webhooks/salesforce".into(),
        headers: Default::default(),
        body: bytes::Bytes::from_static(b"{}"),
        received_at: chrono::Utc::now(),
    };
    let e = org.connector.verify_webhook(&req).unwrap_err();
    assert_eq!(e.class, ErrorClass::Unauthenticated);
}

#[tokio::test]
async fn settings_come_from_a_pipeline_integration() {
    // SAFETY: these variables are read by this test alone.
    unsafe {
        std::env::set_var("SF_CONNECTOR_TEST_CLIENT_ID", "abc");
        std::env::set_var("SF_CONNECTOR_TEST_CLIENT_SECRET", "def");
    }
    let yaml = r#"
provider: salesforce
baseUrl: http://127.0.0.1:1
credentials:
  clientId: ${SF_CONNECTOR_TEST_CLIENT_ID}
  clientSecret: ${SF_CONNECTOR_TEST_CLIENT_SECRET}
"#;
    let integration: extsync::config::Integration = serde_yaml_ng::from_str(yaml).unwrap();
    let s = SalesforceSettings::from_integration(&integration).unwrap();
    assert_eq!(s.login_url, "http://127.0.0.1:1");
    assert_eq!(s.credentials.client_id, "abc");
    assert_eq!(
        s.request_timeout,
        extsync::connectors::http::REQUEST_TIMEOUT
    );
    assert!(!format!("{s:?}").contains("def"), "secrets are redacted");
}
