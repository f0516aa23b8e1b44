//! Billing writer against the real PostgreSQL: origin tagging seen in the
//! logical decoding stream, the version guard, catalog checks, value
//! conversion and per-write isolation.

mod support;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use extsync::connectors::ErrorClass;
use extsync::delivery::{
    BillingError, BillingWrite, BillingWriter, BillingWriterConfig, OutcomeKind,
};
use serde_json::{Map, Value, json};
use support::{TestDb, unique};

const SCHEMA: &str = "
    CREATE SCHEMA billing;
    CREATE TABLE billing.accounts (
        id bigint PRIMARY KEY,
        name text NOT NULL,
        mrr numeric(12,2),
        active boolean,
        seats integer,
        billing_address jsonb,
        tags text[],
        renewed_at timestamptz,
        updated_at timestamptz
    );
    INSERT INTO billing.accounts (id, name, updated_at)
    VALUES (1, 'Acme', '2024-01-01T00:00:00Z'), (2, 'Globex', '2024-01-01T00:00:00Z'),
           (3, 'Initech', '2024-01-01T00:00:00Z');
";

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

fn write(id: i64, columns: Value, as_of: &str) -> BillingWrite {
    BillingWrite {
        table: "billing.accounts".into(),
        key: obj(json!({ "id": id })),
        columns: obj(columns),
        as_of: at(as_of),
    }
}

struct Setup {
    db: TestDb,
    client: tokio_postgres::Client,
    origin: String,
    writer: BillingWriter,
}

