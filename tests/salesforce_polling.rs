//! Polling through SOQL on `SystemModstamp` with the `(SystemModstamp, Id)`
//! watermark: every record exactly once, also when 10,000+ records share one
//! timestamp, across `nextRecordsUrl` pages and restarts from a cursor.

mod salesforce_support;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use extsync::connectors::{Connector, Cursor, ExternalRecord, WriteOp};
use salesforce_support::*;
use serde_json::json;

async fn create_accounts(org: &Org, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let ops: Vec<WriteOp> = (0..n)
        .map(|i| WriteOp::Create {
            fields: fields(json!({"Name": format!("{tag} {i}")})),
        })
        .collect();
    for chunk in ops.chunks(200) {
        for r in org
            .connector
            .write_batch("Account", chunk.to_vec())
            .await
            .unwrap()
        {
            ids.push(r.unwrap().id);
        }
    }
    ids
}

/// Follows `next_page` from `since` to the end; returns records and pages.
async fn list_all(org: &Org, object: &str, since: &Cursor) -> (Vec<ExternalRecord>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    let mut page: Option<String> = None;
    loop {
        let p = org
            .connector
            .list_changes(object, since, page.as_deref())
            .await
            .unwrap();
        pages += 1;
        out.extend(p.records);
        match p.next_page {
            Some(next) => page = Some(next),
            None => return (out, pages),
        }
    }
}

#[tokio::test]
async fn ten_thousand_records_sharing_one_timestamp_are_listed_exactly_once() {
    let org = start().await;
    let t: DateTime<Utc> = "2024-03-01T12:00:00.000Z".parse().unwrap();
    org.sim.freeze_clock(Some(t));
    let ids = create_accounts(&org, 10_500, "same-ts").await;
    org.sim.freeze_clock(None);

    let (all, pages) = list_all(&org, "Account", &Cursor::start()).await;
    assert_eq!(all.len(), 10_500);
    assert_eq!(pages, 6, "2,000 records per page");
    let seen: HashSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(seen.len(), 10_500);
    assert_eq!(seen, ids.iter().map(String::as_str).collect());
    assert!(all.iter().all(|r| r.modified_at == t));
    assert!(
        all.windows(2)
            .all(|w| Cursor::of(&w[0]) < Cursor::of(&w[1])),
        "ordered by (SystemModstamp, Id)"
    );

    // A poller that stops after any record and restarts from its cursor
    // sees exactly the rest.
    for cut in [0usize, 1_999, 2_000, 7_777, 10_499] {
        let cursor = Cursor::of(&all[cut]);
        let (rest, _) = list_all(&org, "Account", &cursor).await;
        assert_eq!(rest.len(), 10_500 - cut - 1, "restart after record {cut}");
        assert_eq!(rest.first().map(|r| &r.id), all.get(cut + 1).map(|r| &r.id));
    }

    // Later changes come after the cursor of the last record seen.
    let end = Cursor::of(all.last().unwrap());
    org.connector
        .write(
            "Account",
            WriteOp::Update {
                id: ids[5].clone(),
                fields: fields(json!({"Name": "changed later"})),
            },
        )
        .await
        .unwrap();
    org.connector
        .write("Account", WriteOp::Delete { id: ids[6].clone() })
        .await
        .unwrap();
    let (later, _) = list_all(&org, "Account", &end).await;
    assert_eq!(later.len(), 2);
    assert_eq!(later[0].id, ids[5]);
    assert_eq!(later[0].fields["Name"], json!("changed later"));
    assert_eq!(later[1].id, ids[6]);
    assert!(later[1].deleted, "deletions are listed through queryAll");
}

#[tokio::test]
async fn listing_uses_configured_fields_and_survives_expired_sessions() {
    let org = start().await;
    let mut s = settings(&org.url(), demo_credentials());
    s.fields
        .insert("Contact".into(), vec!["LastName".into(), "Email".into()]);
    let c = extsync::connectors::salesforce::SalesforceConnector::new(s);
    let acct = c
        .write(
            "Account",
            WriteOp::Create {
                fields: fields(json!({"Name": "parent"})),
            },
        )
        .await
        .unwrap();
    for i in 0..3 {
        c.write(
            "Contact",
            WriteOp::Create {
                fields: fields(json!({"LastName": format!("L{i}"), "AccountId": acct.id})),
            },
        )
        .await
        .unwrap();
    }
    org.sim.expire_tokens();
    let page = c
        .list_changes("Contact", &Cursor::start(), None)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 3);
    let keys: Vec<&String> = page.records[0].fields.keys().collect();
    assert!(keys.contains(&&"LastName".to_string()));
    assert!(
        !keys.contains(&&"AccountId".to_string()),
        "only the configured fields"
    );
    assert!(page.next_page.is_none());

    // Deleting the account cascades to its contacts, which then list as deleted.
    let end = Cursor::of(page.records.last().unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    c.write("Account", WriteOp::Delete { id: acct.id })
        .await
        .unwrap();
    let page = c.list_changes("Contact", &end, None).await.unwrap();
    assert_eq!(page.records.len(), 3);
    assert!(page.records.iter().all(|r| r.deleted));
}
