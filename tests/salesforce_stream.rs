//! Change Data Capture over CometD: the connector's subscriber receives the
//! simulator's change events, resumes from a replay id, and tells extsync's
//! own writes by `changeOrigin`.

mod salesforce_support;

use std::time::Duration;

use extsync::connectors::record::ChangeOp;
use extsync::connectors::salesforce::{CdcEvent, CdcSubscriber, ReplayFrom, is_own_change};
use extsync::connectors::{Connector, ErrorClass, WriteOp};
use salesforce_support::*;
use serde_json::json;

const POLL: Duration = Duration::from_secs(2);

async fn collect(sub: &mut CdcSubscriber, n: usize) -> Vec<CdcEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} events",
            out.len()
        );
        out.extend(sub.poll().await.unwrap());
    }
    out
}

#[tokio::test]
async fn subscriber_receives_change_events_and_replays() {
    let org = start().await;
    let c = &org.connector;
    let mut live =
        CdcSubscriber::with_poll_timeout(c.clone(), "/data/ChangeEvents", ReplayFrom::Latest, POLL);
    assert!(live.poll().await.unwrap().is_empty(), "nothing yet");

    let a = c
        .write(
            "Account",
            WriteOp::Create {
                fields: fields(json!({"Name": "Acme", "BillingCity": "Paris"})),
            },
        )
        .await
        .unwrap();
    c.write(
        "Account",
        WriteOp::Update {
            id: a.id.clone(),
            fields: fields(json!({"BillingCity": "Lyon", "Phone": null})),
        },
    )
    .await
    .unwrap();
    c.write("Account", WriteOp::Delete { id: a.id.clone() })
        .await
        .unwrap();

    let events = collect(&mut live, 3).await;
    assert_eq!(events.len(), 3);
    let types: Vec<&str> = events
        .iter()
        .map(|e| {
            e.payload["ChangeEventHeader"]["changeType"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(types, ["CREATE", "UPDATE", "DELETE"]);
    assert!(events.windows(2).all(|w| w[0].replay_id < w[1].replay_id));
    let header = &events[1].payload["ChangeEventHeader"];
    assert_eq!(header["entityName"], json!("Account"));
    assert_eq!(header["recordIds"], json!([a.id]));
    for key in [
        "transactionKey",
        "sequenceNumber",
        "commitTimestamp",
        "commitNumber",
        "commitUser",
        "changedFields",
        "nulledFields",
        "diffFields",
    ] {
        assert!(header.get(key).is_some(), "header has {key}");
    }
    assert_eq!(
        header["changedFields"],
        json!(["LastModifiedDate", "BillingAddress.City"])
    );
    assert_eq!(events[1].payload["BillingAddress"], json!({"City": "Lyon"}));
    let origin = header["changeOrigin"].as_str().unwrap();
    assert!(is_own_change(origin, "extsync"), "origin {origin}");

    let update = &events[1].events[0];
    assert_eq!(update.op, ChangeOp::Update);
    assert_eq!(update.id, a.id);
    assert_eq!(
        update.fields.as_ref().unwrap()["BillingCity"],
        json!("Lyon")
    );
    assert!(update.changed_fields.contains(&"BillingCity".to_string()));
    assert_eq!(events[2].events[0].op, ChangeOp::Delete);
    assert_eq!(events[0].events[0].op, ChangeOp::Create);
    assert_eq!(
        events[0].events[0].fields.as_ref().unwrap()["Name"],
        json!("Acme")
    );

    // A restarted subscriber resumes after the replay id it stored.
    let mut resumed = CdcSubscriber::with_poll_timeout(
        c.clone(),
        "/data/ChangeEvents",
        ReplayFrom::After(events[0].replay_id),
        POLL,
    );
    let again = collect(&mut resumed, 2).await;
    assert_eq!(
        again.iter().map(|e| e.replay_id).collect::<Vec<_>>(),
        events[1..].iter().map(|e| e.replay_id).collect::<Vec<_>>()
    );

    // -2 replays everything retained.
    let mut all = CdcSubscriber::with_poll_timeout(
        c.clone(),
        "/data/AccountChangeEvent",
        ReplayFrom::Earliest,
        POLL,
    );
    assert_eq!(collect(&mut all, 3).await.len(), 3);

    live.disconnect().await;
}

#[tokio::test]
async fn entity_channels_filter_and_sessions_recover() {
    let org = start().await;
    let c = &org.connector;
    let mut contacts = CdcSubscriber::with_poll_timeout(
        c.clone(),
        "/data/ContactChangeEvent",
        ReplayFrom::Latest,
        POLL,
    );
    contacts.poll().await.unwrap();
    c.write(
        "Account",
        WriteOp::Create {
            fields: fields(json!({"Name": "not a contact"})),
        },
    )
    .await
    .unwrap();
    let ct = c
        .write(
            "Contact",
            WriteOp::Create {
                fields: fields(json!({"FirstName": "Ann", "LastName": "Lee"})),
            },
        )
        .await
        .unwrap();
    let got = collect(&mut contacts, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].events[0].id, ct.id);
    assert_eq!(
        got[0].payload["Name"],
        json!({"FirstName": "Ann", "LastName": "Lee"})
    );

    // The session expires: the subscriber refreshes, handshakes again and
    // resumes after the last event it returned.
    org.sim.expire_tokens();
    c.write(
        "Contact",
        WriteOp::Update {
            id: ct.id.clone(),
            fields: fields(json!({"Title": "CTO"})),
        },
    )
    .await
    .unwrap();
    let got = collect(&mut contacts, 1).await;
    assert_eq!(
        got[0].events[0].changed_fields,
        ["LastModifiedDate", "Title"]
    );
    assert_eq!(contacts.position(), ReplayFrom::After(got[0].replay_id));

    let mut bad = CdcSubscriber::with_poll_timeout(
        c.clone(),
        "/data/LeadChangeEvent",
        ReplayFrom::Latest,
        POLL,
    );
    assert_eq!(
        bad.poll().await.unwrap_err().class,
        ErrorClass::FieldValidation
    );
    let _ = c.authenticate().await;
}
