//! Records that cannot sync, end to end: real Postgres (captured by logical
//! replication), real Kafka, the Salesforce simulator. A custom transform
//! that throws or runs out of time fails only its record, which is listed
//! as failed and reported on `<prefix>.sync-events` until its row is fixed;
//! a contact written before its account waits for it and carries its id;
//! one whose account never comes fails, then syncs on its own once the
//! account is linked.

mod support;

use std::time::Duration;

use extsync::connectors::salesforce::{SalesforceConnector, SalesforceSettings};
use extsync::connectors::{Connector, Credentials, Cursor, ExternalRecord, RequestBudget};
use extsync::processor::events::SyncEvent;
use extsync::simulators::RunningSimulator;
use extsync::simulators::salesforce::{
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN, SalesforceSim, SalesforceSimConfig,
    ValidationRule,
};
use rdkafka::Message;
use rdkafka::consumer::BaseConsumer;
use serde_json::{Value, json};
use support::{TestDb, TestKafka, eventually};
use tokio_util::sync::CancellationToken;

/// One pipeline at a time keeps the tests' timing independent on a small machine.
static PIPELINE_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a contact waits for its account in these tests: short, for the
/// accounts that never come, yet long enough for an account processed in a
/// part beside its contact's to be created on a busy machine.
const PARENT_WAIT: Duration = Duration::from_secs(3);

/// No foreign key: a contact may reference an account that comes later.
const SCHEMA: &str = "
CREATE TABLE accounts (
    id   bigint PRIMARY KEY,
    name text NOT NULL,
    code text
);
CREATE TABLE contacts (
    id         bigint PRIMARY KEY,
    account_id bigint,
    last_name  text NOT NULL,
    email      text
);";

/// A failed record as the control plane reads it.
#[derive(Debug, Clone)]
struct FailedRecord {
    entity: String,
    billing_id: String,
    error_type: String,
    message: String,
}

/// Capture, ingest and the processor of a pipeline syncing accounts (with a
/// custom transform on `code`) and their contacts with the Salesforce
/// simulator (which rejects accounts named `Rejected`), and a reader of its
/// sync events.
struct Sync {
    db: TestDb,
    kafka: TestKafka,
    _sim: RunningSimulator,
    base_url: String,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    events_reader: BaseConsumer,
    events: Vec<Value>,
}

