//! Conflict resolution end to end: real Postgres (captured by logical
//! replication), real Kafka, the Salesforce simulator, the whole pipeline.
//!
//! A conflict needs the same field changed on both sides before extsync
//! sees either change. Each test links one billing row to its Account,
//! stops the processor loop (capture, ingest and the router keep running),
//! edits both sides, waits until both edits are in Kafka and starts the
//! processor loop again, which then meets both changes at once. The tests
//! check the values on both sides and what was recorded: rows in
//! `extsync.conflicts` and `sync.conflict` events on `<prefix>.sync-events`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use extsync::connectors::salesforce::{SalesforceConnector, SalesforceSettings};
use extsync::connectors::{Connector, Credentials, Cursor, ExternalRecord, RequestBudget, WriteOp};
use extsync::processor::service::Loops;
use extsync::simulators::RunningSimulator;
use extsync::simulators::salesforce::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN, SalesforceSim, SalesforceSimConfig,
};
use rdkafka::Message;
use rdkafka::consumer::BaseConsumer;
use serde_json::{Value, json};
use support::{TestDb, TestKafka, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One pipeline at a time: their timing stays independent on a small machine.
static PIPELINE_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a pipeline gets to reach an expected state.
const SETTLE: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
CREATE TABLE accounts (
    id              bigint PRIMARY KEY,
    name            text NOT NULL,
    email           text,
    billing_address jsonb NOT NULL DEFAULT '{}'::jsonb,
    mrr             numeric(12, 2) NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);";

/// The billing id of the record every test edits.
const ID: i64 = 1;

/// A topic read from its start, kept open so each look reads only what is new.
struct Tail {
    consumer: BaseConsumer,
    seen: Vec<Value>,
}

impl Tail {
    fn open(kafka: &TestKafka, topic: &str) -> Tail {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        Tail {
            consumer: kafka.reader_from_start(topic, deadline),
            seen: Vec::new(),
        }
    }

    /// Every message so far, as JSON.
    fn read(&mut self) -> &[Value] {
        tokio::task::block_in_place(|| {
            while let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
                let m = m.expect("reading Kafka");
                if let Some(p) = m.payload() {
                    self.seen
                        .push(serde_json::from_slice(p).unwrap_or(Value::Null));
                }
            }
        });
        &self.seen
    }

    /// Whether a message holding `text` (as a JSON string value) arrived.
    fn holds(&mut self, text: &str) -> bool {
        let needle = json!(text).to_string();
        self.read().iter().any(|v| v.to_string().contains(&needle))
    }
}

/// A conflict in `extsync.conflicts`.
#[derive(Debug, Clone, PartialEq)]
struct ConflictRow {
    field: String,
    external_field: Option<String>,
    strategy: String,
    winner: String,
    alguna_value: Value,
    external_value: Value,
    base_alguna: Option<Value>,
    base_external: Option<Value>,
    external_id: Option<String>,
    resolved: bool,
    resolution: Option<String>,
    changed_at_known: bool,
}

/// One billing row linked to its Account, with the pipeline running and
/// the processor loop startable and stoppable on its own.
struct Harness {
    db: TestDb,
    /// The test's topics live as long as the harness.
    _kafka: TestKafka,
    _running: RunningSimulator,
    base_url: String,
    /// Stops capture, ingest and the router.
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    processor: support::PausableProcessor,
    router: Option<(CancellationToken, JoinHandle<()>)>,
    /// The Account linked to the billing row.
    account_id: String,
    cdc: Tail,
    routed: Tail,
    events: Tail,
}