async fn setup() -> Setup {
    let db = TestDb::create().await;
    let client = db.client().await;
    client.batch_execute(SCHEMA).await.expect("schema");
    let origin = unique("extsync_t");
    let writer = BillingWriter::connect(
        &db.url,
        BillingWriterConfig {
            origin: origin.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("billing writer connects");
    Setup {
        db,
        client,
        origin,
        writer,
    }
}

async fn drop_origin(client: &tokio_postgres::Client, origin: &str) {
    client
        .execute("SELECT pg_replication_origin_drop($1)", &[&origin])
        .await
        .expect("dropping the test origin");
}

/// The pgoutput messages of each decoded transaction, as raw bytes.
fn transactions(messages: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    let mut txs: Vec<Vec<Vec<u8>>> = Vec::new();
    for m in messages {
        if m.first() == Some(&b'B') {
            txs.push(Vec::new());
        }
        if let Some(tx) = txs.last_mut() {
            tx.push(m);
        }
    }
    txs
}

/// The origin name of a transaction's `O` message (byte, LSN, name\0).
fn origin_of(tx: &[Vec<u8>]) -> Option<String> {
    let m = tx.iter().find(|m| m.first() == Some(&b'O'))?;
    let name = &m[9..m.len() - 1];
    Some(String::from_utf8(name.to_vec()).expect("origin name is UTF-8"))
}

#[tokio::test]
async fn billing_writes_carry_the_replication_origin_in_the_wal() {
    let s = setup().await;
    let slot = unique("t_slot_");
    s.client
        .batch_execute("CREATE PUBLICATION delivery_pub FOR TABLE billing.accounts")
        .await
        .unwrap();
    s.client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();

    let outcomes = s
        .writer
        .write(&[write(
            1,
            json!({"name": "Acme Corp"}),
            "2024-02-01T00:00:00Z",
        )])
        .await;
    s.client
        .batch_execute("UPDATE billing.accounts SET name = 'Globex Inc' WHERE id = 2")
        .await
        .unwrap();
    let rows = s
        .client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', 'delivery_pub')",
            &[&slot],
        )
        .await;
    s.client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .expect("dropping the test slot");
    drop_origin(&s.client, &s.origin).await;

    let outcomes = outcomes.expect("billing write");
    assert_eq!(outcomes[0].kind, OutcomeKind::Updated);
    let messages: Vec<Vec<u8>> = rows.unwrap().iter().map(|r| r.get(0)).collect();
    let txs = transactions(messages);
    assert_eq!(txs.len(), 2, "the writer's transaction and the plain one");
    assert_eq!(origin_of(&txs[0]).as_deref(), Some(s.origin.as_str()));
    assert_eq!(
        origin_of(&txs[1]),
        None,
        "a write outside extsync has no origin"
    );
    assert!(
        txs[0].iter().any(|m| m[0] == b'U'),
        "the update is in the tagged transaction"
    );
}

#[tokio::test]
async fn an_older_change_never_overwrites_a_newer_row() {
    let s = setup().await;
    let name = |id: i64| {
        let c = &s.client;
        async move {
            let r = c
                .query_one(
                    "SELECT name, updated_at FROM billing.accounts WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (r.get::<_, String>(0), r.get::<_, DateTime<Utc>>(1))
        }
    };

    let newer = s
        .writer
        .write(&[write(1, json!({"name": "v3"}), "2024-03-01T00:00:00Z")])
        .await
        .unwrap();
    assert_eq!(newer[0].kind, OutcomeKind::Updated);
    assert_eq!(newer[0].billing_id, "1");
    assert_eq!(name(1).await, ("v3".into(), at("2024-03-01T00:00:00Z")));

    let older = s
        .writer
        .write(&[write(1, json!({"name": "v2"}), "2024-02-01T00:00:00Z")])
        .await
        .unwrap();
    assert_eq!(older[0].kind, OutcomeKind::Skipped);
    assert_eq!(name(1).await, ("v3".into(), at("2024-03-01T00:00:00Z")));

    let replay = s
        .writer
        .write(&[write(1, json!({"name": "v3"}), "2024-03-01T00:00:00Z")])
        .await
        .unwrap();
    assert_eq!(
        replay[0].kind,
        OutcomeKind::Updated,
        "the same version applies again, unchanged"
    );

    let t = at("2024-03-01T00:00:00Z") + ChronoDuration::milliseconds(1);
    let later = s
        .writer
        .write(&[BillingWrite {
            as_of: t,
            ..write(1, json!({"name": "v4"}), "2024-01-01T00:00:00Z")
        }])
        .await
        .unwrap();
    assert_eq!(later[0].kind, OutcomeKind::Updated);
    assert_eq!(name(1).await, ("v4".into(), t));

    s.client
        .batch_execute(
            "UPDATE billing.accounts SET name = 'by hand', updated_at = now() WHERE id = 2",
        )
        .await
        .unwrap();
    let behind = s
        .writer
        .write(&[write(2, json!({"name": "stale"}), "2024-06-01T00:00:00Z")])
        .await
        .unwrap();
    assert_eq!(
        behind[0].kind,
        OutcomeKind::Skipped,
        "a change made by a person since wins"
    );
    assert_eq!(name(2).await.0, "by hand");
    drop_origin(&s.client, &s.origin).await;
}

#[tokio::test]
async fn an_unknown_column_rejects_the_batch_and_writes_nothing() {
    let s = setup().await;
    let err = s
        .writer
        .write(&[
            write(1, json!({"name": "fine"}), "2024-02-01T00:00:00Z"),
            write(
                2,
                json!({"name": "fine", "nmae": "typo"}),
                "2024-02-01T00:00:00Z",
            ),
        ])
        .await
        .expect_err("unknown column");
    assert!(
        matches!(&err, BillingError::UnknownColumn { table, column } if table == "billing.accounts" && column == "nmae"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "table billing.accounts has no column \"nmae\""
    );
    let names: Vec<String> = s
        .client
        .query("SELECT name FROM billing.accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["Acme", "Globex", "Initech"]);

    let err = s
        .writer
        .write(&[BillingWrite {
            table: "billing.nope".into(),
            ..write(1, json!({"name": "x"}), "2024-02-01T00:00:00Z")
        }])
        .await
        .expect_err("unknown table");
    assert_eq!(
        err.to_string(),
        "table billing.nope does not exist in the billing database"
    );

    let err = s
        .writer
        .write(&[BillingWrite {
            key: obj(json!({"uuid": 1})),
            ..write(1, json!({"name": "x"}), "2024-02-01T00:00:00Z")
        }])
        .await
        .expect_err("unknown key column");
    assert!(matches!(err, BillingError::UnknownColumn { column, .. } if column == "uuid"));
    drop_origin(&s.client, &s.origin).await;
}

#[tokio::test]
async fn json_values_are_converted_to_the_column_types() {
    let s = setup().await;
    let hostile = "Robert'); DROP TABLE billing.accounts; --";
    let out = s
        .writer
        .write(&[
            write(
                1,
                json!({
                    "name": hostile,
                    "mrr": 1234.5,
                    "active": true,
                    "seats": 12,
                    "billing_address": {"line1": "1 Main St", "city": "Springfield"},
                    "tags": ["gold", "emea"],
                    "renewed_at": "2024-05-01T12:00:00Z",
                }),
                "2024-02-01T00:00:00Z",
            ),
            write(
                2,
                json!({"mrr": "99.90", "active": "false", "seats": "3", "billing_address": null, "tags": []}),
                "2024-02-01T00:00:00Z",
            ),
        ])
        .await
        .unwrap();
    assert!(
        out.iter().all(|o| o.kind == OutcomeKind::Updated),
        "{out:?}"
    );
    let r = s
        .client
        .query_one(
            "SELECT name, mrr::text, active, seats, billing_address, tags, renewed_at \
             FROM billing.accounts WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), hostile);
    assert_eq!(r.get::<_, String>(1), "1234.50");
    assert!(r.get::<_, bool>(2));
    assert_eq!(r.get::<_, i32>(3), 12);
    assert_eq!(
        r.get::<_, Value>(4),
        json!({"line1": "1 Main St", "city": "Springfield"})
    );
    assert_eq!(r.get::<_, Vec<String>>(5), ["gold", "emea"]);
    assert_eq!(r.get::<_, DateTime<Utc>>(6), at("2024-05-01T12:00:00Z"));
    let r = s
        .client
        .query_one(
            "SELECT mrr::text, active, seats, billing_address IS NULL, cardinality(tags) \
             FROM billing.accounts WHERE id = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "99.90");
    assert!(!r.get::<_, bool>(1));
    assert_eq!(r.get::<_, i32>(2), 3);
    assert!(r.get::<_, bool>(3));
    assert_eq!(r.get::<_, i32>(4), 0);
    drop_origin(&s.client, &s.origin).await;
}

#[tokio::test]
async fn a_refused_value_or_missing_row_fails_only_its_write() {
    let s = setup().await;
    let out = s
        .writer
        .write(&[
            write(1, json!({"name": "one"}), "2024-02-01T00:00:00Z"),
            write(2, json!({"mrr": "lots"}), "2024-02-01T00:00:00Z"),
            write(3, json!({"name": null}), "2024-02-01T00:00:00Z"),
            write(99, json!({"name": "ghost"}), "2024-02-01T00:00:00Z"),
            write(3, json!({"seats": 7}), "2024-02-01T00:00:00Z"),
        ])
        .await
        .unwrap();
    let kinds: Vec<OutcomeKind> = out.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            OutcomeKind::Updated,
            OutcomeKind::Failed,
            OutcomeKind::Failed,
            OutcomeKind::Failed,
            OutcomeKind::Updated
        ]
    );
    let (class, message) = out[1].error.clone().unwrap();
    assert_eq!(class, ErrorClass::FieldValidation);
    assert!(message.contains("numeric"), "{message}");
    assert_eq!(
        out[2].error.as_ref().unwrap().0,
        ErrorClass::FieldValidation
    );
    assert_eq!(out[3].error.as_ref().unwrap().0, ErrorClass::NotFound);
    let r = s
        .client
        .query(
            "SELECT name, mrr IS NULL, seats FROM billing.accounts ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "one");
    assert!(
        r[1].get::<_, bool>(1),
        "the refused value left the row as it was"
    );
    assert_eq!(r[2].get::<_, String>(0), "Initech");
    assert_eq!(r[2].get::<_, Option<i32>>(2), Some(7));
    drop_origin(&s.client, &s.origin).await;
}

#[tokio::test]
async fn writers_in_two_sessions_share_one_origin_in_turn() {
    let s = setup().await;
    let other = BillingWriter::connect(
        &s.db.url,
        BillingWriterConfig {
            origin: s.origin.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let batch = |id: i64, n: i64| {
        (0..n)
            .map(|i| {
                let t = at("2024-02-01T00:00:00Z") + ChronoDuration::seconds(i);
                BillingWrite {
                    as_of: t,
                    ..write(id, json!({"seats": i}), "2024-01-01T00:00:00Z")
                }
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (batch(1, 20), batch(2, 20));
    tokio::join!(run(&s.writer, a), run(&other, b));
    let seats: Vec<i32> = s
        .client
        .query(
            "SELECT seats FROM billing.accounts WHERE id IN (1, 2) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seats, [19, 19]);
    drop(other);
    drop_origin(&s.client, &s.origin).await;
}

async fn run(w: &BillingWriter, writes: Vec<BillingWrite>) {
    for chunk in writes.chunks(2) {
        let out = w
            .write(chunk)
            .await
            .expect("write while sharing the origin");
        assert!(out.iter().all(|o| o.kind == OutcomeKind::Updated));
    }
}