impl Sync {
    async fn start() -> Sync {
        support::salesforce_credentials_env();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("EXTSYNC_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let db = TestDb::create().await;
        db.client().await.batch_execute(SCHEMA).await.unwrap();
        let kafka = TestKafka::new();
        let mut config = SalesforceSimConfig::default();
        config.validation_rules.push(ValidationRule {
            object: "Account".into(),
            name: "Not_Rejected".into(),
            condition: "Name = 'Rejected'".into(),
            message: "This account is rejected".into(),
            error_field: Some("Name".into()),
        });
        let sim = SalesforceSim::new(config).unwrap();
        let running = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let yaml = format!(
            r#"
name: {name}
postgres: {{ url: "{db}", tables: [public.accounts, public.contacts], heartbeatSecs: 1 }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{prefix}" }}
telemetry: {{ metricsAddress: "" }}
ingest: {{ webhookAddress: "", sweepSecs: 1, pollOverlapSecs: 5 }}
integrations:
{salesforce}          - {{ alguna: name, external: Name }}
          - {{ alguna: code, external: Description, direction: alguna_to_external, transform: custom, function: "if (value === 'bad') throw new Error('code rejected: ' + value); if (value === 'loop') {{ for (;;) {{}} }} return value.toUpperCase();" }}
      contacts:
        externalObject: Contact
        table: public.contacts
        billingIdField: Alguna_Id__c
        parent: {{ entity: accounts, alguna: account_id, external: AccountId }}
        mappings:
          - {{ alguna: lastName, external: LastName }}
          - {{ alguna: email, external: Email }}
"#,
            name = support::unique("f"),
            db = db.url,
            brokers = kafka.brokers,
            prefix = kafka.prefix,
            salesforce = support::salesforce_integration("salesforce", &running.base_url())
        );
        let pipeline = extsync::config::parse_str(&yaml, "failures.yaml").unwrap();
        let stop = CancellationToken::new();
        let mut tasks = vec![support::spawn_capture(&pipeline, &stop)];
        let options = extsync::processor::service::Options {
            parent_wait: PARENT_WAIT,
        };
        tasks.extend(
            support::start_ingest_and_processor_with(&pipeline, &stop, &options)
                .await
                .0,
        );
        let events_reader = kafka.reader_from_start(
            &format!("{}.sync-events", kafka.prefix),
            std::time::Instant::now() + Duration::from_secs(30),
        );
        Sync {
            db,
            kafka,
            base_url: running.base_url(),
            _sim: running,
            stop,
            tasks,
            events_reader,
            events: Vec::new(),
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

    /// Every live record of `object` carrying `billing_id`.
    async fn records_for(&self, object: &str, billing_id: &str) -> Vec<ExternalRecord> {
        let c = self.person();
        let mut out = Vec::new();
        let mut page = None;
        loop {
            let p = c
                .list_changes(object, &Cursor::start(), page.as_deref())
                .await
                .unwrap();
            out.extend(p.records.into_iter().filter(|r| {
                !r.deleted && r.fields.get("Alguna_Id__c") == Some(&json!(billing_id))
            }));
            match p.next_page {
                Some(n) => page = Some(n),
                None => return out,
            }
        }
    }

    /// The one live record of `object` carrying `billing_id`, if any.
    async fn record_for(&self, object: &str, billing_id: &str) -> Option<ExternalRecord> {
        let found = self.records_for(object, billing_id).await;
        assert!(
            found.len() <= 1,
            "{object} {billing_id} was created more than once: {found:?}"
        );
        found.into_iter().next()
    }

    async fn failed(&self) -> Vec<FailedRecord> {
        self.db
            .client()
            .await
            .query(
                "SELECT entity, billing_id, error_type, message FROM extsync.failed_records ORDER BY entity, billing_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| FailedRecord {
                entity: r.get(0),
                billing_id: r.get(1),
                error_type: r.get(2),
                message: r.get(3),
            })
            .collect()
    }

    /// The sync events published so far, in the order read.
    fn sync_events(&mut self) -> &[Value] {
        let reader = &self.events_reader;
        let events = &mut self.events;
        tokio::task::block_in_place(|| {
            while let Some(m) = reader.poll(Duration::from_millis(200)) {
                let m = m.expect("reading sync events");
                if let Some(p) = m.payload() {
                    events.push(serde_json::from_slice(p).expect("sync events are JSON"));
                }
            }
        });
        &self.events
    }

    /// Sync events of one record of type `kind` (`sync.record`, `sync.error`, …).
    /// An account id whose changes share a partition with those of
    /// `contact`.
    fn account_on_the_partition_of(&self, contact: &str) -> String {
        let topic = format!("{}.cdc.public.contacts", self.kafka.prefix);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let partitions = loop {
            let counts = extsync::kafka::partition_counts(
                &self.kafka.config(),
                std::slice::from_ref(&topic),
            );
            if let Some(n) = counts.ok().and_then(|c| c.get(&topic).copied()) {
                break n;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{topic} was not created"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let wanted = extsync::kafka::record_partition(contact, partitions);
        (100..)
            .map(|id: i64| id.to_string())
            .find(|id| extsync::kafka::record_partition(id, partitions) == wanted)
            .expect("an id on every partition")
    }

    fn events_of(&mut self, kind: &str, entity: &str, billing_id: &str) -> Vec<Value> {
        self.sync_events()
            .iter()
            .filter(|e| e["type"] == kind && e["entity"] == entity && e["billing_id"] == billing_id)
            .cloned()
            .collect()
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        self.db.drop_idle_slots().await;
        drop(self.kafka);
    }
}

/// Every event reads back as the type its JSON Schema is generated from.
fn assert_valid_events(events: &[Value]) {
    for e in events {
        if let Err(err) = serde_json::from_value::<SyncEvent>(e.clone()) {
            panic!("{e}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throwing_or_endless_custom_transform_fails_only_its_record_until_the_row_is_fixed() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut s = Sync::start().await;
    let db = s.db.client().await;
    // One transaction, so one batch: the good record syncs beside the bad ones.
    db.batch_execute(
        "INSERT INTO accounts (id, name, code) VALUES (1, 'Good', 'a1'), (2, 'Throws', 'bad'), (3, 'Loops', 'loop')",
    )
    .await
    .unwrap();
    eventually(
        "both bad records are listed as failed",
        Duration::from_secs(60),
        || async { s.failed().await.len() == 2 },
    )
    .await;
    let failed = s.failed().await;
    assert_eq!(
        (failed[0].billing_id.as_str(), failed[0].error_type.as_str()),
        ("2", "field_validation"),
        "{failed:?}"
    );
    assert!(
        failed[0].message.contains("code rejected: bad"),
        "{failed:?}"
    );
    assert_eq!(
        (failed[1].billing_id.as_str(), failed[1].error_type.as_str()),
        ("3", "field_validation"),
        "{failed:?}"
    );
    assert!(failed[1].message.contains("time limit"), "{failed:?}");
    assert!(failed.iter().all(|f| f.entity == "accounts"));
    eventually("the good record syncs", Duration::from_secs(30), || async {
        s.record_for("Account", "1").await.is_some()
    })
    .await;
    assert!(s.record_for("Account", "2").await.is_none());
    assert!(s.record_for("Account", "3").await.is_none());

    // The failures are published: an error and a failed record outcome each.
    for (id, text) in [("2", "code rejected: bad"), ("3", "time limit")] {
        let errors = s.events_of("sync.error", "accounts", id);
        assert!(
            errors.iter().any(|e| e["error_type"] == "field_validation"
                && e["message"].as_str().unwrap().contains(text)),
            "{errors:?}"
        );
        let records = s.events_of("sync.record", "accounts", id);
        assert!(
            records.iter().any(|e| e["outcome"] == "failed"
                && e["flow"] == "to_external"
                && e["error_type"] == "field_validation"
                && e["message"].as_str().unwrap().contains(text)),
            "{records:?}"
        );
    }
    let created = s.events_of("sync.record", "accounts", "1");
    assert!(
        created.iter().any(|e| e["outcome"] == "created"
            && e["fields"]
                .as_array()
                .unwrap()
                .contains(&json!("Description"))),
        "{created:?}"
    );
    assert!(
        s.sync_events()
            .iter()
            .any(|e| e["type"] == "sync.completed" && e["counts"]["failed"].as_u64() >= Some(2)),
        "a batch summary counts both failures"
    );

    // A later batch syncs too.
    db.execute(
        "INSERT INTO accounts (id, name, code) VALUES (4, 'Later', 'b4')",
        &[],
    )
    .await
    .unwrap();
    eventually("a later record syncs", Duration::from_secs(30), || async {
        s.record_for("Account", "4").await.is_some()
    })
    .await;

    // Fixed rows sync and leave the failed list.
    db.execute("UPDATE accounts SET code = 'fixed' WHERE id IN (2, 3)", &[])
        .await
        .unwrap();
    eventually(
        "the fixed records sync",
        Duration::from_secs(30),
        || async {
            s.record_for("Account", "2").await.is_some()
                && s.record_for("Account", "3").await.is_some()
        },
    )
    .await;
    let fixed = s.record_for("Account", "2").await.unwrap();
    assert_eq!(fixed.fields["Description"], json!("FIXED"));
    eventually(
        "the fixed records are no longer listed as failed",
        Duration::from_secs(30),
        || async { s.failed().await.is_empty() },
    )
    .await;

    // A change that writes nothing is reported as skipped, with its reason.
    db.execute("UPDATE accounts SET name = name WHERE id = 1", &[])
        .await
        .unwrap();
    eventually(
        "the unchanged record is reported as skipped",
        Duration::from_secs(30),
        || {
            let skipped = s
                .events_of("sync.record", "accounts", "1")
                .iter()
                .any(|e| e["outcome"] == "skipped" && e["reason"] == "in_sync");
            async move { skipped }
        },
    )
    .await;
    assert_valid_events(s.sync_events());
    s.stop().await;
}

/// Waits until `contact` is written under `account`, then checks its event.
async fn assert_written_under(s: &mut Sync, contact: &str, account: &str) {
    eventually(
        &format!("contact {contact} is written under account {account}"),
        Duration::from_secs(60),
        || async {
            let (Some(c), Some(a)) = (
                s.record_for("Contact", contact).await,
                s.record_for("Account", account).await,
            ) else {
                return false;
            };
            c.fields.get("AccountId") == Some(&json!(a.id))
        },
    )
    .await;
    let created = s.events_of("sync.record", "contacts", contact);
    assert!(
        created.iter().any(|e| e["outcome"] == "created"
            && e["fields"]
                .as_array()
                .unwrap()
                .contains(&json!("AccountId"))),
        "{created:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_written_before_its_account_waits_and_carries_the_accounts_id() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut s = Sync::start().await;
    let db = s.db.client().await;
    // Child first, in the same transaction as its parent.
    db.batch_execute(
        "BEGIN;
         INSERT INTO contacts (id, account_id, last_name, email) VALUES (10, 1, 'Same', 'same@x.test');
         INSERT INTO accounts (id, name, code) VALUES (1, 'Parent One', 'p1');
         COMMIT;",
    )
    .await
    .unwrap();
    assert_written_under(&mut s, "10", "1").await;
    // Taken in one batch, the account is written first and the contact
    // waits for nothing. Taken apart, the contact finds the account queued
    // behind it and is deferred behind it, or waits for the account's part
    // running beside: no error either way.
    let errors = s.events_of("sync.error", "contacts", "10");
    assert!(errors.is_empty(), "{errors:#?}");

    // Child first, its parent a moment later, once the pipeline is flowing:
    // the child is processed on its own and waits.
    db.execute(
        "INSERT INTO contacts (id, account_id, last_name, email) VALUES (11, 2, 'Early', 'early@x.test')",
        &[],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.execute(
        "INSERT INTO accounts (id, name, code) VALUES (2, 'Parent Two', 'p2')",
        &[],
    )
    .await
    .unwrap();
    assert_written_under(&mut s, "11", "2").await;
    eventually(
        "no contact is left listed as failed",
        Duration::from_secs(30),
        || async { s.failed().await.is_empty() },
    )
    .await;
    assert_valid_events(s.sync_events());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_whose_account_is_queued_behind_it_is_deferred_not_failed() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut s = Sync::start().await;
    let db = s.db.client().await;
    // An account on the contact's partition: its change queues behind the
    // contact's part, which could only wait out `PARENT_WAIT` for it.
    let account = s.account_on_the_partition_of("30");
    db.execute(
        "INSERT INTO contacts (id, account_id, last_name, email) VALUES (30, $1, 'Ahead', 'ahead@x.test')",
        &[&account.parse::<i64>().unwrap()],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let inserted = std::time::Instant::now();
    db.execute(
        "INSERT INTO accounts (id, name, code) VALUES ($1, 'Behind', 'b')",
        &[&account.parse::<i64>().unwrap()],
    )
    .await
    .unwrap();
    assert_written_under(&mut s, "30", &account).await;
    let took = inserted.elapsed();
    let records = s.events_of("sync.record", "contacts", "30");
    assert!(
        records
            .iter()
            .any(|e| e["reason"] == json!("awaits_parent")),
        "the contact was deferred behind its account: {records:#?}"
    );
    let errors = s.events_of("sync.error", "contacts", "30");
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(
        took < PARENT_WAIT,
        "the contact followed its account without waiting out the parent wait: {took:?}"
    );
    eventually(
        "the deferred contact is no longer listed",
        Duration::from_secs(30),
        || async { s.failed().await.is_empty() },
    )
    .await;
    assert_valid_events(s.sync_events());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_whose_account_never_comes_fails_then_syncs_once_the_account_is_linked() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut s = Sync::start().await;
    let db = s.db.client().await;
    db.execute(
        "INSERT INTO contacts (id, account_id, last_name, email) VALUES (20, 5, 'Orphan', 'orphan@x.test')",
        &[],
    )
    .await
    .unwrap();
    eventually(
        "the contact is listed as waiting for its account",
        Duration::from_secs(60),
        || async { !s.failed().await.is_empty() },
    )
    .await;
    let failed = s.failed().await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (
            failed[0].entity.as_str(),
            failed[0].billing_id.as_str(),
            failed[0].error_type.as_str()
        ),
        ("contacts", "20", "parent_not_linked")
    );
    assert!(failed[0].message.contains("accounts/5"), "{failed:?}");
    let errors = s.events_of("sync.error", "contacts", "20");
    assert!(
        errors
            .iter()
            .any(|e| e["error_type"] == "parent_not_linked"),
        "{errors:?}"
    );
    let records = s.events_of("sync.record", "contacts", "20");
    assert!(
        records
            .iter()
            .any(|e| e["outcome"] == "failed" && e["error_type"] == "parent_not_linked"),
        "{records:?}"
    );
    assert!(s.record_for("Contact", "20").await.is_none());

    // Nothing stopped: other records keep syncing.
    db.execute(
        "INSERT INTO accounts (id, name, code) VALUES (7, 'Unrelated', 'u7')",
        &[],
    )
    .await
    .unwrap();
    eventually("another record syncs", Duration::from_secs(30), || async {
        s.record_for("Account", "7").await.is_some()
    })
    .await;

    // Edited while waiting: the newest row is the one retried.
    db.execute(
        "UPDATE contacts SET last_name = 'Adopted' WHERE id = 20",
        &[],
    )
    .await
    .unwrap();
    eventually(
        "the edit fails waiting too",
        Duration::from_secs(30),
        || {
            let failed_twice = s
                .events_of("sync.error", "contacts", "20")
                .iter()
                .filter(|e| e["error_type"] == "parent_not_linked")
                .count()
                >= 2;
            async move { failed_twice }
        },
    )
    .await;

    // The account arrives: the contact is retried without any change of its own.
    db.execute(
        "INSERT INTO accounts (id, name, code) VALUES (5, 'Late Parent', 'p5')",
        &[],
    )
    .await
    .unwrap();
    eventually(
        "the contact is written under its account",
        Duration::from_secs(60),
        || async {
            let (Some(c), Some(a)) = (
                s.record_for("Contact", "20").await,
                s.record_for("Account", "5").await,
            ) else {
                return false;
            };
            c.fields.get("AccountId") == Some(&json!(a.id))
        },
    )
    .await;
    let contact = s.record_for("Contact", "20").await.unwrap();
    assert_eq!(contact.fields["LastName"], json!("Adopted"));
    eventually(
        "the contact is no longer listed as failed",
        Duration::from_secs(30),
        || async { s.failed().await.is_empty() },
    )
    .await;
    let records = s.events_of("sync.record", "contacts", "20");
    assert!(
        records.iter().any(|e| e["outcome"] == "created"),
        "{records:?}"
    );
    assert_valid_events(s.sync_events());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_of_accounts_that_fail_wait_for_them_and_sync_once_they_are_fixed() {
    let _slot = PIPELINE_SLOT.lock().await;
    let mut s = Sync::start().await;
    let db = s.db.client().await;
    // Account 30 is refused by Salesforce, account 32 by its transform; 34 is fine.
    db.batch_execute(
        "BEGIN;
         INSERT INTO accounts (id, name, code) VALUES (30, 'Rejected', 'r'), (32, 'Throws', 'bad'), (34, 'Fine', 'f');
         INSERT INTO contacts (id, account_id, last_name) VALUES (31, 30, 'Of Rejected'), (33, 32, 'Of Throws'), (35, 34, 'Of Fine');
         COMMIT;",
    )
    .await
    .unwrap();
    assert_written_under(&mut s, "35", "34").await;
    eventually(
        "both accounts and their contacts are listed as failed",
        Duration::from_secs(60),
        || async { s.failed().await.len() == 4 },
    )
    .await;
    // A contact taken apart from its account is first deferred behind it
    // (`awaiting_parent`); its retry then waits for the account and fails.
    let row = |e: &str, id: &str, t: &str| (e.to_string(), id.to_string(), t.to_string());
    let expected = vec![
        row("accounts", "30", "field_validation"),
        row("accounts", "32", "field_validation"),
        row("contacts", "31", "parent_not_linked"),
        row("contacts", "33", "parent_not_linked"),
    ];
    let failed = || async {
        (s.failed().await.into_iter())
            .map(|f| (f.entity, f.billing_id, f.error_type))
            .collect::<Vec<(String, String, String)>>()
    };
    eventually(
        "the contacts fail waiting for their accounts",
        PARENT_WAIT * 5,
        || async { failed().await == expected },
    )
    .await;
    assert!(
        s.events_of("sync.error", "accounts", "30")
            .iter()
            .any(|e| e["message"]
                .as_str()
                .unwrap()
                .contains("This account is rejected")),
        "the vendor's message is published"
    );
    // The refused create carried the fields it would have written.
    let refused = s.events_of("sync.record", "accounts", "30");
    assert!(
        refused.iter().any(|e| e["outcome"] == "failed"
            && e["fields"].as_array().unwrap().contains(&json!("Name"))),
        "{refused:?}"
    );

    db.batch_execute(
        "UPDATE accounts SET name = 'Accepted' WHERE id = 30;
         UPDATE accounts SET code = 'ok' WHERE id = 32;",
    )
    .await
    .unwrap();
    assert_written_under(&mut s, "31", "30").await;
    assert_written_under(&mut s, "33", "32").await;
    eventually(
        "nothing is left listed as failed",
        Duration::from_secs(30),
        || async { s.failed().await.is_empty() },
    )
    .await;
    assert_valid_events(s.sync_events());
    s.stop().await;
}
