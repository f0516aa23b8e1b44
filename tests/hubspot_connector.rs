//! The HubSpot connector against the simulator: every operation and every
//! error class.

mod hubspot_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use extsync::connectors::hubspot::{AuthMode, HubSpotConnector};
use extsync::connectors::{Connector, Credentials, ErrorClass, RequestBudget, WriteOp};
use hubspot_support::*;
use serde_json::json;

#[tokio::test]
async fn crud_round_trip() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    c.authenticate().await.unwrap();

    let created = c
        .write(
            "contacts",
            WriteOp::Create {
                fields: fields(json!({"email": "ada@example.com", "firstname": "Ada"})),
            },
        )
        .await
        .unwrap();
    assert!(created.created);
    assert!(
        created.id.parse::<u64>().is_ok(),
        "numeric id: {}",
        created.id
    );

    let rec = c.read("contacts", &created.id).await.unwrap();
    assert_eq!(rec.fields["email"], "ada@example.com");
    assert_eq!(rec.fields["hs_object_id"], created.id.as_str());
    assert_eq!(Some(rec.version.clone()), created.version);

    tokio::time::sleep(Duration::from_millis(5)).await;
    let updated = c
        .write(
            "contacts",
            WriteOp::Update {
                id: created.id.clone(),
                fields: fields(json!({"lastname": "Lovelace", "firstname": null})),
            },
        )
        .await
        .unwrap();
    assert!(!updated.created);
    let rec2 = c.read("contacts", &created.id).await.unwrap();
    assert_eq!(rec2.fields["lastname"], "Lovelace");
    assert!(rec2.fields["firstname"].is_null(), "null clears a property");
    assert!(rec2.modified_at > rec.modified_at);

    let up = c
        .write(
            "contacts",
            WriteOp::Upsert {
                id_field: "email".into(),
                id_value: "ada@example.com".into(),
                fields: fields(json!({"phone": "+44 1"})),
            },
        )
        .await
        .unwrap();
    assert_eq!(up.id, created.id);
    assert!(!up.created);
    let new = c
        .write(
            "contacts",
            WriteOp::Upsert {
                id_field: "email".into(),
                id_value: "grace@example.com".into(),
                fields: fields(json!({"firstname": "Grace"})),
            },
        )
        .await
        .unwrap();
    assert!(new.created);
    assert_ne!(new.id, created.id);

    let deal = c
        .write(
            "deals",
            WriteOp::Create {
                fields: fields(json!({"dealname": "Pro plan", "amount": 99.5})),
            },
        )
        .await
        .unwrap();
    let d = c.read("deals", &deal.id).await.unwrap();
    assert_eq!(d.fields["amount"], "99.5");

    c.write(
        "contacts",
        WriteOp::Delete {
            id: created.id.clone(),
        },
    )
    .await
    .unwrap();
    let gone = c.read("contacts", &created.id).await.unwrap_err();
    assert_eq!(gone.class, ErrorClass::NotFound);
    // Archiving again is not an error, as in HubSpot.
    c.write(
        "contacts",
        WriteOp::Delete {
            id: created.id.clone(),
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn batch_writes_map_partial_failures_to_their_inputs() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    let existing = c
        .write(
            "contacts",
            WriteOp::Create {
                fields: fields(json!({"email": "taken@example.com"})),
            },
        )
        .await
        .unwrap();

    let ops = vec![
        WriteOp::Create {
            fields: fields(json!({"email": "one@example.com"})),
        },
        WriteOp::Create {
            fields: fields(json!({"email": "not-an-email"})),
        },
        WriteOp::Create {
            fields: fields(json!({"email": "TAKEN@example.com"})),
        },
        WriteOp::Create {
            fields: fields(json!({"favourite_colour": "blue"})),
        },
        WriteOp::Update {
            id: existing.id.clone(),
            fields: fields(json!({"firstname": "T"})),
        },
        WriteOp::Update {
            id: "999999999".into(),
            fields: fields(json!({"firstname": "X"})),
        },
        WriteOp::Upsert {
            id_field: "email".into(),
            id_value: "two@example.com".into(),
            fields: fields(json!({"firstname": "Two"})),
        },
        WriteOp::Delete {
            id: existing.id.clone(),
        },
    ];
    let results = c.write_batch("contacts", ops).await.unwrap();
    assert_eq!(results.len(), 8);
    assert!(results[0].as_ref().unwrap().created);
    let e1 = results[1].as_ref().unwrap_err();
    assert_eq!(e1.class, ErrorClass::FieldValidation);
    assert_eq!(*e1.fields, ["email".to_string()]);
    let e2 = results[2].as_ref().unwrap_err();
    assert_eq!(e2.class, ErrorClass::AlreadyExists);
    assert_eq!(e2.code.as_deref(), Some("CONFLICT"));
    assert_eq!(e2.existing_id.as_deref(), Some(existing.id.as_str()));
    let e3 = results[3].as_ref().unwrap_err();
    assert_eq!(*e3.fields, ["favourite_colour".to_string()]);
    assert_eq!(results[4].as_ref().unwrap().id, existing.id);
    assert_eq!(results[5].as_ref().unwrap_err().class, ErrorClass::NotFound);
    assert!(results[6].as_ref().unwrap().created);
    assert_eq!(results[7].as_ref().unwrap().id, existing.id);
    assert_eq!(
        c.read("contacts", &existing.id).await.unwrap_err().class,
        ErrorClass::NotFound
    );

    // More than one batch call's worth, with a record named twice.
    let mut many: Vec<WriteOp> = (0..230)
        .map(|i| WriteOp::Create {
            fields: fields(json!({"email": format!("bulk{i}@example.com")})),
        })
        .collect();
    let first = results[0].as_ref().unwrap().id.clone();
    many.push(WriteOp::Update {
        id: first.clone(),
        fields: fields(json!({"firstname": "A"})),
    });
    many.push(WriteOp::Update {
        id: first.clone(),
        fields: fields(json!({"firstname": "B"})),
    });
    let results = c.write_batch("contacts", many).await.unwrap();
    assert!(results.iter().all(|r| r.is_ok()));
    let ids: std::collections::HashSet<_> = results[..230]
        .iter()
        .map(|r| r.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids.len(), 230);
    assert_eq!(
        c.read("contacts", &first).await.unwrap().fields["firstname"],
        "B"
    );
}

#[tokio::test]
async fn read_many_leaves_out_missing_records() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    let ids = seed_contacts(&sim, "rm", 150).await;
    let mut wanted = ids.clone();
    wanted.push("424242424".into());
    let recs = c.read_many("contacts", &wanted).await.unwrap();
    assert_eq!(recs.len(), 150);
    assert!(recs.iter().all(|r| r.fields.contains_key("email")));
}

