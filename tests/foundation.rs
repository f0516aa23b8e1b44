//! The foundation every other part stands on: the real services are reachable
//! and configured as extsync needs, pipeline files validate with exact error
//! locations, the committed JSON Schema is current, and metrics are served.

mod support;

use std::process::Command;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use support::{TestDb, TestKafka};

#[tokio::test]
async fn postgres_has_logical_replication() {
    let db = TestDb::create().await;
    let client = db.client().await;
    let wal: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal, "logical");
    let slots: String = client
        .query_one("SHOW max_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        slots.parse::<u32>().unwrap() >= 32,
        "max_replication_slots = {slots}"
    );
    let can_replicate: bool = client
        .query_one(
            "SELECT rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(can_replicate, "the test role must be replication-capable");
    // A logical slot can actually be created and dropped in the test database.
    let slot = format!("{}_slot", db.name);
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
}

#[tokio::test]
async fn kafka_transactions_are_read_committed() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("roundtrip", 1).await;

    let producer: FutureProducer = kafka
        .config()
        .set("transactional.id", format!("{}-tx", kafka.prefix))
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();

    producer.begin_transaction().unwrap();
    for i in 0..3 {
        let payload = format!("committed-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();

    producer.begin_transaction().unwrap();
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("aborted"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer.abort_transaction(Duration::from_secs(30)).unwrap();

    producer.begin_transaction().unwrap();
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("last"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();

    let consumer: StreamConsumer = kafka
        .config()
        .set("group.id", format!("{}-group", kafka.prefix))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("committed messages arrive within 30 s")
            .unwrap();
        seen.push(String::from_utf8(msg.payload().unwrap().to_vec()).unwrap());
    }
    assert_eq!(seen, ["committed-0", "committed-1", "committed-2", "last"]);
}

fn extsync(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_extsync"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run extsync");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_pipeline_validates() {
    let (code, stdout, stderr) = extsync(&["validate", "pipelines/demo.yaml"]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn every_pipeline_in_the_repo_validates() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            extsync::config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// Writes the demo pipeline with one substitution applied and validates it.
fn validate_broken(from: &str, to: &str) -> String {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/demo.yaml"))
        .unwrap();
    assert!(demo.contains(from), "demo.yaml no longer contains {from:?}");
    let dir = std::env::temp_dir().join(support::unique("extsync-validate-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.yaml");
    std::fs::write(&file, demo.replacen(from, to, 1)).unwrap();
    let (code, stdout, stderr) = extsync(&["validate", file.to_str().unwrap()]);
    assert_ne!(code, 0, "a broken pipeline must fail; stdout: {stdout}");
    assert!(stdout.is_empty(), "errors go to stderr: {stdout}");
    stderr.trim().replace(file.to_str().unwrap(), "FILE")
}

/// Line and column (1-based) of the first occurrence of `needle` in the demo file.
fn demo_position(needle: &str) -> (usize, usize) {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/demo.yaml"))
        .unwrap();
    let at = demo.find(needle).unwrap();
    let line = demo[..at].matches('\n').count() + 1;
    let col = at - demo[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    (line, col)
}

#[test]
fn unknown_enum_variant_names_file_line_column_and_path() {
    let from = "direction: alguna_to_external, transform: number_to_currency";
    let (line, col) = demo_position(from);
    let err = validate_broken(from, "direction: both, transform: number_to_currency");
    let expected = format!(
        "FILE:{line}:{}: integrations.salesforce.entities.accounts.mappings[3].direction: unknown variant `both`, expected one of `alguna_to_external`, `external_to_alguna`, `bidirectional`",
        col + "direction: ".len()
    );
    assert_eq!(err, expected);
}

#[test]
fn unknown_field_is_rejected_at_its_line() {
    let (line, col) = demo_position("perField:");
    let err = validate_broken("perField:", "perFeld:");
    assert_eq!(
        err,
        format!(
            "FILE:{line}:{col}: integrations.salesforce.entities.accounts.conflictResolution.perFeld: unknown field `perFeld`, expected `default` or `perField`"
        )
    );
}

/// Line and column of the value that follows `key` in the first occurrence
/// of `needle` (which starts with `key`) in the demo file.
fn demo_value_position(needle: &str, key: &str) -> (usize, usize) {
    assert!(needle.starts_with(key), "{needle:?} starts with {key:?}");
    let (line, col) = demo_position(needle);
    (line, col + key.len())
}

#[test]
fn literal_secret_is_rejected_at_its_value_and_never_printed() {
    let from = "clientSecret: ${SALESFORCE_CLIENT_SECRET}";
    let (line, col) = demo_value_position(from, "clientSecret: ");
    let err = validate_broken(from, "clientSecret: sup3r-s3cret");
    assert_eq!(
        err,
        format!(
            "FILE:{line}:{col}: integrations.salesforce.credentials.clientSecret: credentials must be an environment variable reference like ${{SALESFORCE_CLIENT_SECRET}}, not a literal value"
        )
    );
    assert!(!err.contains("sup3r-s3cret"), "secret leaked: {err}");
}

#[test]
fn bad_cron_schedule_is_rejected_at_its_value() {
    let from = "schedule: \"*/5 * * * *\"";
    let (line, col) = demo_value_position(from, "schedule: ");
    let err = validate_broken(from, "schedule: \"*/5 * * *\"");
    assert_eq!(
        err,
        format!(
            "FILE:{line}:{col}: integrations.salesforce.schedule: invalid schedule \"*/5 * * *\": expected 5 cron fields (minute hour day-of-month month day-of-week)"
        )
    );
    let err = validate_broken(from, "schedule: \"*/5 * * * funday\"");
    let prefix = format!(
        "FILE:{line}:{col}: integrations.salesforce.schedule: invalid schedule \"*/5 * * * funday\": "
    );
    assert!(err.starts_with(&prefix), "{err}");
}

#[test]
fn bad_topic_prefix_is_rejected_at_its_value() {
    let from = "topicPrefix: extsync";
    let (line, col) = demo_value_position(from, "topicPrefix: ");
    let err = validate_broken(from, "topicPrefix: \"ext sync\"");
    assert_eq!(
        err,
        format!(
            "FILE:{line}:{col}: kafka.topicPrefix: invalid topic prefix \"ext sync\": use letters, digits, '.', '_' or '-' (Kafka topic characters)"
        )
    );
}

#[test]
fn per_field_strategy_must_name_a_mapped_field() {
    let (line, col) = demo_position("email: manual");
    let err = validate_broken("email: manual", "emial: manual");
    assert_eq!(
        err,
        format!(
            "FILE:{line}:{col}: integrations.salesforce.entities.accounts.conflictResolution.perField.emial: no mapping's `alguna` field is \"emial\""
        )
    );
}

#[test]
fn custom_transform_needs_a_function() {
    let from = "transform: custom, function: ";
    let (line, col) = demo_position(from);
    let col = col + "function: ".len();
    let err = validate_broken(from, "function: ");
    assert_eq!(
        err,
        format!(
            "FILE:{line}:{col}: integrations.hubspot.entities.contacts.mappings[3].function: `function` is only used with `transform: custom`"
        )
    );
}

#[test]
fn bad_on_not_found_is_rejected_at_its_value() {
    let from = "onNotFound: skip";
    let (line, col) = demo_value_position(from, "onNotFound: ");
    let err = validate_broken(from, "onNotFound: recreate");
    assert_eq!(
        err,
        format!(
            "FILE:{line}:{col}: integrations.salesforce.entities.accounts.onNotFound: unknown variant `recreate`, expected `skip` or `create`"
        )
    );
}

#[test]
fn partitions_must_be_in_range() {
    let from = "partitions: 2";
    let (line, col) = demo_value_position(from, "partitions: ");
    for bad in ["partitions: 0", "partitions: 1001"] {
        let err = validate_broken(from, bad);
        assert_eq!(
            err,
            format!("FILE:{line}:{col}: kafka.partitions: partitions must be between 1 and 1000"),
            "{bad}"
        );
    }
}

#[test]
fn state_cache_capacity_must_be_positive() {
    let from = "stateCacheCapacity: 200000";
    let (line, col) = demo_value_position(from, "stateCacheCapacity: ");
    let err = validate_broken(from, "stateCacheCapacity: 0");
    assert_eq!(
        err,
        format!(
            "FILE:{line}:{col}: processor.stateCacheCapacity: stateCacheCapacity must be at least 1"
        )
    );
    let err = validate_broken(from, "stateCacheCapacity: lots");
    assert!(
        err.starts_with(&format!(
            "FILE:{line}:{col}: processor.stateCacheCapacity: invalid type"
        )),
        "{err}"
    );
}

/// The demo pipeline with `edit` applied, parsed.
fn demo_with(from: &str, to: &str) -> extsync::config::Pipeline {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/demo.yaml"))
        .unwrap();
    assert!(demo.contains(from), "demo.yaml no longer contains {from:?}");
    extsync::config::parse_str(&demo.replacen(from, to, 1), "demo.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn state_cache_capacity_is_read_and_defaults_to_the_constant() {
    let set = demo_with("stateCacheCapacity: 200000", "stateCacheCapacity: 1500");
    assert_eq!(set.processor.state_cache_capacity, 1500);
    let unset = demo_with("processor:\n  stateCacheCapacity: 200000\n", "");
    assert_eq!(
        unset.processor.state_cache_capacity,
        extsync::config::DEFAULT_STATE_CACHE_CAPACITY
    );
}

#[test]
fn on_not_found_is_read_per_entity_and_defaults_to_skip() {
    use extsync::config::OnNotFound;
    use extsync::delivery::NotFoundPolicy;
    let p = demo_with("onNotFound: skip", "onNotFound: create");
    let sf = p
        .integrations
        .iter()
        .find(|(id, _)| id.as_str() == "salesforce")
        .unwrap()
        .1;
    let entity = |name: &str| {
        sf.entities
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .unwrap()
            .1
    };
    assert_eq!(entity("accounts").on_not_found, OnNotFound::Create);
    assert_eq!(entity("subscriptions").on_not_found, OnNotFound::Skip);

    let writer = extsync::processor::service::writer_config(sf);
    assert_eq!(writer.not_found_for("accounts"), NotFoundPolicy::Create);
    assert_eq!(writer.not_found_for("subscriptions"), NotFoundPolicy::Skip);
    assert_eq!(writer.not_found_for("unknown"), NotFoundPolicy::Skip);
}

#[test]
fn malformed_yaml_and_missing_file_are_reported() {
    let err = validate_broken("postgres:\n", "postgres: [\n");
    assert!(err.starts_with("FILE:"), "{err}");
    let (code, _, stderr) = extsync(&["validate", "pipelines/does-not-exist.yaml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("pipelines/does-not-exist.yaml: cannot read file"),
        "{stderr}"
    );
}

/// Compares a committed schema with the generated one; `EXTSYNC_BLESS=1`
/// rewrites the file instead.
fn assert_schema_current(file: &str, generated: String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(file);
    if std::env::var_os("EXTSYNC_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("schemas/{file} exists"));
    assert!(
        committed == generated,
        "schemas/{file} is stale: regenerate with `EXTSYNC_BLESS=1 cargo test --test foundation schema`"
    );
}

#[test]
fn pipeline_schema_is_current() {
    assert_schema_current("pipeline.schema.json", extsync::config::schema_json());
}

#[test]
fn external_change_schema_is_current() {
    assert_schema_current(
        "external-change.schema.json",
        extsync::ingest::event::schema_json(),
    );
}

#[test]
fn sync_event_schema_is_current() {
    assert_schema_current(
        "sync-event.schema.json",
        extsync::processor::events::schema_json(),
    );
}

#[test]
fn extsync_schema_prints_each_committed_schema() {
    for (which, file) in [
        (None, "pipeline.schema.json"),
        (Some("pipeline"), "pipeline.schema.json"),
        (Some("sync-event"), "sync-event.schema.json"),
        (Some("external-change"), "external-change.schema.json"),
        (Some("cdc-envelope"), "cdc-envelope.schema.json"),
        (Some("cdc-transaction"), "cdc-transaction.schema.json"),
    ] {
        let mut args = vec!["schema"];
        args.extend(which);
        let (code, stdout, stderr) = extsync(&args);
        assert_eq!(code, 0, "{stderr}");
        let committed = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas")
                .join(file),
        )
        .unwrap();
        assert!(
            stdout == committed,
            "`extsync {}` differs from schemas/{file}",
            args.join(" ")
        );
    }
}

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    extsync::telemetry::init_metrics(&addr).unwrap();
    metrics::counter!("extsync_test_events_total").increment(3);
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(resp) = reqwest::get(format!("http://{addr}/metrics")).await {
            body = resp.text().await.unwrap();
            if body.contains("extsync_test_events_total") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("extsync_test_events_total 3"), "{body}");
    assert!(body.contains("extsync_build_info"), "{body}");
}

#[test]
fn call_client_names_salesforce_writes_and_is_salesforce_only() {
    use extsync::connectors::salesforce;
    let set = demo_with(
        "provider: salesforce\n",
        "provider: salesforce\n    callClient: billing-eu\n",
    );
    let id: extsync::config::Name = "salesforce".parse().unwrap();
    let sf = &set.integrations[&id];
    assert_eq!(salesforce::call_client_of(sf), "billing-eu");
    let unset = demo_with("provider: salesforce\n", "provider: salesforce\n");
    let sf = unset
        .integrations
        .values()
        .next()
        .expect("salesforce first");
    assert_eq!(salesforce::call_client_of(sf), salesforce::CALL_CLIENT);

    let from = "provider: hubspot\n";
    let (line, _) = demo_position(from);
    let err = validate_broken(from, "provider: hubspot\n    callClient: billing-eu\n");
    assert_eq!(
        err,
        format!(
            "FILE:{}:5: integrations.hubspot.callClient: callClient applies to Salesforce only, not to hubspot",
            line + 1
        )
    );
    let from = "provider: salesforce\n";
    let (line, _) = demo_position(from);
    let err = validate_broken(from, "provider: salesforce\n    callClient: Billing EU\n");
    assert!(
        err.starts_with(&format!(
            "FILE:{}:17: integrations.salesforce.callClient: ",
            line + 1
        )),
        "{err}"
    );
}
