//! External writer against the Salesforce and HubSpot simulators through the
//! real connectors: batch sizes, injected 5xx, rate-limit storms, token
//! expiry mid-run, refused credentials (the integration's status saved in
//! Postgres), validation failures isolated to their record, and replays that
//! create nothing twice.

mod hubspot_support;
mod salesforce_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use extsync::connectors::salesforce::SalesforceConnector;
use extsync::connectors::{Connector, ErrorClass};
use extsync::delivery::{
    DeliveryError, DeliveryOutcome, ExternalWrite, ExternalWriteOp, ExternalWriter,
    ExternalWriterConfig, IntegrationStatus, Interruption, NotFoundPolicy, OutcomeKind,
    PgStatusStore, RetryPolicy,
};
use extsync::simulators::RunningSimulator;
use extsync::simulators::hubspot::limits::LimitsConfig;
use extsync::simulators::hubspot::store::ChangeKind;
use extsync::simulators::hubspot::{HubSpotConfig, HubSpotSim};
use extsync::simulators::salesforce::SalesforceSimConfig;
use serde_json::{Value, json};

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(30),
    }
}

fn writer(
    integration: &str,
    connector: Arc<dyn extsync::connectors::Connector>,
    retry: RetryPolicy,
    max_batch: Option<usize>,
) -> ExternalWriter {
    ExternalWriter::new(
        integration,
        connector,
        ExternalWriterConfig {
            retry,
            not_found: NotFoundPolicy::Skip,
            max_batch,
            ..Default::default()
        },
    )
}

fn write(
    integration: &str,
    object: &str,
    billing_id: String,
    fields: Value,
    id_field: Option<&str>,
) -> ExternalWrite {
    ExternalWrite {
        integration: integration.into(),
        entity: "accounts".into(),
        object: object.into(),
        billing_id: billing_id.clone(),
        op: ExternalWriteOp::Create,
        fields: fields.as_object().expect("an object").clone(),
        billing_id_field: id_field.map(str::to_string),
        idempotency_key: format!("{integration}:{object}:{billing_id}:c"),
    }
}

fn all(out: &[DeliveryOutcome], kind: OutcomeKind) -> bool {
    out.iter().all(|o| o.kind == kind)
}

async fn post(base_url: &str, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{base_url}{path}"))
        .json(&body)
        .send()
        .await
        .expect("admin call");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap_or(Value::Null)
}

// ---- Salesforce ----

fn sf_accounts(n: usize, prefix: &str) -> Vec<ExternalWrite> {
    (0..n)
        .map(|i| {
            write(
                "sf",
                "Account",
                format!("{prefix}{i}"),
                json!({"Name": format!("Account {i}"), "MRR__c": 100 + i}),
                Some("Alguna_Id__c"),
            )
        })
        .collect()
}

/// Distinct records of `object` the org was asked to create (inserts, and
/// upserts that found nothing).
fn sf_creates(org: &salesforce_support::Org, object: &str) -> usize {
    org.sim
        .written(0)
        .iter()
        .filter(|w| (w.op == "create" || w.op == "upsert") && w.object == object)
        .map(|w| w.id.clone())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

fn sf_connector(
    org: &salesforce_support::Org,
    limit_wait: Duration,
    credentials: extsync::connectors::Credentials,
) -> Arc<SalesforceConnector> {
    let mut s = salesforce_support::settings(&org.url(), credentials);
    s.limit_wait = limit_wait;
    Arc::new(SalesforceConnector::new(s))
}

#[tokio::test]
async fn salesforce_batches_by_max_batch_and_replays_create_nothing_twice() {
    let org = salesforce_support::start().await;
    let w = writer("sf", org.connector.clone(), policy(4), None);
    assert_eq!(w.max_batch(), 200);
    let writes = sf_accounts(450, "b");
    let calls_before = org.sim.api_usage().0;
    let first = w.write(&writes).await.unwrap();
    assert!(all(&first, OutcomeKind::Created), "{:?}", &first[..2]);
    assert_eq!(
        org.sim.api_usage().0 - calls_before,
        3,
        "450 upserts in 200 + 200 + 50"
    );
    assert_eq!(sf_creates(&org, "Account"), 450);

    let second = w.write(&writes).await.unwrap();
    assert!(all(&second, OutcomeKind::Updated));
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.external_id, b.external_id);
    }
    assert_eq!(
        sf_creates(&org, "Account"),
        450,
        "the replay created nothing"
    );

    let plain: Vec<ExternalWrite> = (0..20)
        .map(|i| {
            write(
                "sf",
                "Contact",
                format!("c{i}"),
                json!({"LastName": format!("Person {i}")}),
                None,
            )
        })
        .collect();
    let made = w.write(&plain).await.unwrap();
    let again = w.write(&plain).await.unwrap();
    assert!(all(&made, OutcomeKind::Created));
    assert!(
        all(&again, OutcomeKind::Skipped),
        "guarded creates are not sent again"
    );
    assert_eq!(sf_creates(&org, "Contact"), 20);
}

