//! Two-way sync end to end: real Postgres (captured by logical replication),
//! real Kafka, the Salesforce simulator. Billing rows become Accounts,
//! edits flow both ways, extsync's own writes never come back, and both
//! sides editing at once converge without a loop.

mod support;

use std::sync::Arc;
use std::time::Duration;

use extsync::connectors::salesforce::{SalesforceConnector, SalesforceSettings};
use extsync::connectors::{Connector, Credentials, Cursor, RequestBudget, WriteOp};
use extsync::simulators::RunningSimulator;
use extsync::simulators::salesforce::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN, SalesforceSim, SalesforceSimConfig,
};
use serde_json::{Value, json};
use support::{TestDb, TestKafka, eventually};
use tokio_util::sync::CancellationToken;

/// The end-to-end tests each run a whole pipeline; one at a time keeps their
/// timing independent of each other on a small machine.
static PIPELINE_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SCHEMA: &str = "
CREATE TABLE accounts (
    id              bigint PRIMARY KEY,
    name            text NOT NULL,
    email           text,
    billing_address jsonb NOT NULL DEFAULT '{}'::jsonb,
    mrr             numeric(12, 2) NOT NULL DEFAULT 0,
    external_id     text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);";

/// Which stages a test runs inside its own process.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Stages {
    /// None: the test runs `extsync run` as a child process.
    None,
    /// Capture only.
    Capture,
    /// Capture, ingest and the processor.
    All,
    /// Capture and the processor, no ingest: extsync only writes to
    /// Salesforce and learns of a deleted Account from its write alone.
    CaptureAndProcessor,
}

struct Sync {
    db: TestDb,
    kafka: TestKafka,
    pipeline: Arc<extsync::config::Pipeline>,
    _running: RunningSimulator,
    base_url: String,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The pipeline file, for `extsync run` as a child process.
    file: std::path::PathBuf,
}

impl Sync {
    async fn start() -> Sync {
        Self::start_stages(Stages::All).await
    }

    /// Sets up the database, topics and simulator, and starts `stages` in
    /// this process.
    async fn start_stages(stages: Stages) -> Sync {
        Self::start_with(stages, "").await
    }

    /// Like [`Sync::start_stages`], with `entity_settings` (YAML lines at
    /// the accounts entity's indentation) added to the accounts entity.
    async fn start_with(stages: Stages, entity_settings: &str) -> Sync {
        Self::start_on(stages, entity_settings, TestKafka::new()).await
    }

    /// Like [`Sync::start_with`], on the topics of `kafka`.
    async fn start_on(stages: Stages, entity_settings: &str, kafka: TestKafka) -> Sync {
        support::salesforce_credentials_env();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("EXTSYNC_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let db = TestDb::create().await;
        db.client().await.batch_execute(SCHEMA).await.unwrap();
        let mut config = SalesforceSimConfig::default();
        config.validation_rules.push(support::mrr_not_negative());
        let sim = SalesforceSim::new(config).unwrap();
        let running = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let name = support::unique("s");
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
        conflictResolution:
          default: latest_wins
{entity_settings}
"#,
            entity_settings = entity_settings
                .lines()
                .map(|l| format!("        {l}\n"))
                .collect::<String>(),
            db = db.url,
            brokers = kafka.brokers,
            prefix = kafka.prefix,
            salesforce = support::salesforce_integration("salesforce", &running.base_url())
        );
        let pipeline = Arc::new(extsync::config::parse_str(&yaml, "sync.yaml").unwrap());
        let file = std::env::temp_dir().join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        if stages != Stages::None {
            tasks.push(support::spawn_capture(&pipeline, &stop));
        }
        match stages {
            Stages::All => tasks.extend(
                support::start_ingest_and_processor(&pipeline, &stop)
                    .await
                    .0,
            ),
            Stages::CaptureAndProcessor => tasks.extend(
                extsync::processor::service::start(&pipeline, stop.clone())
                    .await
                    .unwrap(),
            ),
            Stages::None | Stages::Capture => {}
        }
        Sync {
            db,
            kafka,
            pipeline,
            base_url: running.base_url(),
            _running: running,
            stop,
            tasks,
            file,
        }
    }

    /// `extsync run` on this test's pipeline, as a child process.
    fn spawn_run(&self) -> std::process::Child {
        self.spawn_run_as("")
    }