#[tokio::test]
async fn validation_errors_name_the_fields() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    let e = c
        .write(
            "contacts",
            WriteOp::Create {
                fields: fields(json!({"email": "x@example.com", "shoe_size": 9})),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::FieldValidation);
    assert_eq!(e.status, Some(400));
    assert_eq!(e.code.as_deref(), Some("VALIDATION_ERROR"));
    assert_eq!(*e.fields, ["shoe_size".to_string()]);
    assert!(e.message.contains("does not exist"), "{}", e.message);

    // Required properties and custom rules.
    admin(
        &sim,
        "/__admin/schema",
        json!({"object": "deals", "addProperties": ["tier"], "required": ["dealname", "dealstage"],
               "rules": [{"property": "tier", "allowed": ["gold", "silver"]}]}),
    )
    .await;
    let e = c
        .write(
            "deals",
            WriteOp::Create {
                fields: fields(json!({"dealname": "D", "tier": "bronze"})),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::FieldValidation);
    let mut f = e.fields.clone();
    f.sort();
    assert_eq!(*f, ["dealstage".to_string(), "tier".to_string()]);
    c.write(
        "deals",
        WriteOp::Create {
            fields: fields(
                json!({"dealname": "D", "dealstage": "appointmentscheduled", "tier": "gold"}),
            ),
        },
    )
    .await
    .unwrap();

    let e = c.read("tickets", "1").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::FieldValidation);
}

#[tokio::test]
async fn duplicate_contact_email_is_a_conflict_with_the_existing_id() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    let first = c
        .write(
            "contacts",
            WriteOp::Create {
                fields: fields(json!({"email": "dup@example.com"})),
            },
        )
        .await
        .unwrap();
    let e = c
        .write(
            "contacts",
            WriteOp::Create {
                fields: fields(json!({"email": "dup@example.com"})),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::AlreadyExists);
    assert_eq!(e.status, Some(409));
    assert_eq!(
        e.message,
        format!("Contact already exists. Existing ID: {}", first.id)
    );
    assert_eq!(e.existing_id, Some(first.id));
}