#[tokio::test]
async fn salesforce_injected_5xx_are_retried() {
    let org = salesforce_support::start().await;
    let w = writer("sf", org.connector.clone(), policy(5), None);
    post(&org.url(), "/__admin/faults", json!({"failNext": 2})).await;
    let out = w.write(&sf_accounts(30, "f")).await.unwrap();
    assert!(all(&out, OutcomeKind::Created));
    assert_eq!(sf_creates(&org, "Account"), 30);

    post(
        &org.url(),
        "/__admin/faults",
        json!({"failNext": 2, "failStatus": 500}),
    )
    .await;
    let plain: Vec<ExternalWrite> = (0..5)
        .map(|i| {
            write(
                "sf",
                "Contact",
                format!("p{i}"),
                json!({"LastName": "X"}),
                None,
            )
        })
        .collect();
    let out = w.write(&plain).await.unwrap();
    assert!(all(&out, OutcomeKind::Created));
    assert_eq!(sf_creates(&org, "Contact"), 5);
}

#[tokio::test]
async fn salesforce_token_expiry_mid_run_is_refreshed() {
    let org = salesforce_support::start().await;
    let w = writer("sf", org.connector.clone(), policy(3), Some(10));
    let writes = sf_accounts(40, "t");
    let first = w.write(&writes[..20]).await.unwrap();
    post(&org.url(), "/__admin/tokens/expire", json!({})).await;
    let mut rest: Vec<ExternalWrite> = writes[20..].to_vec();
    rest.extend(first.iter().enumerate().map(|(i, o)| {
        ExternalWrite {
            op: ExternalWriteOp::Update {
                external_id: o.external_id.clone().unwrap(),
            },
            fields: json!({"Name": format!("Renamed {i}")})
                .as_object()
                .unwrap()
                .clone(),
            ..writes[i].clone()
        }
    }));
    let out = w.write(&rest).await.unwrap();
    assert!(all(&out[..20], OutcomeKind::Created));
    assert!(all(&out[20..], OutcomeKind::Updated));
    assert_eq!(*w.status().borrow(), IntegrationStatus::Active);
    assert_eq!(sf_creates(&org, "Account"), 40);
}

