//! Two-way sync with HubSpot end to end: real Postgres (captured by logical
//! replication), real Kafka, the HubSpot simulator sending signed webhooks to
//! extsync's receiver. Billing contacts become HubSpot contacts (a custom
//! transform on the way), an existing contact is linked by its email instead
//! of duplicated, edits flow both ways, and nothing echoes.

mod support;

use std::sync::Once;
use std::time::Duration;

use extsync::connectors::hubspot::{AuthMode, HubSpotConnector};
use extsync::connectors::{Connector, ExternalRecord, RequestBudget, WriteOp, WriteOutcome};
use extsync::processor::service::Loops;
use extsync::simulators::RunningSimulator;
use extsync::simulators::hubspot::limits::LimitsConfig;
use extsync::simulators::hubspot::{self, HubSpotConfig, HubSpotSim};
use serde_json::{Value, json};
use support::{TestDb, TestKafka, eventually};
use tokio_util::sync::CancellationToken;

static ENV: Once = Once::new();

fn credentials_env() {
    ENV.call_once(|| {
        // SAFETY: set once, before any task of this test binary reads them.
        unsafe {
            std::env::set_var("TEST_HS_CLIENT_ID", hubspot::DEFAULT_CLIENT_ID);
            std::env::set_var("TEST_HS_CLIENT_SECRET", hubspot::DEFAULT_CLIENT_SECRET);
            std::env::set_var("TEST_HS_REFRESH_TOKEN", hubspot::DEFAULT_REFRESH_TOKEN);
        }
    });
}

const SCHEMA: &str = "
CREATE TABLE contacts (
    id          bigint PRIMARY KEY,
    email       text NOT NULL,
    first_name  text,
    phone       text,
    external_id text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);";

struct Sync {
    db: TestDb,
    _kafka: TestKafka,
    sim: RunningSimulator,
    _state: HubSpotSim,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    processor: support::PausableProcessor,
}

impl Sync {
    /// Capture, ingest (webhooks, with a sweep behind them) and the
    /// processor in this process, against a fresh portal.
    async fn start() -> Sync {
        Self::start_resolving("latest_wins").await
    }

    /// [`Sync::start`] with `strategy` as the contacts' default conflict
    /// resolution.
    async fn start_resolving(strategy: &str) -> Sync {
        Self::start_with(strategy, 2).await
    }