#[tokio::test]
async fn token_expiring_mid_run_is_refreshed_and_the_call_succeeds() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    c.write(
        "companies",
        WriteOp::Create {
            fields: fields(json!({"name": "Acme"})),
        },
    )
    .await
    .unwrap();
    assert_eq!(admin_get(&sim, "/__admin/oauth").await["issued"], 1);
    admin(&sim, "/__admin/faults", json!({"expireTokens": true})).await;
    let r = c
        .write(
            "companies",
            WriteOp::Create {
                fields: fields(json!({"name": "Globex"})),
            },
        )
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(admin_get(&sim, "/__admin/oauth").await["issued"], 2);
    // Exactly two companies: the refused call was not applied, the retry was.
    let (_, _, page) = api(
        &sim,
        reqwest::Method::GET,
        "/crm/v3/objects/companies?limit=10",
        None,
    )
    .await;
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn refused_refresh_token_is_auth_expired() {
    let (sim, _portal) = portal().await;
    let c = HubSpotConnector::new(
        sim.base_url(),
        AuthMode::OAuth(Credentials {
            refresh_token: Some("na1-revoked".into()),
            ..oauth_credentials()
        }),
        RequestBudget::unlimited(),
    );
    let e = c.read("contacts", "1").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::AuthExpired);
    assert_eq!(e.code.as_deref(), Some("BAD_REFRESH_TOKEN"));
    assert!(
        !format!("{e:?}").contains("na1-revoked"),
        "no secret in errors"
    );

    let bad = HubSpotConnector::new(
        sim.base_url(),
        AuthMode::PrivateApp("pat-na1-wrong".into()),
        RequestBudget::unlimited(),
    );
    let e = bad.read("contacts", "1").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::AuthExpired);
    assert_eq!(e.code.as_deref(), Some("INVALID_AUTHENTICATION"));
}

#[tokio::test]
async fn private_app_token_reads_and_writes() {
    let (sim, _portal) = portal().await;
    let c = private_connector(&sim);
    let r = c
        .write(
            "companies",
            WriteOp::Create {
                fields: fields(json!({"name": "Initech", "domain": "initech.example"})),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        c.read("companies", &r.id).await.unwrap().fields["domain"],
        "initech.example"
    );
}

#[tokio::test]
async fn limit_exhaustion_is_rate_limit_with_the_wait() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    admin(&sim, "/__admin/limits", json!({"tenSecondly": 3})).await;
    for _ in 0..3 {
        let e = c.read("contacts", "1").await.unwrap_err();
        assert_eq!(e.class, ErrorClass::NotFound);
    }
    let e = c.read("contacts", "1").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimit);
    assert_eq!(e.status, Some(429));
    assert_eq!(e.code.as_deref(), Some("RATE_LIMIT"));
    assert_eq!(
        e.message,
        "You have reached your ten_secondly_rolling limit."
    );
    assert_eq!(e.retry_after, Some(Duration::from_secs(10)));
    assert!(e.retryable());

    admin(
        &sim,
        "/__admin/limits",
        json!({"tenSecondly": 1000, "daily": 1}),
    )
    .await;
    c.read("contacts", "1").await.unwrap_err();
    let e = c.read("contacts", "1").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimit);
    let wait = e.retry_after.unwrap();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(86_400),
        "{wait:?}"
    );

    admin(&sim, "/__admin/limits", json!({"daily": 1000000})).await;
    admin(&sim, "/__admin/faults", json!({"exhaustLimits": true})).await;
    let e = c
        .write_batch(
            "contacts",
            vec![WriteOp::Create {
                fields: fields(json!({"email": "rl@example.com"})),
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimit);
    assert_eq!(e.retry_after, Some(Duration::from_secs(10)));
}

#[tokio::test]
async fn server_errors_and_dead_hosts_are_transient() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    c.authenticate().await.unwrap();
    admin(
        &sim,
        "/__admin/faults",
        json!({"failNext": 1, "failStatus": 502}),
    )
    .await;
    let e = c.read("contacts", "1").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
    assert_eq!(e.status, Some(502));
    assert!(e.retryable());
    assert_eq!(
        c.read("contacts", "1").await.unwrap_err().class,
        ErrorClass::NotFound
    );

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = HubSpotConnector::new(
        format!("http://{dead}"),
        AuthMode::PrivateApp("pat".into()),
        RequestBudget::unlimited(),
    );
    let e = c.read("contacts", "1").await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
}

