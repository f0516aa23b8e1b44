//! An external record whose match rules fit several billing rows is linked
//! to none of them: it is listed for review with its candidates, a
//! `sync.error` of type `match_review` says so, and the list drops it once
//! the record is linked. Real Postgres; no external call is made.

mod support;

use chrono::Utc;
use extsync::connectors::record::ChangeOp;
use extsync::ingest::{ChangeSource, ExternalChange};
use extsync::processor::change::Change;
use extsync::processor::events::SyncEvent;
use serde_json::{Value, json};
use support::TestDb;

fn pipeline(db: &TestDb) -> extsync::config::Pipeline {
    support::salesforce_credentials_env();
    let yaml = format!(
        r#"
name: review
postgres: {{ url: "{url}", tables: [public.accounts] }}
kafka: {{ brokers: "127.0.0.1:1" }}
integrations:
  sf:
    provider: salesforce
    baseUrl: http://127.0.0.1:1
    credentials:
      clientId: ${{TEST_SF_CLIENT_ID}}
      clientSecret: ${{TEST_SF_CLIENT_SECRET}}
      refreshToken: ${{TEST_SF_REFRESH_TOKEN}}
    entities:
      accounts:
        externalObject: Account
        table: public.accounts
        mappings:
          - {{ alguna: name, external: Name }}
          - {{ alguna: email, external: Email__c }}
        matching: {{ fields: [email], mode: exact, createIfNotFound: false }}
"#,
        url = db.url
    );
    extsync::config::parse_str(&yaml, "review.yaml").unwrap()
}

fn account(id: &str, name: &str, email: &str) -> Change {
    let now = Utc::now();
    Change::External(ExternalChange {
        system: "salesforce".into(),
        integration: "sf".into(),
        entity: "accounts".into(),
        object: "Account".into(),
        external_id: id.into(),
        op: ChangeOp::Create,
        after: json!({"Name": name, "Email__c": email})
            .as_object()
            .cloned(),
        changed_fields: vec![],
        version: format!("{id}-1"),
        modified_at: now,
        source: ChangeSource::Poll,
        origin: None,
        received_at: now,
    })
}

#[tokio::test]
async fn an_external_record_fitting_several_rows_is_listed_for_review_not_linked() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, name text, email text);
             INSERT INTO accounts VALUES (1, 'Acme', 'ops@acme.test'), (2, 'Acme Labs', 'ops@acme.test'),
                                         (3, 'Globex', 'it@globex.test');",
        )
        .await
        .unwrap();
    let processor = extsync::processor::service::processor(&pipeline(&db))
        .await
        .unwrap();

    let events = processor
        .process(&[
            account("001AMB", "Acme", " OPS@acme.test"),
            account("001ONE", "Globex", "it@globex.test"),
        ])
        .await
        .unwrap();

    // The unique match links; the ambiguous one is an error naming both rows.
    let linked: Vec<(String, Option<String>)> = client
        .query(
            "SELECT billing_id, external_id FROM extsync.records ORDER BY billing_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(linked, [("3".to_string(), Some("001ONE".to_string()))]);
    let reviews: Vec<&SyncEvent> = events
        .iter()
        .filter(
            |e| matches!(e, SyncEvent::Error { error_type, .. } if error_type == "match_review"),
        )
        .collect();
    assert_eq!(reviews.len(), 1, "{events:?}");
    let SyncEvent::Error {
        billing_id,
        external_id,
        message,
        ..
    } = reviews[0]
    else {
        unreachable!()
    };
    assert_eq!(*billing_id, None);
    assert_eq!(external_id.as_deref(), Some("001AMB"));
    assert!(
        message.starts_with("2 possible matches (")
            && message.contains('1')
            && message.contains('2'),
        "{message}"
    );
    assert_eq!(reviews[0].key(), "sf/accounts/external/001AMB");
    let as_json = serde_json::to_value(reviews[0]).unwrap();
    assert_eq!(as_json["billing_id"], Value::Null);

    // Listed once, with both candidates and the record's fields; seeing it
    // again refreshes the entry.
    let open = |client: tokio_postgres::Client| async move {
        client
            .query(
                "SELECT external_id, candidates, fields FROM extsync.open_match_reviews",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, Value>(1),
                    r.get::<_, Value>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    processor
        .process(&[account("001AMB", "Acme", "ops@acme.test")])
        .await
        .unwrap();
    let listed = open(db.client().await).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let (id, candidates, fields) = &listed[0];
    assert_eq!(id, "001AMB");
    let mut ids: Vec<&str> = candidates
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["billing_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["1", "2"]);
    assert_eq!(fields["Email__c"], json!("ops@acme.test"));

    // Once someone links it, it leaves the open list.
    client
        .execute(
            "INSERT INTO extsync.records (integration, entity, billing_id, external_id)
             VALUES ('sf', 'accounts', '2', '001AMB')",
            &[],
        )
        .await
        .unwrap();
    assert!(open(db.client().await).await.is_empty());
}
