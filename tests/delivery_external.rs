//! External writer against a scripted in-process connector: batching,
//! retries, rate limits, credential refresh and pause, per-record failures,
//! idempotent creates, not-found policies and per-record order. The same
//! behaviours against the vendor simulators are in `delivery_simulators.rs`.

#![allow(clippy::result_large_err)] // ConnectorError is the shared error type of every connector.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use extsync::config::Provider;
use extsync::connectors::{
    ChangePage, Connector, ConnectorError, Cursor, ErrorClass, ExternalRecord, WebhookEvent,
    WebhookRequest, WriteOp, WriteOutcome,
};
use extsync::delivery::{
    DeliveryError, ExternalWrite, ExternalWriteOp, ExternalWriter, ExternalWriterConfig,
    IntegrationStatus, Interruption, NotFoundPolicy, OutcomeKind, RetryPolicy, StatusStore,
};
use serde_json::{Map, Value, json};

/// An in-memory system: records per object, scripted whole-call failures,
/// a `Name` rule, and credentials that can expire or be refused.
#[derive(Default)]
struct Scripted {
    max_batch: usize,
    records: Mutex<HashMap<String, Map<String, Value>>>,
    next_id: AtomicU32,
    /// Errors returned by the next calls, whole-call.
    failures: Mutex<VecDeque<ConnectorError>>,
    /// Sizes of the batch calls received, failed ones included.
    calls: Mutex<Vec<(String, usize)>>,
    /// Order in which operations were applied (record id per op).
    applied: Mutex<Vec<String>>,
    token_expired: AtomicBool,
    refuse_auth: AtomicBool,
    authentications: AtomicU32,
    /// A refused record fails the whole call instead of only itself.
    all_or_none: AtomicBool,
    /// How long each call takes.
    delay: Mutex<Duration>,
    in_flight: AtomicU32,
    /// Most calls in flight at once.
    most_in_flight: AtomicU32,
}

impl Scripted {
    fn new(max_batch: usize) -> Arc<Self> {
        Arc::new(Scripted {
            max_batch,
            ..Default::default()
        })
    }

    fn fail_next(&self, errors: impl IntoIterator<Item = ConnectorError>) {
        self.failures.lock().unwrap().extend(errors);
    }

    fn calls(&self) -> Vec<(String, usize)> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    fn get(&self, id: &str) -> Option<Map<String, Value>> {
        self.records.lock().unwrap().get(id).cloned()
    }

    fn apply(&self, op: WriteOp) -> Result<WriteOutcome, ConnectorError> {
        let fields = match &op {
            WriteOp::Create { fields }
            | WriteOp::Update { fields, .. }
            | WriteOp::Upsert { fields, .. } => Some(fields),
            WriteOp::Delete { .. } => None,
        };
        if let Some(name) = fields.and_then(|f| f.get("Name"))
            && name == "INVALID"
        {
            return Err(ConnectorError::new(
                ErrorClass::FieldValidation,
                "Name: value not allowed",
            )
            .with_fields(vec!["Name".into()])
            .with_code("FIELD_CUSTOM_VALIDATION_EXCEPTION"));
        }
        let mut records = self.records.lock().unwrap();
        let (id, created) = match op {
            WriteOp::Create { fields } => {
                let id = format!("r{}", self.next_id.fetch_add(1, Ordering::SeqCst));
                records.insert(id.clone(), fields);
                (id, true)
            }
            WriteOp::Update { id, fields } => {
                let r = records.get_mut(&id).ok_or_else(|| not_found(&id))?;
                r.extend(fields);
                (id, false)
            }
            WriteOp::Upsert {
                id_field,
                id_value,
                fields,
            } => {
                let found = records
                    .iter()
                    .find(|(_, r)| r.get(&id_field) == Some(&Value::String(id_value.clone())))
                    .map(|(id, _)| id.clone());
                match found {
                    Some(id) => {
                        records.get_mut(&id).unwrap().extend(fields);
                        (id, false)
                    }
                    None => {
                        let id = format!("r{}", self.next_id.fetch_add(1, Ordering::SeqCst));
                        records.insert(id.clone(), fields);
                        (id, true)
                    }
                }
            }
            WriteOp::Delete { id } => {
                records.remove(&id).ok_or_else(|| not_found(&id))?;
                (id, false)
            }
        };
        self.applied.lock().unwrap().push(id.clone());
        Ok(WriteOutcome {
            id,
            created,
            version: None,
        })
    }
}