impl Harness {
    /// Starts the pipeline with `strategies` as the accounts'
    /// `conflictResolution`, inserts the billing row (name `Acme`, email
    /// `a@acme.test`) and waits until it is linked and in sync.
    async fn start(strategies: &str) -> Harness {
        support::salesforce_credentials_env();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("EXTSYNC_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let db = TestDb::create().await;
        db.client().await.batch_execute(SCHEMA).await.unwrap();
        let kafka = TestKafka::new();
        let sim = SalesforceSim::new(SalesforceSimConfig::default()).unwrap();
        let running = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let yaml = format!(
            r#"
name: {name}
postgres: {{ url: "{db}", tables: [public.accounts], heartbeatSecs: 1 }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{prefix}" }}
telemetry: {{ metricsAddress: "" }}
ingest: {{ webhookAddress: "", sweepSecs: 1, pollOverlapSecs: 5 }}
integrations:
{salesforce}          - {{ alguna: name, external: Name }}
          - {{ alguna: email, external: Email__c }}
          - {{ alguna: billingAddress.line1, external: BillingStreet, direction: alguna_to_external }}
          - {{ alguna: mrr, external: MRR__c, direction: alguna_to_external, transform: number_to_currency }}
        conflictResolution: {strategies}
"#,
            name = support::unique("c"),
            db = db.url,
            brokers = kafka.brokers,
            prefix = kafka.prefix,
            salesforce = support::salesforce_integration("salesforce", &running.base_url())
        );
        let pipeline = Arc::new(extsync::config::parse_str(&yaml, "conflicts.yaml").unwrap());
        let stop = CancellationToken::new();
        let mut tasks = vec![support::spawn_capture(&pipeline, &stop)];
        let ingest = extsync::ingest::service::start(&pipeline, stop.clone())
            .await
            .unwrap();
        tasks.push(tokio::spawn(ingest.join()));
        let loops = Loops::prepare(&pipeline).await.unwrap();
        let router_stop = stop.child_token();
        let router = Some((router_stop.clone(), loops.spawn_router(router_stop)));
        let topics = extsync::kafka::Topics::new(&kafka.prefix);
        let cdc = Tail::open(&kafka, &topics.cdc("public", "accounts"));
        let routed = Tail::open(
            &kafka,
            &format!(
                "{}.{}",
                kafka.prefix,
                extsync::processor::route::CHANGES_TOPIC
            ),
        );
        let events = Tail::open(&kafka, &topics.sync_events());
        let mut h = Harness {
            db,
            _kafka: kafka,
            base_url: running.base_url(),
            _running: running,
            stop,
            tasks,
            processor: support::PausableProcessor::new(loops),
            router,
            account_id: String::new(),
            cdc,
            routed,
            events,
        };
        h.resume();

        h.sql(&format!(
            "INSERT INTO accounts (id, name, email, billing_address, mrr)
             VALUES ({ID}, 'Acme', 'a@acme.test', '{{\"line1\": \"1 Main St\"}}', 100)"
        ))
        .await;
        eventually("the Account is created", SETTLE, || async {
            h.account().await.is_some()
        })
        .await;
        h.account_id = h.account().await.unwrap().id;
        // Linked, and the Account's own change event seen: nothing about
        // the record is left in flight when the processor stops.
        eventually("the Account's creation is seen", SETTLE, || async {
            h.db.client()
                .await
                .query_opt(
                    "SELECT 1 FROM extsync.records WHERE billing_id = $1
                        AND external_id IS NOT NULL AND external_changed_at IS NOT NULL",
                    &[&ID.to_string()],
                )
                .await
                .unwrap()
                .is_some()
        })
        .await;
        h
    }

    fn resume(&mut self) {
        self.processor.resume();
    }

    async fn pause(&mut self) {
        self.processor.pause().await;
    }

    /// Stops the router: external changes stay on their way to the processor.
    async fn pause_router(&mut self) {
        let (stop, task) = self.router.take().expect("the router runs");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the router stops")
            .unwrap();
    }

    fn resume_router(&mut self) {
        let stop = self.stop.child_token();
        let task = self.processor.loops().spawn_router(stop.clone());
        self.router = Some((stop, task));
    }

    async fn sql(&self, sql: &str) {
        self.db.client().await.batch_execute(sql).await.unwrap();
    }

    /// A billing-side edit of the record, waiting until capture has put it in Kafka.
    async fn billing_edit(&mut self, set: &str, marker: &str) {
        self.sql(&format!("UPDATE accounts SET {set} WHERE id = {ID}"))
            .await;
        let cdc = &mut self.cdc;
        let wait = tokio::time::Instant::now() + SETTLE;
        while !cdc.holds(marker) {
            assert!(
                tokio::time::Instant::now() < wait,
                "the billing edit ({marker}) never reached Kafka"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A person's edit of the Account in Salesforce, waiting until ingest
    /// and the router have put it where the processor reads. `marker` is a
    /// value it sets.
    async fn salesforce_edit(&mut self, fields: Value, marker: &str) {
        self.person()
            .write(
                "Account",
                WriteOp::Update {
                    id: self.account_id.clone(),
                    fields: fields.as_object().unwrap().clone(),
                },
            )
            .await
            .unwrap();
        let routed = &mut self.routed;
        let wait = tokio::time::Instant::now() + SETTLE;
        while !routed.holds(marker) {
            assert!(
                tokio::time::Instant::now() < wait,
                "the Salesforce edit ({marker}) never reached the processor's topic"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A person working in Salesforce (not extsync).
    fn person(&self) -> SalesforceConnector {
        let creds = Credentials {
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: DEMO_CLIENT_SECRET.into(),
            refresh_token: Some(DEMO_REFRESH_TOKEN.into()),
            webhook_secret: None,
        };
        let mut s = SalesforceSettings::new(&self.base_url, creds);
        s.budget = RequestBudget::unlimited();
        s.call_client = "person".into();
        SalesforceConnector::new(s)
    }

    /// The Account carrying the record's billing id.
    async fn account(&self) -> Option<ExternalRecord> {
        let c = self.person();
        let mut page = None;
        loop {
            let p = c
                .list_changes("Account", &Cursor::start(), page.as_deref())
                .await
                .unwrap();
            if let Some(a) = p.records.into_iter().find(|r| {
                !r.deleted && r.fields.get("Alguna_Id__c") == Some(&json!(ID.to_string()))
            }) {
                return Some(a);
            }
            match p.next_page {
                Some(n) => page = Some(n),
                None => return None,
            }
        }
    }

    /// `column` of the billing row, as JSON.
    async fn billing(&self, column: &str) -> Value {
        self.db
            .client()
            .await
            .query_one(
                &format!("SELECT to_jsonb({column}) FROM accounts WHERE id = $1"),
                &[&ID],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `field` of the Account.
    async fn salesforce(&self, field: &str) -> Value {
        self.account().await.expect("the Account exists").fields[field].clone()
    }

    /// Waits until the billing `column` and the Account `field` hold `want`
    /// and `want_external`.
    async fn until_both(&self, column: &str, want: Value, field: &str, want_external: Value) {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let (b, s) = (self.billing(column).await, self.salesforce(field).await);
            if b == want && s == want_external {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "billing {column} = {b}, Salesforce {field} = {s}; expected {want} and {want_external}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the billing `column` and the Account `field` both hold `want`.
    async fn until_synced(&self, column: &str, field: &str, want: Value) {
        self.until_both(column, want.clone(), field, want).await;
    }

    /// The record's rows in `extsync.conflicts`, oldest first.
    async fn conflict_rows(&self) -> Vec<ConflictRow> {
        self.db
            .client()
            .await
            .query(
                "SELECT field, external_field, strategy, winner, alguna_value, external_value,
                        base_alguna, base_external, external_id, resolved_at IS NOT NULL, resolution,
                        alguna_changed_at IS NOT NULL AND external_changed_at IS NOT NULL
                   FROM extsync.conflicts
                  WHERE integration = 'salesforce' AND entity = 'accounts' AND billing_id = $1
                  ORDER BY id",
                &[&ID.to_string()],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| ConflictRow {
                field: r.get(0),
                external_field: r.get(1),
                strategy: r.get(2),
                winner: r.get(3),
                alguna_value: r.get(4),
                external_value: r.get(5),
                base_alguna: r.get(6),
                base_external: r.get(7),
                external_id: r.get(8),
                resolved: r.get(9),
                resolution: r.get(10),
                changed_at_known: r.get(11),
            })
            .collect()
    }

    /// Waits until the record has `n` conflict rows and returns them.
    async fn until_conflict_rows(&self, n: usize) -> Vec<ConflictRow> {
        eventually(&format!("{n} conflict rows"), SETTLE, || async {
            self.conflict_rows().await.len() >= n
        })
        .await;
        self.conflict_rows().await
    }

    /// Sync events about the record of type `kind` (`sync.conflict`, …).
    fn events_of(&mut self, kind: &str) -> Vec<Value> {
        self.events
            .read()
            .iter()
            .filter(|e| e["type"] == json!(kind) && e["billing_id"] == json!(ID.to_string()))
            .cloned()
            .collect()
    }

    /// Waits until `n` `sync.conflict` events about the record were
    /// published and returns them.
    async fn until_conflict_events(&mut self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let got = self.events_of("sync.conflict");
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} sync.conflict events: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits `quiet`, then checks that extsync made no new writes to
    /// Salesforce and recorded no new conflict meanwhile.
    async fn stays_quiet(&mut self, quiet: Duration) {
        let before = (self.extsync_writes().await, self.conflict_rows().await);
        tokio::time::sleep(quiet).await;
        let after = (self.extsync_writes().await, self.conflict_rows().await);
        assert_eq!(after, before, "extsync kept writing or recording conflicts");
    }

    async fn extsync_writes(&self) -> usize {
        support::simulator_writes(&self.base_url, "")
            .await
            .iter()
            .filter(|w| w["client"] == json!("extsync"))
            .count()
    }

    async fn stop(mut self) {
        if self.processor.is_running() {
            self.pause().await;
        }
        self.stop.cancel();
        if let Some((_, router)) = self.router {
            let _ = tokio::time::timeout(Duration::from_secs(20), router).await;
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        self.db.drop_idle_slots().await;
    }
}

/// The name edited on both sides while the processor is stopped, the
/// billing edit first or the Salesforce edit first: `(billing, Salesforce)`.
async fn name_edited_on_both_sides(h: &mut Harness, billing_first: bool) -> (Value, Value) {
    let (b, s) = ("Acme Billing", "Acme CRM");
    h.pause().await;
    if billing_first {
        h.billing_edit(&format!("name = '{b}'"), b).await;
        // Well apart, so `latest_wins` has a clear later edit.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        h.salesforce_edit(json!({"Name": s}), s).await;
    } else {
        h.salesforce_edit(json!({"Name": s}), s).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        h.billing_edit(&format!("name = '{b}'"), b).await;
    }
    h.resume();
    (json!(b), json!(s))
}

/// Checks the one conflict recorded for `name`, in the table and as a
/// sync event: its strategy, winner, both values and the base.
async fn one_name_conflict(h: &mut Harness, strategy: &str, winner: &str) {
    let rows = h.until_conflict_rows(1).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    assert_eq!(
        (r.field.as_str(), r.external_field.as_deref()),
        ("name", Some("Name"))
    );
    assert_eq!((r.strategy.as_str(), r.winner.as_str()), (strategy, winner));
    assert_eq!(r.alguna_value, json!("Acme Billing"));
    assert_eq!(r.external_value, json!("Acme CRM"));
    assert_eq!(r.base_alguna, Some(json!("Acme")));
    assert_eq!(r.base_external, Some(json!("Acme")));
    assert_eq!(r.external_id.as_deref(), Some(h.account_id.as_str()));
    assert!(r.changed_at_known, "both change times are recorded: {r:?}");
    let events = h.until_conflict_events(1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["field"], json!("name"));
    assert_eq!(e["strategy"], json!(strategy));
    assert_eq!(e["winner"], json!(winner));
    assert_eq!(e["alguna_value"], json!("Acme Billing"));
    assert_eq!(e["external_value"], json!("Acme CRM"));
    assert_eq!(e["base_alguna"], json!("Acme"));
    assert_eq!(e["base_external"], json!("Acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alguna_wins_by_default() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut h = Harness::start("{ default: alguna_wins }").await;
    let (billing, _) = name_edited_on_both_sides(&mut h, false).await;
    h.until_synced("name", "Name", billing).await;
    one_name_conflict(&mut h, "alguna_wins", "alguna").await;
    h.stays_quiet(Duration::from_secs(3)).await;
    assert_eq!(h.billing("name").await, json!("Acme Billing"));
    assert_eq!(h.salesforce("Name").await, json!("Acme Billing"));
    h.stop().await;
}

/// A Salesforce edit that extsync has not seen yet (its change is still on
/// the way) is read back before a billing edit of the same field would be
/// written over it: a conflict, settled by the strategy, both sides agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_edit_not_seen_yet_is_not_written_over() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut h = Harness::start("{ default: external_wins }").await;
    h.pause_router().await;
    h.person()
        .write(
            "Account",
            WriteOp::Update {
                id: h.account_id.clone(),
                fields: json!({"Name": "Acme CRM"}).as_object().unwrap().clone(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.sql(&format!(
        "UPDATE accounts SET name = 'Acme Billing' WHERE id = {ID}"
    ))
    .await;
    h.until_synced("name", "Name", json!("Acme CRM")).await;
    one_name_conflict(&mut h, "external_wins", "external").await;
    // The change itself, arriving now, is known already.
    h.resume_router();
    h.stays_quiet(Duration::from_secs(4)).await;
    assert_eq!(h.billing("name").await, json!("Acme CRM"));
    assert_eq!(h.salesforce("Name").await, json!("Acme CRM"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_wins_by_default() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut h = Harness::start("{ default: external_wins }").await;
    let (_, crm) = name_edited_on_both_sides(&mut h, true).await;
    h.until_synced("name", "Name", crm).await;
    one_name_conflict(&mut h, "external_wins", "external").await;
    h.stays_quiet(Duration::from_secs(3)).await;
    assert_eq!(h.billing("name").await, json!("Acme CRM"));
    assert_eq!(h.salesforce("Name").await, json!("Acme CRM"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_wins_gives_the_later_billing_edit() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut h = Harness::start("{ default: latest_wins }").await;
    // Salesforce first, billing later.
    let (billing, _) = name_edited_on_both_sides(&mut h, false).await;
    h.until_synced("name", "Name", billing).await;
    one_name_conflict(&mut h, "latest_wins", "alguna").await;
    h.stays_quiet(Duration::from_secs(3)).await;
    assert_eq!(h.salesforce("Name").await, json!("Acme Billing"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_wins_gives_the_later_salesforce_edit() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut h = Harness::start("{ default: latest_wins }").await;
    // Billing first, Salesforce later.
    let (_, crm) = name_edited_on_both_sides(&mut h, true).await;
    h.until_synced("name", "Name", crm).await;
    one_name_conflict(&mut h, "latest_wins", "external").await;
    h.stays_quiet(Duration::from_secs(3)).await;
    assert_eq!(h.billing("name").await, json!("Acme CRM"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_field_strategy_overrides_the_default() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut h =
        Harness::start("{ default: alguna_wins, perField: { email: external_wins } }").await;
    h.pause().await;
    h.billing_edit(
        "name = 'Acme Billing', email = 'billing@acme.test'",
        "billing@acme.test",
    )
    .await;
    h.salesforce_edit(
        json!({"Name": "Acme CRM", "Email__c": "crm@acme.test"}),
        "crm@acme.test",
    )
    .await;
    h.resume();
    h.until_synced("name", "Name", json!("Acme Billing")).await;
    h.until_synced("email", "Email__c", json!("crm@acme.test"))
        .await;
    let rows = h.until_conflict_rows(2).await;
    let by_field = |f: &str| {
        rows.iter()
            .find(|r| r.field == f)
            .unwrap_or_else(|| panic!("no conflict on {f}: {rows:#?}"))
    };
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let (name, email) = (by_field("name"), by_field("email"));
    assert_eq!(
        (name.strategy.as_str(), name.winner.as_str()),
        ("alguna_wins", "alguna")
    );
    assert_eq!(
        (email.strategy.as_str(), email.winner.as_str()),
        ("external_wins", "external")
    );
    assert_eq!(
        (&email.alguna_value, &email.external_value),
        (&json!("billing@acme.test"), &json!("crm@acme.test"))
    );
    assert_eq!(email.base_alguna, Some(json!("a@acme.test")));
    let events = h.until_conflict_events(2).await;
    let mut winners: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_string(),
                e["strategy"].as_str().unwrap().to_string(),
                e["winner"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    winners.sort();
    assert_eq!(
        winners,
        [
            ("email".into(), "external_wins".into(), "external".into()),
            ("name".into(), "alguna_wins".into(), "alguna".into()),
        ]
    );
    h.stays_quiet(Duration::from_secs(3)).await;
    assert_eq!(h.billing("email").await, json!("crm@acme.test"));
    assert_eq!(h.salesforce("Name").await, json!("Acme Billing"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_different_fields_on_each_side_both_survive() {
    let _slot = PIPELINE_SLOT.lock().await;
    // Any strategy would lose one of the two edits if the merge were two-way.
    let mut h = Harness::start("{ default: external_wins }").await;
    h.pause().await;
    h.billing_edit("name = 'Acme Billing'", "Acme Billing")
        .await;
    h.salesforce_edit(json!({"Email__c": "crm@acme.test"}), "crm@acme.test")
        .await;
    h.resume();
    h.until_synced("name", "Name", json!("Acme Billing")).await;
    h.until_synced("email", "Email__c", json!("crm@acme.test"))
        .await;
    // Each edit went out as a write to the other side.
    let wrote = |flow: &'static str, field: &'static str| {
        let flow = json!(flow);
        move |events: &[Value]| {
            events.iter().any(|e| {
                e["flow"] == flow
                    && e["fields"]
                        .as_array()
                        .is_some_and(|f| f.contains(&json!(field)))
            })
        }
    };
    let to_salesforce = wrote("to_external", "Name");
    let to_billing = wrote("to_alguna", "email");
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let records = h.events_of("sync.record");
        if to_salesforce(&records) && to_billing(&records) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sync.record events for both writes: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    h.stays_quiet(Duration::from_secs(3)).await;
    assert!(h.conflict_rows().await.is_empty(), "no field conflicted");
    assert!(h.events_of("sync.conflict").is_empty());
    assert_eq!(h.billing("name").await, json!("Acme Billing"));
    assert_eq!(h.billing("email").await, json!("crm@acme.test"));
    assert_eq!(h.salesforce("Name").await, json!("Acme Billing"));
    assert_eq!(h.salesforce("Email__c").await, json!("crm@acme.test"));
    h.stop().await;
}

/// The name parked by a `manual` conflict while the email (changed in
/// Salesforce) and the MRR (changed in billing) still sync.
async fn manual_conflict_on_name(h: &mut Harness) {
    h.pause().await;
    h.billing_edit("name = 'Acme Billing', mrr = 250", "Acme Billing")
        .await;
    h.salesforce_edit(
        json!({"Name": "Acme CRM", "Email__c": "crm@acme.test"}),
        "Acme CRM",
    )
    .await;
    h.resume();
    h.until_both(
        "email",
        json!("crm@acme.test"),
        "Email__c",
        json!("crm@acme.test"),
    )
    .await;
    h.until_both("mrr", json!(250.0), "MRR__c", json!(250.0))
        .await;
    one_name_conflict(h, "manual", "manual").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_parks_the_conflicting_field_and_syncs_the_rest() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut h = Harness::start("{ default: latest_wins, perField: { name: manual } }").await;
    manual_conflict_on_name(&mut h).await;
    h.stays_quiet(Duration::from_secs(3)).await;
    // Neither side was overwritten.
    assert_eq!(h.billing("name").await, json!("Acme Billing"));
    assert_eq!(h.salesforce("Name").await, json!("Acme CRM"));
    let rows = h.conflict_rows().await;
    assert!(!rows[0].resolved, "the conflict waits for a person");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_manual_conflict_is_recorded_once_until_its_values_change_and_settles_when_they_agree()
 {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut h = Harness::start("{ default: latest_wins, perField: { name: manual } }").await;
    manual_conflict_on_name(&mut h).await;

    // Later changes to other fields, on both sides, sync without recording
    // the parked conflict again.
    h.sql(&format!(
        "UPDATE accounts SET email = 'again@acme.test' WHERE id = {ID}"
    ))
    .await;
    h.until_synced("email", "Email__c", json!("again@acme.test"))
        .await;
    h.person()
        .write(
            "Account",
            WriteOp::Update {
                id: h.account_id.clone(),
                fields: json!({"Email__c": "later@acme.test"})
                    .as_object()
                    .unwrap()
                    .clone(),
            },
        )
        .await
        .unwrap();
    h.until_synced("email", "Email__c", json!("later@acme.test"))
        .await;
    h.stays_quiet(Duration::from_secs(3)).await;
    let rows = h.conflict_rows().await;
    assert_eq!(
        rows.len(),
        1,
        "the open conflict was recorded again: {rows:#?}"
    );
    assert!(!rows[0].resolved);
    assert_eq!(h.events_of("sync.conflict").len(), 1);
    assert_eq!(h.billing("name").await, json!("Acme Billing"));
    assert_eq!(h.salesforce("Name").await, json!("Acme CRM"));

    // A new value on one side is a new conflict; the old one is closed.
    h.sql(&format!(
        "UPDATE accounts SET name = 'Acme Billing 2' WHERE id = {ID}"
    ))
    .await;
    let rows = h.until_conflict_rows(2).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(
        (rows[1].alguna_value.clone(), rows[1].external_value.clone()),
        (json!("Acme Billing 2"), json!("Acme CRM"))
    );
    assert_eq!(rows[1].base_alguna, Some(json!("Acme")));
    assert!(!rows[1].resolved);
    assert!(rows[0].resolved);
    assert_eq!(rows[0].resolution.as_deref(), Some("superseded"));
    let events = h.until_conflict_events(2).await;
    assert_eq!(events[1]["alguna_value"], json!("Acme Billing 2"));
    assert_eq!(h.salesforce("Name").await, json!("Acme CRM"));

    // Salesforce comes to the billing value: the conflict is settled and
    // the field syncs again.
    h.person()
        .write(
            "Account",
            WriteOp::Update {
                id: h.account_id.clone(),
                fields: json!({"Name": "Acme Billing 2"})
                    .as_object()
                    .unwrap()
                    .clone(),
            },
        )
        .await
        .unwrap();
    eventually("the conflict is settled", SETTLE, || async {
        h.conflict_rows().await.iter().all(|r| r.resolved)
    })
    .await;
    let rows = h.conflict_rows().await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(rows[1].resolution.as_deref(), Some("settled"));
    h.sql(&format!(
        "UPDATE accounts SET name = 'Acme Final' WHERE id = {ID}"
    ))
    .await;
    h.until_synced("name", "Name", json!("Acme Final")).await;
    h.stays_quiet(Duration::from_secs(3)).await;
    assert_eq!(h.conflict_rows().await.len(), 2);
    assert_eq!(h.events_of("sync.conflict").len(), 2);
    h.stop().await;
}