    /// [`Sync::start_resolving`] with sweeps `sweep_secs` apart.
    async fn start_with(strategy: &str, sweep_secs: u64) -> Sync {
        credentials_env();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("EXTSYNC_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let db = TestDb::create().await;
        db.client().await.batch_execute(SCHEMA).await.unwrap();
        let kafka = TestKafka::new();
        let (sim, state) = hubspot::start(HubSpotConfig {
            limits: LimitsConfig::unlimited(),
            ..HubSpotConfig::default()
        })
        .await
        .unwrap();
        let yaml = format!(
            r#"
name: {name}
postgres: {{ url: "{db}", tables: [public.contacts], heartbeatSecs: 1 }}
kafka: {{ brokers: "{brokers}", topicPrefix: "{prefix}" }}
telemetry: {{ metricsAddress: "" }}
ingest: {{ webhookAddress: "127.0.0.1:0", sweepSecs: {sweep_secs}, pollOverlapSecs: 5 }}
integrations:
  hubspot:
    provider: hubspot
    baseUrl: "{base}"
    credentials:
      clientId: ${{TEST_HS_CLIENT_ID}}
      clientSecret: ${{TEST_HS_CLIENT_SECRET}}
      refreshToken: ${{TEST_HS_REFRESH_TOKEN}}
    rateLimit: {{ requests: 10000, burst: 1000 }}
    entities:
      contacts:
        externalObject: contacts
        table: public.contacts
        mappings:
          - {{ alguna: email, external: email }}
          - {{ alguna: firstName, external: firstname }}
          - {{ alguna: phone, external: phone, direction: alguna_to_external, transform: custom, function: "return value == null ? null : value.replace(/[^0-9+]/g, '');" }}
        conflictResolution:
          default: {strategy}
        matching:
          fields: [email]
          createIfNotFound: true
"#,
            name = support::unique("h"),
            db = db.url,
            brokers = kafka.brokers,
            prefix = kafka.prefix,
            base = sim.base_url()
        );
        let pipeline = extsync::config::parse_str(&yaml, "sync.yaml").unwrap();
        let stop = CancellationToken::new();
        let mut tasks = vec![support::spawn_capture(&pipeline, &stop)];
        let ingest = extsync::ingest::service::start(&pipeline, stop.clone())
            .await
            .unwrap();
        let webhook_url = format!("http://{}/webhooks/hubspot", ingest.webhook_addr.unwrap());
        tasks.push(tokio::spawn(ingest.join()));
        let loops = Loops::prepare(&pipeline).await.unwrap();
        tasks.push(loops.spawn_router(stop.clone()));
        let resp = reqwest::Client::new()
            .post(format!("{}/__admin/webhooks", sim.base_url()))
            .json(&json!({"targetUrl": webhook_url, "retryBaseMs": 50}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let mut sync = Sync {
            db,
            _kafka: kafka,
            sim,
            _state: state,
            stop,
            tasks,
            processor: support::PausableProcessor::new(loops),
        };
        sync.resume();
        sync
    }

    fn resume(&mut self) {
        self.processor.resume();
    }

    async fn pause(&mut self) {
        self.processor.pause().await;
    }

    /// A person working in HubSpot (private-app token).
    fn person(&self) -> HubSpotConnector {
        HubSpotConnector::new(
            self.sim.base_url(),
            AuthMode::PrivateApp(hubspot::DEFAULT_PRIVATE_APP_TOKEN.into()),
            RequestBudget::unlimited(),
        )
    }

    /// A contact a person creates in HubSpot.
    async fn person_creates(&self, email: &str, first_name: &str) -> WriteOutcome {
        self.person()
            .write(
                "contacts",
                WriteOp::Create {
                    fields: json!({ "email": email, "firstname": first_name })
                        .as_object()
                        .unwrap()
                        .clone(),
                },
            )
            .await
            .unwrap()
    }

    async fn contacts(&self) -> Vec<ExternalRecord> {
        let c = self.person();
        let mut out = Vec::new();
        let mut page = None;
        loop {
            let p = c
                .list_changes(
                    "contacts",
                    &extsync::connectors::Cursor::start(),
                    page.as_deref(),
                )
                .await
                .unwrap();
            out.extend(p.records);
            match p.next_page {
                Some(n) => page = Some(n),
                None => return out,
            }
        }
    }

    async fn contact_by_email(&self, email: &str) -> Vec<ExternalRecord> {
        self.contacts()
            .await
            .into_iter()
            .filter(|r| !r.deleted && r.fields.get("email") == Some(&json!(email)))
            .collect()
    }

    /// Writes extsync made (OAuth app calls are `INTEGRATION` changes).
    async fn extsync_writes(&self) -> Vec<Value> {
        support::simulator_writes(&self.sim.base_url(), "")
            .await
            .into_iter()
            .filter(|w| w["changeSource"] == json!("INTEGRATION"))
            .collect()
    }

    /// Whether billing contact `billing_id` is linked to `external_id`.
    async fn linked(&self, billing_id: &str, external_id: &str) -> bool {
        self.db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM extsync.records WHERE billing_id = $1 AND external_id = $2",
                &[&billing_id, &external_id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    }

    async fn first_name(&self, id: i64) -> Option<String> {
        self.db
            .client()
            .await
            .query_one("SELECT first_name FROM contacts WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0)
    }

    async fn stop(mut self) {
        if self.processor.is_running() {
            self.processor.pause().await;
        }
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        self.db.drop_idle_slots().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_sync_both_ways_linking_by_email_without_echo() {
    let s = Sync::start().await;
    let person = s.person();
    // A contact that already exists in HubSpot, before extsync knows of it.
    let existing = s.person_creates("old@acme.test", "Olga").await;

    let db = s.db.client().await;
    // Match rules look among the external records extsync has seen.
    eventually(
        "extsync has seen the existing contact",
        Duration::from_secs(60),
        || async {
            db.query_opt(
                "SELECT 1 FROM extsync.external_index WHERE external_id = $1",
                &[&existing.id],
            )
            .await
            .unwrap()
            .is_some()
        },
    )
    .await;
    db.batch_execute(
        "INSERT INTO contacts (id, email, first_name, phone) VALUES
            (1, 'new@acme.test', 'Nia', '+1 (555) 010-0000'),
            (2, 'old@acme.test', 'Olga', NULL)",
    )
    .await
    .unwrap();

    eventually(
        "the new contact exists",
        Duration::from_secs(60),
        || async { !s.contact_by_email("new@acme.test").await.is_empty() },
    )
    .await;
    let new = s.contact_by_email("new@acme.test").await.remove(0);
    assert_eq!(new.fields["firstname"], json!("Nia"));
    assert_eq!(
        new.fields["phone"],
        json!("+15550100000"),
        "the custom transform ran"
    );

    // The billing row with the existing email is linked, not created again.
    eventually("contact 2 is linked", Duration::from_secs(60), || {
        s.linked("2", &existing.id)
    })
    .await;
    let olgas = s.contact_by_email("old@acme.test").await;
    assert_eq!(olgas.len(), 1, "a duplicate contact was created: {olgas:?}");

    // A person edits in HubSpot: the webhook brings it to the billing row.
    person
        .write(
            "contacts",
            WriteOp::Update {
                id: new.id.clone(),
                fields: json!({"firstname": "Nina"}).as_object().unwrap().clone(),
            },
        )
        .await
        .unwrap();
    eventually(
        "the billing row follows HubSpot",
        Duration::from_secs(60),
        || async { s.first_name(1).await.as_deref() == Some("Nina") },
    )
    .await;

    // A billing edit goes out; afterwards nothing moves any more.
    db.execute(
        "UPDATE contacts SET phone = '555-0199', updated_at = now() WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    eventually("the phone is updated", Duration::from_secs(60), || async {
        s.contact_by_email("new@acme.test")
            .await
            .first()
            .is_some_and(|c| c.fields["phone"] == json!("5550199"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = s.extsync_writes().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        s.extsync_writes().await.len(),
        writes.len(),
        "extsync kept writing: a loop"
    );
    assert!(
        writes.len() >= 2,
        "the create and the phone update: {writes:?}"
    );
    assert_eq!(s.first_name(1).await.as_deref(), Some("Nina"));
    // The rename was never written back to HubSpot.
    assert!(
        !writes
            .iter()
            .any(|w| w["properties"]["firstname"] == json!("Nina")),
        "an echo was written back: {writes:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_created_in_hubspot_before_extsync_saw_it_is_linked_not_duplicated() {
    // No sweeps, and webhooks dropped: extsync never hears of the contact a
    // person creates, so the billing row with its email is created, and
    // HubSpot refuses the create (409, `Existing ID`).
    let s = Sync::start_with("latest_wins", 3600).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/__admin/webhooks", s.sim.base_url()))
        .json(&json!({"drop": true}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let existing = s.person_creates("dup@acme.test", "Olga").await;
    let db = s.db.client().await;
    db.execute(
        "INSERT INTO contacts (id, email, first_name) VALUES (3, 'dup@acme.test', 'Olivia')",
        &[],
    )
    .await
    .unwrap();

    eventually(
        "the billing row is linked to the existing contact",
        Duration::from_secs(60),
        || s.linked("3", &existing.id),
    )
    .await;
    // Its change was re-queued and merged: the billing edit is the later
    // one (latest_wins), so HubSpot takes its first name.
    eventually(
        "the existing contact takes the billing values",
        Duration::from_secs(60),
        || async {
            s.contact_by_email("dup@acme.test")
                .await
                .iter()
                .any(|c| c.id == existing.id && c.fields["firstname"] == json!("Olivia"))
        },
    )
    .await;
    let dups = s.contact_by_email("dup@acme.test").await;
    assert_eq!(dups.len(), 1, "a duplicate contact was created: {dups:?}");
    eventually(
        "the record no longer counts as failed",
        Duration::from_secs(30),
        || async {
            db.query_one(
                "SELECT count(*) FROM extsync.failed_records WHERE billing_id = '3'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 0
        },
    )
    .await;
    assert_eq!(s.first_name(3).await.as_deref(), Some("Olivia"));
    // Both sides held a first name the other had never seen: settled by
    // the strategy and recorded, like any conflict.
    let settled: Vec<(String, String)> = db
        .query(
            "SELECT field, winner FROM extsync.conflicts WHERE billing_id = '3' AND external_id = $1",
            &[&existing.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        settled,
        [("firstName".to_string(), "alguna".to_string())],
        "{settled:?}"
    );

    // A second billing row with that email is refused the same way, but the
    // contact is already linked to row 3: row 4 fails and links nothing.
    db.execute(
        "INSERT INTO contacts (id, email, first_name) VALUES (4, 'dup@acme.test', 'Otto')",
        &[],
    )
    .await
    .unwrap();
    eventually("row 4 fails already_exists", Duration::from_secs(60), || async {
        db.query_opt(
            "SELECT message FROM extsync.failed_records WHERE billing_id = '4' AND error_type = 'already_exists'",
            &[],
        )
        .await
        .unwrap()
        .is_some_and(|r| r.get::<_, String>(0).contains("linked to another billing record"))
    })
    .await;
    let links: i64 = db
        .query_one(
            "SELECT count(*) FROM extsync.records WHERE external_id = $1",
            &[&existing.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(links, 1, "the contact is linked to one billing row");
    let contact = s.contact_by_email("dup@acme.test").await;
    assert_eq!(contact.len(), 1, "{contact:?}");
    assert_eq!(contact[0].fields["firstname"], json!("Olivia"));
    s.stop().await;
}

/// Contact 1 created and linked, its creation's webhook seen; then, with the
/// processor stopped, its first name edited in billing and in HubSpot, a
/// second apart, in the order given; then the processor resumes. Returns
/// the HubSpot contact's id.
async fn first_name_edited_on_both_sides(s: &mut Sync, billing_first: bool) -> String {
    let db = s.db.client().await;
    db.execute(
        "INSERT INTO contacts (id, email, first_name) VALUES (1, 'c@acme.test', 'Nia')",
        &[],
    )
    .await
    .unwrap();
    eventually(
        "contact 1 is linked and seen",
        Duration::from_secs(60),
        || async {
            db.query_opt(
                "SELECT 1 FROM extsync.records WHERE billing_id = '1'
                AND external_id IS NOT NULL AND external_changed_at IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .is_some()
        },
    )
    .await;
    let id = s.contact_by_email("c@acme.test").await.remove(0).id;
    s.pause().await;
    let billing_edit = || async {
        db.execute(
            "UPDATE contacts SET first_name = 'Billing', updated_at = now() WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    };
    let hubspot_edit = || async {
        s.person()
            .write(
                "contacts",
                WriteOp::Update {
                    id: id.clone(),
                    fields: json!({"firstname": "HubSpot"}).as_object().unwrap().clone(),
                },
            )
            .await
            .unwrap();
    };
    if billing_first {
        billing_edit().await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        hubspot_edit().await;
    } else {
        hubspot_edit().await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        billing_edit().await;
    }
    // Both changes reach Kafka (webhook, capture) before the processor runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.resume();
    id
}

/// Waits until both sides hold `name`, then checks the one conflict
/// recorded: strategy, winner and both values.
async fn converged_by_one_conflict(s: &Sync, name: &str, strategy: &str, winner: &str) {
    eventually("both sides agree", Duration::from_secs(60), || async {
        s.first_name(1).await.as_deref() == Some(name)
            && s.contact_by_email("c@acme.test")
                .await
                .first()
                .is_some_and(|c| c.fields["firstname"] == json!(name))
    })
    .await;
    let rows = s
        .db
        .client()
        .await
        .query(
            "SELECT field, strategy, winner, alguna_value, external_value FROM extsync.conflicts
              WHERE billing_id = '1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one conflict recorded");
    let r = &rows[0];
    assert_eq!(r.get::<_, String>(0), "firstName");
    assert_eq!(
        (r.get::<_, String>(1), r.get::<_, String>(2)),
        (strategy.to_string(), winner.to_string())
    );
    assert_eq!(r.get::<_, Value>(3), json!("Billing"));
    assert_eq!(r.get::<_, Value>(4), json!("HubSpot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_wins_follows_hubspots_modification_time() {
    let mut s = Sync::start().await;
    first_name_edited_on_both_sides(&mut s, true).await;
    converged_by_one_conflict(&s, "HubSpot", "latest_wins", "external").await;
    s.stop().await;

    let mut s = Sync::start().await;
    first_name_edited_on_both_sides(&mut s, false).await;
    converged_by_one_conflict(&s, "Billing", "latest_wins", "alguna").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alguna_wins_over_a_later_hubspot_edit() {
    let mut s = Sync::start_resolving("alguna_wins").await;
    first_name_edited_on_both_sides(&mut s, true).await;
    converged_by_one_conflict(&s, "Billing", "alguna_wins", "alguna").await;
    s.stop().await;
}