fn not_found(id: &str) -> ConnectorError {
    ConnectorError::new(ErrorClass::NotFound, format!("entity {id} is deleted")).with_status(404)
}

fn transient() -> ConnectorError {
    ConnectorError::new(ErrorClass::Transient, "Service Unavailable").with_status(503)
}

fn rate_limited(wait: Duration) -> ConnectorError {
    ConnectorError::new(ErrorClass::RateLimit, "REQUEST_LIMIT_EXCEEDED")
        .with_status(429)
        .with_retry_after(wait)
}

#[async_trait]
impl Connector for Scripted {
    fn provider(&self) -> Provider {
        Provider::Salesforce
    }

    async fn authenticate(&self) -> Result<(), ConnectorError> {
        self.authentications.fetch_add(1, Ordering::SeqCst);
        if self.refuse_auth.load(Ordering::SeqCst) {
            return Err(ConnectorError::new(
                ErrorClass::AuthExpired,
                "invalid_grant: expired access/refresh token",
            )
            .with_status(400));
        }
        self.token_expired.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn read(&self, _object: &str, id: &str) -> Result<ExternalRecord, ConnectorError> {
        Err(not_found(id))
    }

    async fn read_many(
        &self,
        _object: &str,
        _ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        Ok(Vec::new())
    }

    async fn find_by_field(
        &self,
        _object: &str,
        _field: &str,
        _values: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        Ok(Vec::new())
    }

    async fn list_changes(
        &self,
        _object: &str,
        _since: &Cursor,
        _page: Option<&str>,
    ) -> Result<ChangePage, ConnectorError> {
        Ok(ChangePage::default())
    }

    fn verify_webhook(
        &self,
        _request: &WebhookRequest,
    ) -> Result<Vec<WebhookEvent>, ConnectorError> {
        Ok(Vec::new())
    }

    async fn write(&self, object: &str, op: WriteOp) -> Result<WriteOutcome, ConnectorError> {
        self.write_batch(object, vec![op]).await?.remove(0)
    }

    async fn write_batch(
        &self,
        object: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError> {
        self.calls
            .lock()
            .unwrap()
            .push((object.to_string(), ops.len()));
        assert!(ops.len() <= self.max_batch, "batch over max_batch");
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.token_expired.load(Ordering::SeqCst) {
            return Err(
                ConnectorError::new(ErrorClass::AuthExpired, "Session expired or invalid")
                    .with_status(401),
            );
        }
        if let Some(e) = self.failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        if self.all_or_none.load(Ordering::SeqCst)
            && ops.iter().any(|op| {
                matches!(op, WriteOp::Create { fields } | WriteOp::Upsert { fields, .. } | WriteOp::Update { fields, .. }
                    if fields.get("Name") == Some(&json!("INVALID")))
            })
        {
            return Err(ConnectorError::new(
                ErrorClass::FieldValidation,
                "one or more records were refused",
            )
            .with_status(400));
        }
        Ok(ops.into_iter().map(|op| self.apply(op)).collect())
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        max_elapsed: Duration::from_secs(5),
    }
}

fn writer(sys: &Arc<Scripted>, not_found: NotFoundPolicy) -> ExternalWriter {
    ExternalWriter::new(
        "crm",
        sys.clone(),
        ExternalWriterConfig {
            retry: fast_retries(),
            not_found,
            ..Default::default()
        },
    )
}

fn create(object: &str, billing_id: &str, name: &str, by_field: bool) -> ExternalWrite {
    ExternalWrite {
        integration: "crm".into(),
        entity: "accounts".into(),
        object: object.into(),
        billing_id: billing_id.into(),
        op: ExternalWriteOp::Create,
        fields: json!({ "Name": name }).as_object().unwrap().clone(),
        billing_id_field: by_field.then(|| "Alguna_Id__c".to_string()),
        idempotency_key: format!("crm:accounts:{billing_id}:c"),
    }
}

fn update(billing_id: &str, external_id: &str, name: &str) -> ExternalWrite {
    ExternalWrite {
        op: ExternalWriteOp::Update {
            external_id: external_id.into(),
        },
        ..create("Account", billing_id, name, true)
    }
}

fn kinds(outcomes: &[extsync::delivery::DeliveryOutcome]) -> Vec<OutcomeKind> {
    outcomes.iter().map(|o| o.kind).collect()
}

#[tokio::test]
async fn batches_respect_max_batch_and_group_by_object_and_operation() {
    let sys = Scripted::new(100);
    let w = writer(&sys, NotFoundPolicy::Skip);
    let mut writes: Vec<ExternalWrite> = (0..230)
        .map(|i| create("Account", &format!("a{i}"), "Acme", true))
        .collect();
    writes.extend((0..30).map(|i| create("Contact", &format!("c{i}"), "Ann", true)));
    let out = w.write(&writes).await.unwrap();
    assert!(out.iter().all(|o| o.kind == OutcomeKind::Created));
    assert_eq!(sys.count(), 260);
    assert_eq!(
        sys.calls(),
        [
            ("Account".to_string(), 100),
            ("Account".to_string(), 100),
            ("Account".to_string(), 30),
            ("Contact".to_string(), 30)
        ]
    );

    let smaller = ExternalWriter::new(
        "crm",
        sys.clone(),
        ExternalWriterConfig {
            max_batch: Some(40),
            ..Default::default()
        },
    );
    assert_eq!(smaller.max_batch(), 40);
    sys.calls.lock().unwrap().clear();
    let ups: Vec<ExternalWrite> = out[..100]
        .iter()
        .enumerate()
        .map(|(i, o)| {
            update(
                &format!("a{i}"),
                o.external_id.as_deref().unwrap(),
                "Acme 2",
            )
        })
        .collect();
    let out = smaller.write(&ups).await.unwrap();
    assert!(out.iter().all(|o| o.kind == OutcomeKind::Updated));
    let sizes: Vec<usize> = sys.calls().iter().map(|c| c.1).collect();
    assert_eq!(sizes, [40, 40, 20]);
}

#[tokio::test]
async fn the_calls_of_one_group_are_in_flight_together() {
    let sys = Scripted::new(50);
    *sys.delay.lock().unwrap() = Duration::from_millis(100);
    let w = writer(&sys, NotFoundPolicy::Skip);
    let writes: Vec<ExternalWrite> = (0..300)
        .map(|i| create("Account", &format!("a{i}"), "Acme", true))
        .collect();
    let started = Instant::now();
    let out = w.write(&writes).await.unwrap();
    let took = started.elapsed();
    assert!(out.iter().all(|o| o.kind == OutcomeKind::Created));
    assert_eq!(sys.count(), 300);
    assert_eq!(sys.calls().len(), 6);
    assert_eq!(sys.most_in_flight.load(Ordering::SeqCst), 4);
    assert!(
        took < Duration::from_millis(450),
        "six 100 ms calls, four at a time, took {took:?}"
    );
    // Each outcome names the record its own write made.
    for (o, wr) in out.iter().zip(&writes) {
        let made = sys.get(o.external_id.as_deref().unwrap()).unwrap();
        assert_eq!(made["Alguna_Id__c"], json!(wr.billing_id));
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_nothing_is_created_twice() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    sys.fail_next([transient(), transient()]);
    let writes: Vec<ExternalWrite> = (0..10)
        .map(|i| create("Account", &format!("a{i}"), "Acme", true))
        .collect();
    let out = w.write(&writes).await.unwrap();
    assert!(out.iter().all(|o| o.kind == OutcomeKind::Created));
    assert_eq!(sys.calls().len(), 3, "two failures, then success");
    assert_eq!(sys.count(), 10);
}

#[tokio::test]
async fn the_vendor_wait_is_a_floor_for_the_backoff() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    sys.fail_next([rate_limited(Duration::from_millis(300))]);
    let started = Instant::now();
    let out = w
        .write(&[create("Account", "a1", "Acme", true)])
        .await
        .unwrap();
    assert_eq!(kinds(&out), [OutcomeKind::Created]);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_rate_limit_storm_past_the_policy_interrupts_without_losing_writes() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    sys.fail_next((0..50).map(|_| rate_limited(Duration::from_millis(10))));
    let writes: Vec<ExternalWrite> = (0..5)
        .map(|i| create("Account", &format!("a{i}"), "Acme", true))
        .collect();
    let err = w
        .write(&writes)
        .await
        .expect_err("storm outlasts six attempts");
    match &err {
        DeliveryError::Interrupted {
            reason,
            pending,
            outcomes,
            source,
            ..
        } => {
            assert_eq!(*reason, Interruption::RetriesExhausted);
            assert_eq!(*pending, 5);
            assert!(outcomes.iter().all(Option::is_none));
            assert_eq!(source.class, ErrorClass::RateLimit);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(sys.calls().len(), 6);
    assert_eq!(*w.status().borrow(), IntegrationStatus::Active);
    sys.failures.lock().unwrap().clear();
    let out = w.write(&writes).await.unwrap();
    assert!(out.iter().all(|o| o.kind == OutcomeKind::Created));
    assert_eq!(sys.count(), 5);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_and_the_batch_retried() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    let first = w
        .write(&[create("Account", "a1", "Acme", true)])
        .await
        .unwrap();
    sys.token_expired.store(true, Ordering::SeqCst);
    let out = w
        .write(&[
            update("a1", first[0].external_id.as_deref().unwrap(), "Acme 2"),
            create("Account", "a2", "Globex", true),
        ])
        .await
        .unwrap();
    assert_eq!(kinds(&out), [OutcomeKind::Updated, OutcomeKind::Created]);
    assert_eq!(sys.authentications.load(Ordering::SeqCst), 1);
    assert_eq!(*w.status().borrow(), IntegrationStatus::Active);
}

#[tokio::test]
async fn refused_credentials_pause_the_integration_until_they_work_again() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    let mut status = w.status();
    sys.token_expired.store(true, Ordering::SeqCst);
    sys.refuse_auth.store(true, Ordering::SeqCst);
    let writes = [
        create("Account", "a1", "Acme", true),
        create("Account", "a2", "Globex", true),
    ];
    let err = w.write(&writes).await.expect_err("paused");
    assert!(
        matches!(
            &err,
            DeliveryError::Interrupted {
                reason: Interruption::AuthExpired,
                pending: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("retry them later"), "{err}");
    status.changed().await.unwrap();
    assert_eq!(status.borrow().as_str(), "auth_expired");

    let again = w.write(&writes).await.expect_err("still paused");
    assert!(matches!(
        again,
        DeliveryError::Interrupted {
            reason: Interruption::AuthExpired,
            ..
        }
    ));
    assert_eq!(sys.count(), 0);

    sys.refuse_auth.store(false, Ordering::SeqCst);
    let out = w.write(&writes).await.unwrap();
    assert_eq!(kinds(&out), [OutcomeKind::Created, OutcomeKind::Created]);
    assert_eq!(*w.status().borrow(), IntegrationStatus::Active);
    assert_eq!(sys.count(), 2);
}

/// Statuses saved, in order, as (integration, status, message).
#[derive(Default)]
struct SavedStatuses(Mutex<Vec<(String, String, Option<String>)>>);

#[async_trait]
impl StatusStore for SavedStatuses {
    async fn save(
        &self,
        integration: &str,
        status: &IntegrationStatus,
    ) -> Result<(), tokio_postgres::Error> {
        let message = match status {
            IntegrationStatus::Active => None,
            IntegrationStatus::AuthExpired { message, .. } => Some(message.clone()),
        };
        self.0
            .lock()
            .unwrap()
            .push((integration.into(), status.as_str().into(), message));
        Ok(())
    }
}

#[tokio::test]
async fn the_status_is_saved_when_it_changes_and_once_at_the_first_write() {
    let sys = Scripted::new(200);
    let saved = Arc::new(SavedStatuses::default());
    let w = writer(&sys, NotFoundPolicy::Skip).with_status_store(saved.clone());
    let writes = [create("Account", "a1", "Acme", true)];
    w.write(&writes).await.unwrap();
    w.write(&writes).await.unwrap();
    assert_eq!(
        *saved.0.lock().unwrap(),
        [("crm".to_string(), "active".to_string(), None)],
        "an earlier process's status is replaced once, not at every write"
    );

    sys.token_expired.store(true, Ordering::SeqCst);
    sys.refuse_auth.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        w.write(&writes).await.expect_err("paused");
    }
    sys.refuse_auth.store(false, Ordering::SeqCst);
    w.write(&writes).await.unwrap();
    w.write(&writes).await.unwrap();
    let expired = Some("invalid_grant: expired access/refresh token".to_string());
    assert_eq!(
        *saved.0.lock().unwrap(),
        [
            ("crm".to_string(), "active".to_string(), None),
            ("crm".to_string(), "auth_expired".to_string(), expired),
            ("crm".to_string(), "active".to_string(), None),
        ]
    );
}

#[tokio::test]
async fn on_not_found_is_chosen_per_entity() {
    let sys = Scripted::new(200);
    let w = ExternalWriter::new(
        "crm",
        sys.clone(),
        ExternalWriterConfig {
            retry: fast_retries(),
            not_found_by_entity: HashMap::from([("accounts".to_string(), NotFoundPolicy::Create)]),
            ..Default::default()
        },
    );
    let contact = ExternalWrite {
        entity: "contacts".into(),
        object: "Contact".into(),
        ..update("c1", "gone-contact", "Ann")
    };
    let out = w
        .write(&[update("a1", "gone-account", "Acme"), contact])
        .await
        .unwrap();
    assert_eq!(kinds(&out), [OutcomeKind::Created, OutcomeKind::Skipped]);
    assert_eq!(out[1].external_id.as_deref(), Some("gone-contact"));
    assert_eq!(sys.count(), 1);
}

#[tokio::test]
async fn a_validation_failure_stays_with_its_record() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    let writes = [
        create("Account", "a1", "Acme", true),
        create("Account", "a2", "INVALID", true),
        create("Account", "a3", "Initech", true),
    ];
    let out = w.write(&writes).await.unwrap();
    assert_eq!(
        kinds(&out),
        [
            OutcomeKind::Created,
            OutcomeKind::Failed,
            OutcomeKind::Created
        ]
    );
    assert_eq!(
        out[1].error,
        Some((
            ErrorClass::FieldValidation,
            "Name: value not allowed".into()
        ))
    );
    assert_eq!(
        sys.calls().len(),
        1,
        "per-record results need no second call"
    );

    sys.all_or_none.store(true, Ordering::SeqCst);
    sys.calls.lock().unwrap().clear();
    let writes: Vec<ExternalWrite> = (0..8)
        .map(|i| {
            create(
                "Account",
                &format!("b{i}"),
                if i == 5 { "INVALID" } else { "Ok" },
                true,
            )
        })
        .collect();
    let out = w.write(&writes).await.unwrap();
    let failed: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == OutcomeKind::Failed)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        failed,
        [5],
        "a batch refused as a whole is split to the record at fault"
    );
    assert_eq!(
        out[5].error.as_ref().unwrap().0,
        ErrorClass::FieldValidation
    );
    assert!(
        sys.calls().len() <= 7,
        "bisection, not one call per record: {:?}",
        sys.calls()
    );
}

#[tokio::test]
async fn replaying_creates_creates_once() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    let by_field: Vec<ExternalWrite> = (0..5)
        .map(|i| create("Account", &format!("a{i}"), "Acme", true))
        .collect();
    let first = w.write(&by_field).await.unwrap();
    let second = w.write(&by_field).await.unwrap();
    assert!(first.iter().all(|o| o.kind == OutcomeKind::Created));
    assert!(second.iter().all(|o| o.kind == OutcomeKind::Updated));
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.external_id, b.external_id);
    }
    assert_eq!(sys.count(), 5);
    assert_eq!(
        sys.get(first[0].external_id.as_deref().unwrap()).unwrap()["Alguna_Id__c"],
        "a0"
    );

    let plain: Vec<ExternalWrite> = (0..5)
        .map(|i| create("Contact", &format!("c{i}"), "Ann", false))
        .collect();
    let first = w.write(&plain).await.unwrap();
    let second = w.write(&plain).await.unwrap();
    assert!(first.iter().all(|o| o.kind == OutcomeKind::Created));
    assert!(second.iter().all(|o| o.kind == OutcomeKind::Skipped));
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.external_id, b.external_id);
    }
    assert_eq!(sys.count(), 10);
}