    /// `extsync run` as a child process named `instance` (its transactional
    /// ids' suffix; the host name when empty).
    fn spawn_run_as(&self, instance: &str) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_extsync"))
            .arg("run")
            .arg(&self.file)
            .env("EXTSYNC_INSTANCE", instance)
            .env(
                "EXTSYNC_LOG",
                std::env::var("EXTSYNC_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("starting extsync run")
    }

    /// A person working in Salesforce (not extsync: no `client=extsync`).
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

    async fn accounts(&self) -> Vec<extsync::connectors::ExternalRecord> {
        let c = self.person();
        let mut out = Vec::new();
        let mut page = None;
        loop {
            let p = c
                .list_changes("Account", &Cursor::start(), page.as_deref())
                .await
                .unwrap();
            out.extend(p.records);
            match p.next_page {
                Some(n) => page = Some(n),
                None => return out,
            }
        }
    }

    async fn account_for(&self, billing_id: &str) -> Option<extsync::connectors::ExternalRecord> {
        self.accounts()
            .await
            .into_iter()
            .find(|r| !r.deleted && r.fields.get("Alguna_Id__c") == Some(&json!(billing_id)))
    }

    async fn extsync_writes(&self) -> usize {
        support::simulator_writes(&self.base_url, "")
            .await
            .iter()
            .filter(|w| w["client"] == json!("extsync"))
            .count()
    }

    /// Distinct Accounts extsync created or upserted, from the simulator's
    /// write log: every Account it upserts is one its first upsert created.
    async fn extsync_created(&self) -> usize {
        support::simulator_writes(&self.base_url, "?object=Account")
            .await
            .iter()
            .filter(|w| {
                w["client"] == json!("extsync")
                    && (w["op"] == json!("create") || w["op"] == json!("upsert"))
            })
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// `(status, message, error_code)` of the integration in `extsync.integration_status`.
    async fn integration_status(&self) -> Option<(String, Option<String>, Option<String>)> {
        self.db
            .client()
            .await
            .query_opt(
                "SELECT status, message, error_code FROM extsync.integration_status WHERE integration = 'salesforce'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
    }

    /// The `sync.record` events published so far.
    async fn record_events_all(&self) -> Vec<Value> {
        let topic = format!("{}.sync-events", self.kafka.prefix);
        let consumer = self
            .kafka
            .reader_from_start(&topic, std::time::Instant::now() + Duration::from_secs(30));
        tokio::task::spawn_blocking(move || {
            use rdkafka::Message;
            use rdkafka::consumer::Consumer;
            let mut out = Vec::new();
            while let Some(m) = consumer.poll(Duration::from_secs(2)) {
                let ev: Value = serde_json::from_slice(m.unwrap().payload().unwrap()).unwrap();
                if ev["type"] == json!("sync.record") {
                    out.push(ev);
                }
            }
            consumer.unassign().unwrap();
            out
        })
        .await
        .unwrap()
    }

    /// The `sync.record` events published so far for billing id `billing_id`.
    async fn record_events(&self, billing_id: &str) -> Vec<Value> {
        let mut events = self.record_events_all().await;
        events.retain(|ev| ev["billing_id"] == json!(billing_id));
        events
    }

    /// The outcomes (with their reasons) of the `sync.record` events
    /// published so far for billing changes of accounts, by billing id.
    async fn account_outcomes(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
        for ev in self.record_events_all().await {
            if ev["entity"] == json!("accounts") && ev["flow"] == json!("to_external") {
                let reason = ev["reason"].as_str().map(|r| format!(" ({r})"));
                let outcome = format!(
                    "{}{}",
                    ev["outcome"].as_str().unwrap(),
                    reason.unwrap_or_default()
                );
                let id = ev["billing_id"].as_str().unwrap().to_string();
                out.entry(id).or_default().push(outcome);
            }
        }
        out
    }

    async fn billing_name(&self, id: i64) -> String {
        self.db
            .client()
            .await
            .query_one("SELECT name FROM accounts WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0)
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        self.db.drop_idle_slots().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_is_listed_as_failed_until_it_syncs_and_counters_add_up() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start().await;
    let db = s.db.client().await;
    db.batch_execute(
        "INSERT INTO accounts (id, name, mrr) VALUES (1, 'Good', 10), (2, 'Negative', -5)",
    )
    .await
    .unwrap();
    let failed = || async {
        s.db.client()
            .await
            .query(
                "SELECT billing_id, error_type, message, attempts FROM extsync.failed_records",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    eventually(
        "the rejected record is listed",
        Duration::from_secs(60),
        || async { !failed().await.is_empty() },
    )
    .await;
    let rows = failed().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "2");
    assert_eq!(rows[0].1, "field_validation");
    assert!(rows[0].2.contains("MRR cannot be negative"), "{rows:?}");
    assert!(s.account_for("1").await.is_some());
    assert!(s.account_for("2").await.is_none());

    db.execute("UPDATE accounts SET mrr = 5 WHERE id = 2", &[])
        .await
        .unwrap();
    eventually(
        "the fixed record syncs",
        Duration::from_secs(60),
        || async { s.account_for("2").await.is_some() },
    )
    .await;
    eventually(
        "the record is no longer listed as failed",
        Duration::from_secs(30),
        || async { failed().await.is_empty() },
    )
    .await;
    let c = db
        .query_one(
            "SELECT created, errors FROM extsync.sync_counters WHERE integration = 'salesforce' AND entity = 'accounts'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(c.get::<_, i64>(0), 2, "created");
    assert!(c.get::<_, i64>(1) >= 1, "errors");
    s.stop().await;
}

/// extsync's writes to Salesforce of billing id `billing_id`'s Account, in order.
async fn writes_of(s: &Sync, billing_id: &str) -> Vec<Value> {
    let Some(account) = s.account_for(billing_id).await else {
        return Vec::new();
    };
    support::simulator_writes(&s.base_url, "?object=Account")
        .await
        .into_iter()
        .filter(|w| w["client"] == json!("extsync") && w["id"] == json!(account.id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_a_row_in_one_transaction_reach_salesforce_in_fewer_writes() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start().await;
    let db = s.db.client().await;
    db.execute(
        "INSERT INTO accounts (id, name, mrr) VALUES (1, 'First', 1)",
        &[],
    )
    .await
    .unwrap();
    eventually("the Account exists", Duration::from_secs(60), || async {
        writes_of(&s, "1").await.len() == 1
    })
    .await;
    let mut edits = String::from("BEGIN;");
    for mrr in 2..=10 {
        edits.push_str(&format!("UPDATE accounts SET mrr = {mrr} WHERE id = 1;"));
        if mrr == 5 {
            edits.push_str("UPDATE accounts SET name = 'Second' WHERE id = 1;");
        }
    }
    edits.push_str("COMMIT;");
    db.batch_execute(&edits).await.unwrap();
    eventually(
        "the last edit is in Salesforce",
        Duration::from_secs(60),
        || async {
            s.account_for("1")
                .await
                .is_some_and(|a| a.fields["MRR__c"].as_f64() == Some(10.0))
        },
    )
    .await;
    // Each batch the ten edits arrive in writes the record once: they come
    // in one or two, seldom more.
    let writes = writes_of(&s, "1").await;
    assert!(
        (2..=4).contains(&writes.len()),
        "the create, then at most three writes of the ten edits: {writes:#?}"
    );
    let last = writes.last().unwrap();
    assert_eq!(last["fields"]["MRR__c"].as_f64(), Some(10.0));
    assert!(
        writes[1..]
            .iter()
            .any(|w| w["fields"]["Name"] == json!("Second")),
        "{writes:#?}"
    );

    // Edits Salesforce refuses fail, and leave the record as it was before
    // them: the rename among them is written with the next edit that passes.
    let before = writes.len();
    db.batch_execute(
        "BEGIN;
         UPDATE accounts SET name = 'Third', mrr = -1 WHERE id = 1;
         UPDATE accounts SET mrr = -2 WHERE id = 1;
         COMMIT;",
    )
    .await
    .unwrap();
    eventually(
        "the refused edits are a failed record",
        Duration::from_secs(60),
        || async {
            db.query_opt(
                "SELECT 1 FROM extsync.failed_records WHERE billing_id = '1'",
                &[],
            )
            .await
            .unwrap()
            .is_some()
        },
    )
    .await;
    db.execute("UPDATE accounts SET mrr = 12 WHERE id = 1", &[])
        .await
        .unwrap();
    eventually(
        "the fix and the rename are in Salesforce",
        Duration::from_secs(60),
        || async {
            s.account_for("1").await.is_some_and(|a| {
                a.fields["MRR__c"].as_f64() == Some(12.0) && a.fields["Name"] == json!("Third")
            })
        },
    )
    .await;
    assert_eq!(
        writes_of(&s, "1").await.len(),
        before + 1,
        "nothing of the refused edits was written"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_become_accounts_and_edits_flow_both_ways_without_echo() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start().await;
    let db = s.db.client().await;
    db.execute(
        "INSERT INTO accounts (id, name, email, billing_address, mrr) VALUES (1, 'Acme', 'a@acme.test', '{\"line1\": \"1 Market St\"}', 1250.50)",
        &[],
    )
    .await
    .unwrap();

    eventually("the Account exists", Duration::from_secs(60), || async {
        s.account_for("1").await.is_some()
    })
    .await;
    let acct = s.account_for("1").await.unwrap();
    assert_eq!(acct.fields["Name"], json!("Acme"));
    assert_eq!(acct.fields["Email__c"], json!("a@acme.test"));
    assert_eq!(acct.fields["BillingStreet"], json!("1 Market St"));
    assert_eq!(acct.fields["MRR__c"], json!(1250.5));

    // A person renames the Account in Salesforce: the billing row follows.
    let person = s.person();
    person
        .write(
            "Account",
            WriteOp::Update {
                id: acct.id.clone(),
                fields: json!({"Name": "Acme Corp"}).as_object().unwrap().clone(),
            },
        )
        .await
        .unwrap();
    eventually(
        "the billing row is renamed",
        Duration::from_secs(60),
        || async { s.billing_name(1).await == "Acme Corp" },
    )
    .await;

    // A billing edit goes out; nothing echoes back and forth afterwards.
    db.execute("UPDATE accounts SET mrr = 99.99 WHERE id = 1", &[])
        .await
        .unwrap();
    eventually("MRR__c is updated", Duration::from_secs(60), || async {
        s.account_for("1")
            .await
            .is_some_and(|a| a.fields["MRR__c"] == json!(99.99))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = s.extsync_writes().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        s.extsync_writes().await,
        writes,
        "extsync kept writing: a loop"
    );
    assert_eq!(s.billing_name(1).await, "Acme Corp");
    // One create, one MRR update: the rename was never written back to Salesforce.
    assert_eq!(writes, 2, "extsync wrote {writes} times");

    // A replay beside the running processor is refused, and changes nothing.
    let from = extsync::processor::replay::ReplayFrom::Earliest;
    let refused = extsync::processor::service::replay(&s.pipeline, "salesforce", from, |_, _| {})
        .await
        .expect_err("replayed beside the running processor");
    let message = refused.to_string();
    assert!(
        matches!(
            refused,
            extsync::processor::service::ReplayCommandError::ProcessorRunning { members: 1.., .. }
        ) && message.contains("stop it before replaying"),
        "{message}"
    );
    assert_eq!(s.extsync_writes().await, writes);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_editing_at_once_converge_without_flip_flop() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start().await;
    let db = s.db.client().await;
    insert_accounts(&db, 1..=5).await;
    eventually("all Accounts exist", Duration::from_secs(60), || async {
        let all = s.accounts().await;
        (1..=5).all(|i| {
            all.iter()
                .any(|a| a.fields.get("Alguna_Id__c") == Some(&json!(i.to_string())))
        })
    })
    .await;
    let ids: Vec<(i64, String)> = {
        let all = s.accounts().await;
        (1..=5)
            .map(|i| {
                (
                    i,
                    all.iter()
                        .find(|a| a.fields["Alguna_Id__c"] == json!(i.to_string()))
                        .unwrap()
                        .id
                        .clone(),
                )
            })
            .collect()
    };
    // Billing renames every record while Salesforce changes every email.
    let person = s.person();
    for round in 0..3 {
        for (i, sf) in &ids {
            db.execute(
                "UPDATE accounts SET name = $2 WHERE id = $1",
                &[i, &format!("Co {i} r{round}")],
            )
            .await
            .unwrap();
            person
                .write(
                    "Account",
                    WriteOp::Update {
                        id: sf.clone(),
                        fields: json!({"Email__c": format!("co{i}.r{round}@crm.test")})
                            .as_object()
                            .unwrap()
                            .clone(),
                    },
                )
                .await
                .unwrap();
        }
    }
    // What differs from the expected final state, record by record.
    let differences = || async {
        let all = s.accounts().await;
        let rows =
            s.db.client()
                .await
                .query("SELECT id, name, email FROM accounts ORDER BY id", &[])
                .await
                .unwrap();
        rows.iter()
            .filter_map(|r| {
                let id: i64 = r.get(0);
                let (name, email) = (r.get::<_, String>(1), r.get::<_, String>(2));
                let a = all
                    .iter()
                    .find(|a| a.fields["Alguna_Id__c"] == json!(id.to_string()))
                    .unwrap();
                let ok = a.fields["Name"] == json!(name)
                    && a.fields["Email__c"] == json!(email)
                    && name == format!("Co {id} r2")
                    && email == format!("co{id}.r2@crm.test");
                (!ok).then(|| {
                    format!(
                        "{id}: billing ({name}, {email}), Salesforce ({}, {})",
                        a.fields["Name"], a.fields["Email__c"]
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let diff = differences().await;
        if diff.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both sides do not hold the latest edits of both: {diff:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let writes = s.extsync_writes().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        s.extsync_writes().await,
        writes,
        "writes continued after convergence: a loop"
    );
    let diff = differences().await;
    assert!(
        diff.is_empty(),
        "values flipped after convergence: {diff:#?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_history_twice_creates_once_and_changes_nothing() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start_stages(Stages::Capture).await;
    let db = s.db.client().await;
    for i in 1..=20i64 {
        db.execute("INSERT INTO accounts (id, name, email, mrr) VALUES ($1, $2, $3, $1::bigint * 10 + 0.5)", &[&i, &format!("Co {i}"), &format!("co{i}@x.test")])
            .await
            .unwrap();
    }
    db.execute(
        "UPDATE accounts SET name = name || ' Ltd' WHERE id <= 5",
        &[],
    )
    .await
    .unwrap();
    // Wait until capture has put every row in Kafka: 20 snapshot rows or
    // inserts, plus the 5 updates when the slot existed before them.
    let topic = format!("{}.cdc.public.accounts", s.kafka.prefix);
    let consumer: rdkafka::consumer::BaseConsumer = s.kafka.config().create().unwrap();
    eventually(
        "capture wrote every change",
        Duration::from_secs(60),
        || {
            // None until capture has created the topic.
            let partitions =
                extsync::kafka::partition_counts(&s.kafka.config(), std::slice::from_ref(&topic))
                    .unwrap()
                    .get(&topic)
                    .copied()
                    .unwrap_or(0);
            let marks: Vec<_> = (0..partitions)
                .map(|p| {
                    rdkafka::consumer::Consumer::fetch_watermarks(
                        &consumer,
                        &topic,
                        p,
                        Duration::from_secs(5),
                    )
                })
                .collect();
            let total: i64 = marks
                .iter()
                .filter_map(|m| m.as_ref().ok())
                .map(|(_, high)| high)
                .sum();
            async move { total >= 20 }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let from = extsync::processor::replay::ReplayFrom::Earliest;
    let first = extsync::processor::service::replay(&s.pipeline, "salesforce", from, |_, _| {})
        .await
        .unwrap();
    assert_eq!(first.counts.created, 20, "{first:?}");
    let after_first = s.accounts().await;
    assert_eq!(after_first.iter().filter(|a| !a.deleted).count(), 20);
    assert!(
        after_first
            .iter()
            .any(|a| a.fields["Name"] == json!("Co 3 Ltd"))
    );

    let second = extsync::processor::service::replay(&s.pipeline, "salesforce", from, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        (second.counts.created, second.counts.updated),
        (0, 0),
        "{second:?}"
    );
    let after_second = s.accounts().await;
    let key = |r: &extsync::connectors::ExternalRecord| {
        (
            r.id.clone(),
            r.version.clone(),
            Value::Object(r.fields.clone()),
        )
    };
    let mut a: Vec<_> = after_first.iter().map(key).collect();
    let mut b: Vec<_> = after_second.iter().map(key).collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a, b, "the second replay changed the external state");
    s.stop().await;
}

/// Billing rows `ids`: `Co <id>`, `co<id>@x.test`, MRR 10.
async fn insert_accounts(db: &tokio_postgres::Client, ids: std::ops::RangeInclusive<i64>) {
    for i in ids {
        db.execute(
            "INSERT INTO accounts (id, name, email, mrr) VALUES ($1, $2, $3, 10)",
            &[&i, &format!("Co {i}"), &format!("co{i}@x.test")],
        )
        .await
        .unwrap();
    }
}

/// Waits until part of the work is done: some Accounts exist, others are
/// in flight.
async fn until_first_accounts(s: &Sync) {
    eventually(
        "the first Accounts exist",
        Duration::from_secs(90),
        || async { s.accounts().await.len() >= 5 },
    )
    .await;
}

/// Sends SIGTERM to `child` and checks that it exits cleanly.
async fn sigterm_exits_cleanly(child: std::process::Child) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = child;
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "SIGTERM: {exit:?}");
}

/// Waits until billing row `id` holds `email` (a Salesforce edit came back).
async fn until_billing_email(db: &tokio_postgres::Client, id: i64, email: &str) {
    eventually(
        "the Salesforce edit reaches billing",
        Duration::from_secs(60),
        || async {
            db.query_one("SELECT email FROM accounts WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, String>(0)
                == email
        },
    )
    .await;
}

/// A person in Salesforce sets the email of the Account with id `id`.
async fn person_sets_email(s: &Sync, id: &str, email: &str) {
    s.person()
        .write(
            "Account",
            WriteOp::Update {
                id: id.to_string(),
                fields: json!({ "Email__c": email }).as_object().unwrap().clone(),
            },
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_sync_then_restart_converges_without_duplicates() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start_stages(Stages::None).await;
    let db = s.db.client().await;
    let mut child = s.spawn_run();
    insert_accounts(&db, 1..=40).await;
    // Kill as soon as part of the work is done: some Accounts exist, others
    // are in flight.
    until_first_accounts(&s).await;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    // Both sides keep changing while extsync is down.
    for account in s.accounts().await {
        let id = account.fields["Alguna_Id__c"].as_str().unwrap().to_string();
        person_sets_email(&s, &account.id, &format!("co{id}@crm.test")).await;
    }
    let edited: Vec<i64> = s
        .accounts()
        .await
        .iter()
        .map(|a| a.fields["Alguna_Id__c"].as_str().unwrap().parse().unwrap())
        .collect();
    db.execute("UPDATE accounts SET name = name || ' renamed'", &[])
        .await
        .unwrap();

    let mut child = s.spawn_run();
    let differences = || async {
        let all = s.accounts().await;
        let rows = db
            .query("SELECT id, name, email FROM accounts ORDER BY id", &[])
            .await
            .unwrap();
        let mut diff = Vec::new();
        for r in &rows {
            let (id, name, email) = (
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
            );
            let linked: Vec<_> = all
                .iter()
                .filter(|a| a.fields["Alguna_Id__c"] == json!(id.to_string()))
                .collect();
            let want_email = if edited.contains(&id) {
                format!("co{id}@crm.test")
            } else {
                format!("co{id}@x.test")
            };
            match linked.as_slice() {
                [a] if a.fields["Name"] == json!(name)
                    && name == format!("Co {id} renamed")
                    && email == want_email
                    && a.fields["Email__c"] == json!(want_email) => {}
                _ => diff.push(format!(
                    "{id}: billing ({name}, {email}), Salesforce {:?}",
                    linked
                        .iter()
                        .map(|a| (a.fields["Name"].clone(), a.fields["Email__c"].clone()))
                        .collect::<Vec<_>>()
                )),
            }
        }
        diff
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let diff = differences().await;
        if diff.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("not converged after the restart: {diff:#?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(s.accounts().await.len(), 40, "one Account per billing row");
    sigterm_exits_cleanly(child).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_sync_and_one_killed_hands_its_work_to_the_other() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start_stages(Stages::None).await;
    let db = s.db.client().await;
    let slot = extsync::capture::default_object_name(s.pipeline.name.as_str());
    // The first process captures; the second stands by for the slot and
    // shares the processor's partitions.
    let mut first = s.spawn_run_as("first");
    support::wait_streaming(&db, &slot).await;
    let second = s.spawn_run_as("second");
    let rows = |from: i64, to: i64| {
        (from..=to)
            .map(|i| format!("({i}, 'Co {i}', 'co{i}@x.test', 10)"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for chunk in [(1, 10), (11, 20), (21, 30), (31, 40)] {
        db.batch_execute(&format!(
            "INSERT INTO accounts (id, name, email, mrr) VALUES {}",
            rows(chunk.0, chunk.1)
        ))
        .await
        .unwrap();
    }
    until_first_accounts(&s).await;
    first.kill().expect("kill -9 the capturing process");
    first.wait().unwrap();
    // Both sides keep changing; the second process takes over capture and
    // every partition.
    db.batch_execute(&format!(
        "INSERT INTO accounts (id, name, email, mrr) VALUES {};
         UPDATE accounts SET name = name || ' renamed' WHERE id % 2 = 0;",
        rows(41, 50)
    ))
    .await
    .unwrap();
    let edited = s.account_for("3").await.expect("Account 3 exists");
    person_sets_email(&s, &edited.id, "three@crm.test").await;
    let expected = |id: i64| {
        let name = if id % 2 == 0 {
            format!("Co {id} renamed")
        } else {
            format!("Co {id}")
        };
        let email = if id == 3 {
            "three@crm.test".to_string()
        } else {
            format!("co{id}@x.test")
        };
        (name, email)
    };
    eventually(
        "all 50 rows are in Salesforce as they are in billing",
        Duration::from_secs(120),
        || async {
            let accounts = s.accounts().await;
            (1..=50).all(|id| {
                let (name, email) = expected(id);
                accounts.iter().any(|a| {
                    a.fields.get("Alguna_Id__c") == Some(&json!(id.to_string()))
                        && a.fields["Name"] == json!(name)
                        && a.fields["Email__c"] == json!(email)
                })
            })
        },
    )
    .await;
    until_billing_email(&db, 3, "three@crm.test").await;
    assert_eq!(s.accounts().await.len(), 50, "one Account per row");
    assert_eq!(s.extsync_created().await, 50, "no Account created twice");
    sigterm_exits_cleanly(second).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_joining_mid_sync_takes_partitions_without_losing_a_sync_event() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start_stages(Stages::None).await;
    let db = s.db.client().await;
    let slot = extsync::capture::default_object_name(s.pipeline.name.as_str());
    let first = s.spawn_run_as("first");
    support::wait_streaming(&db, &slot).await;
    // Rows keep coming while a second process joins: the group moves half
    // of the first process's partitions, with parts under way on them.
    const ROWS: i64 = 400;
    let inserting = {
        let db = s.db.client().await;
        tokio::spawn(async move {
            for chunk in 0..ROWS / 10 {
                insert_accounts(&db, chunk * 10 + 1..=chunk * 10 + 10).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    until_first_accounts(&s).await;
    // Slow Salesforce calls keep parts under way when the group rebalances.
    admin(&s, "/__admin/faults", json!({"latencyMs": 300})).await;
    let second = s.spawn_run_as("second");
    inserting.await.unwrap();
    admin(&s, "/__admin/faults", json!({"latencyMs": 0})).await;
    eventually(
        "every row has its Account",
        Duration::from_secs(120),
        || async { s.accounts().await.len() as i64 >= ROWS },
    )
    .await;
    assert_eq!(
        s.extsync_created().await,
        ROWS as usize,
        "no Account created twice"
    );
    // Each insert is processed once, by one owner: the first process
    // committed the parts it had started before the second took their
    // partitions, so the second never ran them again (as `skipped`), and no
    // creation was lost with an aborted transaction.
    let mut outcomes = s.account_outcomes().await;
    for _ in 0..20 {
        if outcomes
            .values()
            .filter(|o| o.contains(&"created".into()))
            .count() as i64
            >= ROWS
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        outcomes = s.account_outcomes().await;
    }
    let not_once: Vec<(&String, &Vec<String>)> = (outcomes.iter())
        .filter(|(_, o)| o.as_slice() != ["created"])
        .collect();
    assert_eq!(outcomes.len() as i64, ROWS, "every row has sync events");
    assert!(
        not_once.is_empty(),
        "{} rows not processed exactly once: {not_once:?}",
        not_once.len()
    );
    sigterm_exits_cleanly(second).await;
    sigterm_exits_cleanly(first).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_restart_mid_sync_loses_nothing_and_creates_once() {
    let _slot = PIPELINE_SLOT.lock().await;
    // Declared first, dropped last: the test's topics are deleted while it runs.
    let broker = tokio::task::spawn_blocking(support::broker::PrivateBroker::start)
        .await
        .unwrap();
    let s = Sync::start_on(Stages::None, "", TestKafka::on(broker.brokers.clone())).await;
    let db = s.db.client().await;
    let mut child = s.spawn_run();
    insert_accounts(&db, 1..=20).await;
    until_first_accounts(&s).await;
    let broker = tokio::task::spawn_blocking(move || {
        let mut broker = broker;
        broker.stop();
        broker
    })
    .await
    .unwrap();
    // Both sides change while the broker is away.
    insert_accounts(&db, 21..=30).await;
    db.execute(
        "UPDATE accounts SET name = name || ' renamed' WHERE id <= 10",
        &[],
    )
    .await
    .unwrap();
    let first = s.account_for("1").await.expect("Account 1 exists");
    person_sets_email(&s, &first.id, "one@crm.test").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut broker = tokio::task::spawn_blocking(move || {
        let mut broker = broker;
        broker.restart();
        broker
    })
    .await
    .unwrap();
    eventually(
        "both sides converge after the broker is back",
        Duration::from_secs(120),
        || async {
            let accounts = s.accounts().await;
            let email: String = db
                .query_one("SELECT email FROM accounts WHERE id = 1", &[])
                .await
                .unwrap()
                .get(0);
            email == "one@crm.test"
                && (1..=30).all(|id| {
                    let name = if id <= 10 {
                        format!("Co {id} renamed")
                    } else {
                        format!("Co {id}")
                    };
                    accounts.iter().any(|a| {
                        a.fields.get("Alguna_Id__c") == Some(&json!(id.to_string()))
                            && a.fields["Name"] == json!(name)
                    })
                })
        },
    )
    .await;
    assert_eq!(s.accounts().await.len(), 30, "one Account per row");
    assert_eq!(s.extsync_created().await, 30, "no Account created twice");
    assert!(
        child.try_wait().unwrap().is_none(),
        "extsync ran through the broker's restart"
    );
    let _ = child.kill();
    let _ = child.wait();
    s.stop().await;
    broker.stop();
}

/// POSTs to the simulator's admin surface.
/// Waits until Accounts 1–40 hold their latest names: `Second <id>` for
/// 1–20 (renamed), `First <id>` for 21–40.
async fn until_latest_names(s: &Sync) {
    let expected = |id: i64| {
        if id <= 20 {
            format!("Second {id}")
        } else {
            format!("First {id}")
        }
    };
    eventually(
        "all 40 Accounts hold their latest names",
        Duration::from_secs(90),
        || async {
            let accounts = s.accounts().await;
            (1..=40).all(|id| {
                accounts.iter().any(|a| {
                    !a.deleted
                        && a.fields.get("Alguna_Id__c") == Some(&json!(id.to_string()))
                        && a.fields["Name"] == json!(expected(id))
                })
            })
        },
    )
    .await;
}

async fn admin(s: &Sync, path: &str, body: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", s.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_and_a_rate_limit_storm_mid_sync_lose_nothing_and_create_once() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start().await;
    let db = s.db.client().await;
    db.batch_execute(
        "INSERT INTO accounts (id, name) SELECT g, 'First ' || g FROM generate_series(1, 20) g",
    )
    .await
    .unwrap();
    eventually("syncing has begun", Duration::from_secs(60), || async {
        s.account_for("1").await.is_some()
    })
    .await;

    // Every session ends and every call is refused, while more changes come.
    admin(&s, "/__admin/tokens/expire", json!({})).await;
    admin(&s, "/__admin/faults", json!({"exhaustLimits": true})).await;
    db.batch_execute(
        "INSERT INTO accounts (id, name) SELECT g, 'First ' || g FROM generate_series(21, 40) g;
         UPDATE accounts SET name = 'Second ' || id, updated_at = now() WHERE id <= 20",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin(&s, "/__admin/faults", json!({"exhaustLimits": false})).await;

    until_latest_names(&s).await;
    let live: Vec<_> = s
        .accounts()
        .await
        .into_iter()
        .filter(|a| !a.deleted)
        .collect();
    assert_eq!(live.len(), 40, "an Account was created twice");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_refresh_mid_sync_pauses_writes_and_resumes_exactly_once() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start().await;
    let db = s.db.client().await;
    db.batch_execute(
        "INSERT INTO accounts (id, name) SELECT g, 'First ' || g FROM generate_series(1, 20) g",
    )
    .await
    .unwrap();
    eventually(
        "the first 20 Accounts exist",
        Duration::from_secs(60),
        || async { s.extsync_created().await == 20 },
    )
    .await;
    assert_eq!(
        s.integration_status().await,
        Some(("active".to_string(), None, None))
    );

    // Every session ends and the refresh token is refused, while more changes come.
    admin(
        &s,
        "/__admin/faults",
        json!({"expireTokens": true, "refuseRefresh": true}),
    )
    .await;
    let writes_before = s.extsync_writes().await;
    db.batch_execute(
        "INSERT INTO accounts (id, name) SELECT g, 'First ' || g FROM generate_series(21, 40) g;
         UPDATE accounts SET name = 'Second ' || id, updated_at = now() WHERE id <= 20",
    )
    .await
    .unwrap();
    eventually(
        "the integration's status is auth_expired",
        Duration::from_secs(60),
        || async {
            s.integration_status()
                .await
                .is_some_and(|st| st.0 == "auth_expired")
        },
    )
    .await;
    assert_eq!(
        s.integration_status().await.unwrap(),
        (
            "auth_expired".to_string(),
            Some("expired access/refresh token".to_string()),
            Some("invalid_grant".to_string())
        )
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.extsync_writes().await,
        writes_before,
        "writes continued while the credentials were refused"
    );
    let failed: i64 = db
        .query_one("SELECT count(*) FROM extsync.failed_records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "paused writes are waiting, not failed");

    // The credentials work again: every change arrives, each Account once.
    admin(&s, "/__admin/faults", json!({"refuseRefresh": false})).await;
    until_latest_names(&s).await;
    eventually(
        "the integration's status is active again",
        Duration::from_secs(30),
        || async { s.integration_status().await == Some(("active".to_string(), None, None)) },
    )
    .await;
    let live = s
        .accounts()
        .await
        .into_iter()
        .filter(|a| !a.deleted)
        .count();
    assert_eq!(live, 40, "one Account per billing row");
    assert_eq!(
        s.extsync_created().await,
        40,
        "an Account was created twice"
    );
    // Each change was written once: 40 creates and 20 renames.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.extsync_writes().await, 60);
    s.stop().await;
}

/// Creates Account 1, deletes it in Salesforce behind extsync's back (no
/// ingest runs, so only the next write can find out), then renames the
/// billing row. Returns the deleted Account's id.
async fn rename_after_the_account_was_deleted(s: &Sync) -> String {
    let db = s.db.client().await;
    db.execute("INSERT INTO accounts (id, name) VALUES (1, 'Acme')", &[])
        .await
        .unwrap();
    eventually("the Account exists", Duration::from_secs(60), || async {
        s.account_for("1").await.is_some()
    })
    .await;
    let gone = s.account_for("1").await.unwrap().id;
    s.person()
        .write("Account", WriteOp::Delete { id: gone.clone() })
        .await
        .unwrap();
    db.execute(
        "UPDATE accounts SET name = 'Acme Corp', updated_at = now() WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    gone
}

/// The external id the billing record is linked to.
async fn linked_id(s: &Sync) -> Option<String> {
    s.db.client()
        .await
        .query_one(
            "SELECT external_id FROM extsync.records WHERE integration = 'salesforce' AND entity = 'accounts' AND billing_id = '1'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_not_found_skip_records_a_skipped_outcome_and_creates_nothing() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start_with(Stages::CaptureAndProcessor, "onNotFound: skip").await;
    let gone = rename_after_the_account_was_deleted(&s).await;
    eventually(
        "the rename is recorded as skipped",
        Duration::from_secs(60),
        || async {
            s.record_events("1")
                .await
                .iter()
                .any(|e| e["outcome"] == json!("skipped") && e["flow"] == json!("to_external"))
        },
    )
    .await;
    let events = s.record_events("1").await;
    let outcomes: Vec<&Value> = events.iter().map(|e| &e["outcome"]).collect();
    assert_eq!(
        outcomes,
        [&json!("created"), &json!("skipped")],
        "{events:#?}"
    );
    assert_eq!(events[1]["external_id"], json!(gone));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.account_for("1").await.is_none(), "an Account was created");
    assert_eq!(s.extsync_created().await, 1);
    assert_eq!(linked_id(&s).await, Some(gone));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_not_found_create_makes_the_account_again_and_links_it() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start_with(Stages::CaptureAndProcessor, "onNotFound: create").await;
    let gone = rename_after_the_account_was_deleted(&s).await;
    eventually(
        "a new Account holds the rename",
        Duration::from_secs(60),
        || async {
            s.account_for("1")
                .await
                .is_some_and(|a| a.fields["Name"] == json!("Acme Corp"))
        },
    )
    .await;
    let again = s.account_for("1").await.unwrap().id;
    assert_ne!(again, gone);
    eventually("the link follows", Duration::from_secs(30), || async {
        linked_id(&s).await.as_deref() == Some(again.as_str())
    })
    .await;
    let events = s.record_events("1").await;
    let outcomes: Vec<&Value> = events.iter().map(|e| &e["outcome"]).collect();
    assert_eq!(
        outcomes,
        [&json!("created"), &json!("created")],
        "{events:#?}"
    );
    assert_eq!(events[1]["external_id"], json!(again));
    assert_eq!(s.extsync_created().await, 2);

    // The next change updates the new Account.
    s.db.client()
        .await
        .execute(
            "UPDATE accounts SET email = 'a@acme.test' WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    eventually(
        "the new Account is updated",
        Duration::from_secs(60),
        || async {
            s.account_for("1")
                .await
                .is_some_and(|a| a.fields["Email__c"] == json!("a@acme.test"))
        },
    )
    .await;
    assert_eq!(s.extsync_created().await, 2);
    s.stop().await;
}

/// Ends every session of the test's database but `db`'s own, as a
/// PostgreSQL restart does: extsync's pooled connections, its billing
/// writer and capture's walsender all see their connection closed.
async fn sever_postgres_sessions(s: &Sync, db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
        &[&s.db.name],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_postgres_connections_mid_sync_are_reopened_and_nothing_is_lost() {
    let _slot = PIPELINE_SLOT.lock().await;
    let s = Sync::start_stages(Stages::None).await;
    let db = s.db.client().await;
    let mut child = s.spawn_run();
    insert_accounts(&db, 1..=30).await;
    until_first_accounts(&s).await;
    let severed = sever_postgres_sessions(&s, &db).await;
    assert!(severed >= 3, "only {severed} sessions of extsync were open");
    insert_accounts(&db, 31..=40).await;
    eventually(
        "all 40 Accounts exist after the connections were lost",
        Duration::from_secs(90),
        || async { s.accounts().await.len() >= 40 },
    )
    .await;
    // Salesforce edits come back to billing once the writer reconnects.
    let first = s.account_for("1").await.expect("Account 1");
    person_sets_email(&s, &first.id, "one@crm.test").await;
    until_billing_email(&db, 1, "one@crm.test").await;
    assert_eq!(s.accounts().await.len(), 40, "one Account per billing row");
    assert_eq!(s.extsync_created().await, 40, "no Account created twice");
    let _ = child.kill();
    let _ = child.wait();
    s.stop().await;
}