#[tokio::test]
async fn not_found_on_update_and_read() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    let e = c
        .write(
            "deals",
            WriteOp::Update {
                id: "123456789".into(),
                fields: fields(json!({"amount": 1})),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::NotFound);
    assert_eq!(e.status, Some(404));
    assert!(!e.retryable());
}

#[tokio::test]
async fn answers_slower_than_the_request_timeout_are_transient() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim).with_request_timeout(Duration::from_millis(300));
    let created = c
        .write(
            "contacts",
            WriteOp::Create {
                fields: fields(json!({"email": "slow@example.com"})),
            },
        )
        .await
        .unwrap();

    admin(&sim, "/__admin/faults", json!({"latencyMs": 3_000})).await;
    let started = Instant::now();
    let e = c.read("contacts", &created.id).await.unwrap_err();
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

    admin(&sim, "/__admin/faults", json!({"latencyMs": 0})).await;
    let rec = c.read("contacts", &created.id).await.unwrap();
    assert_eq!(rec.fields["email"], "slow@example.com");
}

#[tokio::test]
async fn find_by_field_returns_exact_matches_only() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    admin(
        &sim,
        "/__admin/schema",
        json!({"object": "companies", "addProperties": ["alguna_id"]}),
    )
    .await;
    let billing_id = |i: usize| format!("cus_{i}");
    let mut ids = HashMap::new();
    let all: Vec<usize> = (0..150).collect();
    for chunk in all.chunks(c.max_batch()) {
        let ops = chunk
            .iter()
            .map(|&i| WriteOp::Create {
                fields: fields(json!({"name": format!("Company {i}"), "alguna_id": billing_id(i)})),
            })
            .collect();
        for (i, r) in chunk
            .iter()
            .zip(c.write_batch("companies", ops).await.unwrap())
        {
            ids.insert(billing_id(*i), r.unwrap().id);
        }
    }

    // One value: only the record holding exactly it, not cus_10…cus_149.
    let found = c
        .find_by_field("companies", "alguna_id", &[billing_id(1)])
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].object, "companies");
    assert_eq!(found[0].id, ids[&billing_id(1)]);
    assert_eq!(found[0].fields["alguna_id"], "cus_1");
    assert_eq!(found[0].fields["name"], "Company 1");
    assert!(!found[0].deleted);

    // None: values without a record are left out, without an error.
    let none = c
        .find_by_field(
            "companies",
            "alguna_id",
            &["cus_missing".to_string(), "cus_".to_string()],
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(
        c.find_by_field("deals", "dealname", &[billing_id(1)])
            .await
            .unwrap()
            .is_empty(),
        "another object's records are not matched"
    );

    // Several: more values than one batch read holds, some without a record.
    let mut values: Vec<String> = (0..150).map(billing_id).collect();
    values.push("cus_missing".into());
    let found = c
        .find_by_field("companies", "alguna_id", &values)
        .await
        .unwrap();
    assert_eq!(found.len(), 150);
    let mut seen = HashSet::new();
    for r in &found {
        let key = r.fields["alguna_id"].as_str().unwrap().to_string();
        assert_eq!(r.id, ids[&key], "{key} maps to its own record");
        assert!(seen.insert(key), "each record once");
    }

    // Contacts by their unique email.
    let ada = c
        .write(
            "contacts",
            WriteOp::Create {
                fields: fields(json!({"email": "ada@example.com", "firstname": "Ada"})),
            },
        )
        .await
        .unwrap();
    let found = c
        .find_by_field(
            "contacts",
            "email",
            &["ada@example.com".to_string(), "ada@example.co".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, ada.id);
    assert_eq!(found[0].fields["firstname"], "Ada");

    // An archived record is no longer found.
    c.write(
        "companies",
        WriteOp::Delete {
            id: ids[&billing_id(7)].clone(),
        },
    )
    .await
    .unwrap();
    assert!(
        c.find_by_field("companies", "alguna_id", &[billing_id(7)])
            .await
            .unwrap()
            .is_empty()
    );
}