#[tokio::test]
async fn a_vanished_record_is_skipped_or_created_again_per_config() {
    let sys = Scripted::new(200);
    let skip = writer(&sys, NotFoundPolicy::Skip);
    let out = skip
        .write(&[
            update("a1", "gone", "Acme"),
            ExternalWrite {
                op: ExternalWriteOp::Delete {
                    external_id: "gone-too".into(),
                },
                ..update("a2", "x", "y")
            },
        ])
        .await
        .unwrap();
    assert_eq!(kinds(&out), [OutcomeKind::Skipped, OutcomeKind::Skipped]);
    assert_eq!(sys.count(), 0);

    let recreate = writer(&sys, NotFoundPolicy::Create);
    let out = recreate
        .write(&[
            update("a1", "gone", "Acme"),
            update("a2", "gone2", "INVALID"),
        ])
        .await
        .unwrap();
    assert_eq!(kinds(&out), [OutcomeKind::Created, OutcomeKind::Failed]);
    let id = out[0].external_id.clone().unwrap();
    assert_eq!(sys.get(&id).unwrap()["Alguna_Id__c"], "a1");
    let again = recreate
        .write(&[update("a1", "gone", "Acme")])
        .await
        .unwrap();
    assert_eq!(
        again[0].kind,
        OutcomeKind::Updated,
        "found by its billing id"
    );
    assert_eq!(again[0].external_id.as_deref(), Some(id.as_str()));
    assert_eq!(sys.count(), 1);
}