#[tokio::test]
async fn salesforce_refused_credentials_pause_the_integration_and_lose_nothing() {
    let org = salesforce_support::start().await;
    let mut creds = salesforce_support::demo_credentials();
    creds.refresh_token = Some("revoked-refresh-token".into());
    let connector = sf_connector(&org, Duration::from_millis(50), creds);
    let w = writer("sf", connector, policy(3), None);
    let writes = sf_accounts(5, "x");
    let err = w.write(&writes).await.expect_err("credentials refused");
    match &err {
        DeliveryError::Interrupted {
            reason,
            pending,
            outcomes,
            source,
            ..
        } => {
            assert_eq!(*reason, Interruption::AuthExpired);
            assert_eq!(*pending, 5);
            assert!(outcomes.iter().all(Option::is_none));
            assert_eq!(source.class, ErrorClass::AuthExpired);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(w.status().borrow().as_str(), "auth_expired");
    assert_eq!(sf_creates(&org, "Account"), 0);
}

/// A migrated state database of its own, and the status store on it.
async fn status_db() -> (support::TestDb, extsync::store::Db) {
    let db = support::TestDb::create().await;
    let client = extsync::store::open(&db.url, "test").await.unwrap();
    (db, client)
}

/// `(status, message, error_code, since)` of `integration` in `extsync.integration_status`.
async fn saved_status(
    db: &extsync::store::Db,
    integration: &str,
) -> Option<(
    String,
    Option<String>,
    Option<String>,
    chrono::DateTime<chrono::Utc>,
)> {
    db.client()
        .await
        .unwrap()
        .query_opt(
            "SELECT status, message, error_code, since FROM extsync.integration_status WHERE integration = $1",
            &[&integration],
        )
        .await
        .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

#[tokio::test]
async fn salesforce_refused_refresh_is_saved_as_auth_expired_until_writes_work_again() {
    let org = salesforce_support::start().await;
    let (_db, client) = status_db().await;
    let w = writer("sf", org.connector.clone(), policy(3), None)
        .with_status_store(Arc::new(PgStatusStore::new(client.clone())));
    let first = w.write(&sf_accounts(5, "p")).await.unwrap();
    assert!(all(&first, OutcomeKind::Created));
    let (status, ..) = saved_status(&client, "sf").await.expect("a status row");
    assert_eq!(status, "active");

    // Every session ends and the refresh token is refused from now on.
    post(
        &org.url(),
        "/__admin/faults",
        json!({"expireTokens": true, "refuseRefresh": true}),
    )
    .await;
    let writes = sf_accounts(10, "p");
    let err = w.write(&writes).await.expect_err("credentials refused");
    assert!(
        matches!(
            err,
            DeliveryError::Interrupted {
                reason: Interruption::AuthExpired,
                pending: 10,
                ..
            }
        ),
        "{err:?}"
    );
    let (status, message, code, since) = saved_status(&client, "sf").await.unwrap();
    assert_eq!(
        (status.as_str(), message.as_deref(), code.as_deref()),
        (
            "auth_expired",
            Some("expired access/refresh token"),
            Some("invalid_grant")
        )
    );
    w.write(&writes).await.expect_err("still refused");
    assert_eq!(
        saved_status(&client, "sf").await.unwrap().3,
        since,
        "the status keeps the time it began"
    );
    assert_eq!(sf_creates(&org, "Account"), 5);

    post(
        &org.url(),
        "/__admin/faults",
        json!({"refuseRefresh": false}),
    )
    .await;
    let out = w.write(&writes).await.unwrap();
    assert!(all(&out[..5], OutcomeKind::Updated));
    assert!(all(&out[5..], OutcomeKind::Created));
    let (status, message, code, _) = saved_status(&client, "sf").await.unwrap();
    assert_eq!((status.as_str(), message, code), ("active", None, None));
    assert_eq!(*w.status().borrow(), IntegrationStatus::Active);
    assert_eq!(sf_creates(&org, "Account"), 10);
}

#[tokio::test]
async fn salesforce_validation_failure_stays_with_its_record() {
    let mut config = SalesforceSimConfig::default();
    config.validation_rules.push(support::mrr_not_negative());
    let org = salesforce_support::start_with(config).await;
    let w = writer("sf", org.connector.clone(), policy(3), None);
    let mut writes = sf_accounts(10, "v");
    writes[4].fields.insert("MRR__c".into(), json!(-5));
    let out = w.write(&writes).await.unwrap();
    for (i, o) in out.iter().enumerate() {
        if i == 4 {
            assert_eq!(o.kind, OutcomeKind::Failed);
            let (class, message) = o.error.clone().unwrap();
            assert_eq!(class, ErrorClass::FieldValidation);
            assert!(message.contains("MRR cannot be negative"), "{message}");
        } else {
            assert_eq!(o.kind, OutcomeKind::Created, "write {i}");
        }
    }
    assert_eq!(sf_creates(&org, "Account"), 9);
}

#[tokio::test]
async fn successive_updates_of_a_record_go_out_as_one_call_with_the_latest_values() {
    let mut config = SalesforceSimConfig::default();
    config.validation_rules.push(support::mrr_not_negative());
    let org = salesforce_support::start_with(config).await;
    let w = writer("sf", org.connector.clone(), policy(3), None);
    let made = w.write(&sf_accounts(2, "u")).await.unwrap();
    let ids: Vec<String> = made
        .iter()
        .map(|o| o.external_id.clone().unwrap())
        .collect();
    let update = |n: usize, fields: Value| ExternalWrite {
        op: ExternalWriteOp::Update {
            external_id: ids[n].clone(),
        },
        fields: fields.as_object().unwrap().clone(),
        ..write(
            "sf",
            "Account",
            format!("u{n}"),
            json!({}),
            Some("Alguna_Id__c"),
        )
    };
    // Ten edits of the first Account, interleaved with edits of the second
    // that end in a value its validation rule refuses.
    let mut writes = Vec::new();
    for i in 1..=10 {
        writes.push(update(0, json!({"MRR__c": i})));
        if i == 5 {
            writes.push(update(0, json!({"Name": "Renamed"})));
            writes.push(update(1, json!({"MRR__c": 7})));
            writes.push(update(1, json!({"MRR__c": -1})));
        }
    }
    let (calls_before, seen) = (org.sim.api_usage().0, org.sim.written(0).len());
    let out = w.write(&writes).await.unwrap();
    assert_eq!(out.len(), writes.len(), "one outcome per write");
    for (x, o) in writes.iter().zip(&out) {
        let want = if x.billing_id == "u0" {
            OutcomeKind::Updated
        } else {
            OutcomeKind::Failed
        };
        assert_eq!(o.kind, want, "{x:?}");
    }
    assert_eq!(
        org.sim.api_usage().0 - calls_before,
        1,
        "both records' runs in one batch call"
    );
    let written: Vec<_> = org.sim.written(0).into_iter().skip(seen).collect();
    assert_eq!(
        written.len(),
        1,
        "one write, of the first Account: {written:?}"
    );
    assert_eq!(
        Value::Object(written[0].fields.clone()),
        json!({"MRR__c": 10, "Name": "Renamed"})
    );
    let second = org.connector.read("Account", &ids[1]).await.unwrap();
    assert_eq!(
        second.fields["MRR__c"].as_f64(),
        Some(101.0),
        "the refused run changed nothing"
    );
}

#[tokio::test]
async fn salesforce_rate_limit_storm_is_waited_out_or_handed_back() {
    let org = salesforce_support::start().await;
    let connector = sf_connector(
        &org,
        Duration::from_millis(100),
        salesforce_support::demo_credentials(),
    );
    let w = writer("sf", connector, policy(20), None);
    post(
        &org.url(),
        "/__admin/faults",
        json!({"exhaustLimits": true}),
    )
    .await;
    let base = org.url();
    let lift = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        post(&base, "/__admin/faults", json!({"exhaustLimits": false})).await;
    });
    let started = Instant::now();
    let out = w.write(&sf_accounts(5, "s")).await.unwrap();
    lift.await.unwrap();
    assert!(all(&out, OutcomeKind::Created));
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(sf_creates(&org, "Account"), 5);

    let short = writer(
        "sf",
        sf_connector(
            &org,
            Duration::from_millis(20),
            salesforce_support::demo_credentials(),
        ),
        policy(3),
        None,
    );
    post(
        &org.url(),
        "/__admin/faults",
        json!({"exhaustLimits": true}),
    )
    .await;
    let err = short
        .write(&sf_accounts(5, "s2"))
        .await
        .expect_err("storm outlasts three attempts");
    assert!(matches!(
        err,
        DeliveryError::Interrupted {
            reason: Interruption::RetriesExhausted,
            pending: 5,
            ..
        }
    ));
    post(
        &org.url(),
        "/__admin/faults",
        json!({"exhaustLimits": false}),
    )
    .await;
    let out = short.write(&sf_accounts(5, "s2")).await.unwrap();
    assert!(all(&out, OutcomeKind::Created));
    assert_eq!(sf_creates(&org, "Account"), 10);
}

// ---- HubSpot ----

async fn hs_portal(limits: LimitsConfig) -> (RunningSimulator, HubSpotSim) {
    let (running, sim) = hubspot_support::portal_with(HubSpotConfig {
        limits,
        ..HubSpotConfig::default()
    })
    .await;
    hubspot_support::admin(
        &running,
        "/__admin/schema",
        json!({"object": "companies", "addProperties": ["alguna_id"],
               "rules": [{"property": "name", "maxLength": 20, "message": "Name is too long"}]}),
    )
    .await;
    (running, sim)
}

fn hs_companies(n: usize, prefix: &str) -> Vec<ExternalWrite> {
    (0..n)
        .map(|i| {
            write(
                "hs",
                "companies",
                format!("{prefix}{i}"),
                json!({"name": format!("Company {i}"), "city": "Paris"}),
                Some("alguna_id"),
            )
        })
        .collect()
}

fn hs_creations(sim: &HubSpotSim) -> usize {
    sim.written()
        .all()
        .iter()
        .filter(|w| w.kind == ChangeKind::Creation && w.object == "companies")
        .count()
}

fn hs_writer(
    running: &RunningSimulator,
    retry: RetryPolicy,
    max_batch: Option<usize>,
) -> ExternalWriter {
    writer(
        "hs",
        Arc::new(hubspot_support::connector(running)),
        retry,
        max_batch,
    )
}

#[tokio::test]
async fn hubspot_faults_and_token_expiry_mid_run_leave_one_record_each() {
    let (running, sim) = hs_portal(LimitsConfig::unlimited()).await;
    let w = hs_writer(&running, policy(5), None);
    assert_eq!(w.max_batch(), 100);
    let writes = hs_companies(150, "h");
    hubspot_support::admin(&running, "/__admin/faults", json!({"failNext": 2})).await;
    let first = w.write(&writes[..100]).await.unwrap();
    assert!(all(&first, OutcomeKind::Created));
    hubspot_support::admin(&running, "/__admin/faults", json!({"expireTokens": true})).await;
    let rest = w.write(&writes[100..]).await.unwrap();
    assert!(all(&rest, OutcomeKind::Created));
    assert_eq!(hs_creations(&sim), 150);

    hubspot_support::admin(
        &running,
        "/__admin/faults",
        json!({"failNext": 1, "failStatus": 502}),
    )
    .await;
    let replay = w.write(&writes).await.unwrap();
    assert!(all(&replay, OutcomeKind::Updated));
    assert_eq!(hs_creations(&sim), 150, "the replay created nothing");
    for (a, b) in first.iter().chain(&rest).zip(&replay) {
        assert_eq!(a.external_id, b.external_id);
    }
}

#[tokio::test]
async fn hubspot_refused_refresh_pauses_writes_until_it_is_accepted() {
    let (running, sim) = hs_portal(LimitsConfig::unlimited()).await;
    let w = hs_writer(&running, policy(3), None);
    hubspot_support::admin(
        &running,
        "/__admin/faults",
        json!({"expireTokens": true, "refuseRefresh": true}),
    )
    .await;
    let writes = hs_companies(3, "r");
    let err = w.write(&writes).await.expect_err("refresh refused");
    match &err {
        DeliveryError::Interrupted { reason, source, .. } => {
            assert_eq!(*reason, Interruption::AuthExpired);
            assert_eq!(source.code.as_deref(), Some("BAD_REFRESH_TOKEN"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(w.status().borrow().as_str(), "auth_expired");
    assert_eq!(hs_creations(&sim), 0);

    hubspot_support::admin(&running, "/__admin/faults", json!({"refuseRefresh": false})).await;
    let out = w.write(&writes).await.unwrap();
    assert!(all(&out, OutcomeKind::Created));
    assert_eq!(*w.status().borrow(), IntegrationStatus::Active);
    assert_eq!(hs_creations(&sim), 3);
}

#[tokio::test]
async fn hubspot_validation_failure_stays_with_its_record() {
    let (running, sim) = hs_portal(LimitsConfig::unlimited()).await;
    let w = hs_writer(&running, policy(3), None);
    let mut writes = hs_companies(12, "v");
    writes[7].fields.insert(
        "name".into(),
        json!("A name far longer than twenty characters"),
    );
    let out = w.write(&writes).await.unwrap();
    for (i, o) in out.iter().enumerate() {
        if i == 7 {
            assert_eq!(o.kind, OutcomeKind::Failed);
            let (class, message) = o.error.clone().unwrap();
            assert_eq!(class, ErrorClass::FieldValidation);
            assert!(message.contains("Name is too long"), "{message}");
        } else {
            assert_eq!(o.kind, OutcomeKind::Created, "write {i}: {o:?}");
        }
    }
    assert_eq!(hs_creations(&sim), 11);
}

#[tokio::test]
async fn hubspot_ten_secondly_limit_storm_is_waited_out() {
    let (running, sim) = hs_portal(LimitsConfig {
        ten_secondly: 3,
        ..LimitsConfig::unlimited()
    })
    .await;
    let w = hs_writer(
        &running,
        RetryPolicy {
            max_elapsed: Duration::from_secs(40),
            ..policy(8)
        },
        Some(5),
    );
    let started = Instant::now();
    let out = w.write(&hs_companies(25, "r")).await.unwrap();
    let took = started.elapsed();
    assert!(all(&out, OutcomeKind::Created));
    assert_eq!(hs_creations(&sim), 25);
    assert!(
        took >= Duration::from_secs(5),
        "five calls at three per ten seconds must wait for the window: {took:?}"
    );
}