#[tokio::test]
async fn successive_writes_of_a_record_fold_into_one_and_unlike_ones_keep_their_order() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    let made = w
        .write(&[
            create("Account", "a1", "Acme", true),
            create("Account", "a2", "Globex", true),
        ])
        .await
        .unwrap();
    let (id1, id2) = (
        made[0].external_id.clone().unwrap(),
        made[1].external_id.clone().unwrap(),
    );
    let before = sys.calls().len();
    let out = w
        .write(&[
            update("a1", &id1, "v1"),
            update("a1", &id1, "v2"),
            update("a2", &id2, "w1"),
            update("a1", &id1, "v3"),
        ])
        .await
        .unwrap();
    assert!(out.iter().all(|o| o.kind == OutcomeKind::Updated));
    assert_eq!(sys.get(&id1).unwrap()["Name"], "v3");
    assert_eq!(sys.get(&id2).unwrap()["Name"], "w1");
    let sizes: Vec<usize> = sys.calls()[before..].iter().map(|c| c.1).collect();
    assert_eq!(
        sizes,
        [2],
        "a1's three updates as one, with a2's, in one call"
    );

    // A delete between updates keeps them apart, in input order.
    let before = sys.calls().len();
    let out = w
        .write(&[
            update("a1", &id1, "v4"),
            ExternalWrite {
                op: ExternalWriteOp::Delete {
                    external_id: id1.clone(),
                },
                ..update("a1", &id1, "gone")
            },
            update("a2", &id2, "w2"),
        ])
        .await
        .unwrap();
    assert_eq!(out[1].kind, OutcomeKind::Deleted);
    let sizes: Vec<usize> = sys.calls()[before..].iter().map(|c| c.1).collect();
    assert_eq!(sizes, [2, 1], "a1's update with a2's, then a1's delete");
}

#[tokio::test]
async fn a_write_for_another_integration_is_refused_before_sending() {
    let sys = Scripted::new(200);
    let w = writer(&sys, NotFoundPolicy::Skip);
    let mut other = create("Account", "a1", "Acme", true);
    other.integration = "erp".into();
    let err = w
        .write(&[create("Account", "a0", "Acme", true), other])
        .await
        .expect_err("wrong integration");
    assert!(matches!(
        err,
        DeliveryError::WrongIntegration { index: 1, .. }
    ));
    assert!(sys.calls().is_empty());
}
