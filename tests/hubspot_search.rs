//! Polling through search: every record exactly once, in `(timestamp, id)`
//! order, past the 10,000-result cap and across 10,000+ records sharing one
//! timestamp.

mod hubspot_support;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use extsync::connectors::hubspot::HubSpotConnector;
use extsync::connectors::{Connector, Cursor, ExternalRecord};
use hubspot_support::*;
use reqwest::Method;
use serde_json::json;

/// Lists every change after `since`, following page tokens.
async fn drain(c: &HubSpotConnector, object: &str, since: &Cursor) -> (Vec<ExternalRecord>, usize) {
    let mut out = Vec::new();
    let mut page: Option<String> = None;
    let mut pages = 0;
    loop {
        let p = c
            .list_changes(object, since, page.as_deref())
            .await
            .unwrap();
        pages += 1;
        assert!(pages < 10_000, "listing does not end");
        out.extend(p.records);
        match p.next_page {
            Some(t) => page = Some(t),
            None => return (out, pages),
        }
    }
}

fn assert_ordered_once(records: &[ExternalRecord]) {
    let mut seen = HashSet::new();
    for r in records {
        assert!(seen.insert(r.id.clone()), "record {} listed twice", r.id);
    }
    for w in records.windows(2) {
        let a = (w[0].modified_at, w[0].id.parse::<u64>().unwrap());
        let b = (w[1].modified_at, w[1].id.parse::<u64>().unwrap());
        assert!(a < b, "out of order: {a:?} then {b:?}");
    }
}

#[tokio::test]
async fn paging_returns_every_record_once_in_order() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    let mut ids = seed_contacts(&sim, "p", 1_234).await;
    let (all, _) = drain(&c, "contacts", &Cursor::start()).await;
    assert_eq!(all.len(), 1_234);
    assert_ordered_once(&all);
    let listed: HashSet<String> = all.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    assert_eq!(listed, ids.into_iter().collect::<HashSet<_>>());

    // Resuming from any record's cursor yields exactly the records after it.
    let cut = 700;
    let (rest, _) = drain(&c, "contacts", &Cursor::of(&all[cut])).await;
    assert_eq!(rest.len(), all.len() - cut - 1);
    assert_eq!(rest[0].id, all[cut + 1].id);

    // An update moves the record past the end of the listing.
    let last = Cursor::of(all.last().unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let (st, _, _) = api(
        &sim,
        Method::PATCH,
        &format!("/crm/v3/objects/contacts/{}", all[5].id),
        Some(json!({"properties": {"firstname": "Changed"}})),
    )
    .await;
    assert_eq!(st, 200);
    let (after, _) = drain(&c, "contacts", &last).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, all[5].id);
    assert_eq!(after[0].fields["firstname"], "Changed");
}

#[tokio::test]
async fn ten_thousand_records_sharing_one_timestamp_page_exactly_once() {
    let (sim, _portal) = portal().await;
    let c = connector(&sim);
    let t: i64 = 1_714_557_600_000;
    admin(&sim, "/__admin/clock", json!({"frozenAtMs": t - 1})).await;
    let before = seed_contacts(&sim, "b", 150).await;
    admin(&sim, "/__admin/clock", json!({"frozenAtMs": t})).await;
    let same = seed_contacts(&sim, "s", 10_450).await;
    admin(&sim, "/__admin/clock", json!({"frozenAtMs": t + 1})).await;
    let later = seed_contacts(&sim, "l", 120).await;
    admin(&sim, "/__admin/clock", json!({"frozenAtMs": null})).await;

    // The vendor's cap is real: offsets past 10,000 are refused.
    let query = json!({
        "filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "EQ", "value": t.to_string()}]}],
        "limit": 200,
        "after": "10000",
    });
    let (status, _, body) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts/search",
        Some(query),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["category"], "VALIDATION_ERROR");
    let mut q = json!({
        "filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "EQ", "value": t.to_string()}]}],
        "limit": 200,
        "after": "9800",
    });
    let (status, _, body) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts/search",
        Some(q.clone()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 10_450);
    q["after"] = body["paging"]["next"]["after"].clone();
    let (status, _, _) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts/search",
        Some(q),
    )
    .await;
    assert_eq!(
        status, 400,
        "following paging.next past 10,000 fails, as in HubSpot"
    );

    let (all, pages) = drain(&c, "contacts", &Cursor::start()).await;
    assert_ordered_once(&all);
    assert_eq!(all.len(), before.len() + same.len() + later.len());
    let expected: HashSet<String> = before.iter().chain(&same).chain(&later).cloned().collect();
    let listed: HashSet<String> = all.iter().map(|r| r.id.clone()).collect();
    assert_eq!(listed, expected);
    let at_t = all
        .iter()
        .filter(|r| r.modified_at == DateTime::<Utc>::from_timestamp_millis(t).unwrap())
        .count();
    assert_eq!(at_t, 10_450);
    assert!(pages <= 70, "{pages} pages");

    // A poller that restarts in the middle of the shared timestamp resumes exactly.
    let mid = before.len() + 5_000;
    let (rest, _) = drain(&c, "contacts", &Cursor::of(&all[mid])).await;
    assert_eq!(rest.len(), all.len() - mid - 1);
    assert_eq!(rest.first().unwrap().id, all[mid + 1].id);
}

#[tokio::test]
async fn search_filters_sorts_and_totals() {
    let (sim, _portal) = portal().await;
    for (name, amount, stage) in [
        ("A", "10", "won"),
        ("B", "250", "lost"),
        ("C", "99.5", "won"),
        ("D", "1000", "open"),
    ] {
        let (st, _, _) = api(
            &sim,
            Method::POST,
            "/crm/v3/objects/deals",
            Some(json!({"properties": {"dealname": name, "amount": amount, "dealstage": stage}})),
        )
        .await;
        assert_eq!(st, 201);
    }
    let search = |body: serde_json::Value| {
        let sim = &sim;
        async move {
            api(
                sim,
                Method::POST,
                "/crm/v3/objects/deals/search",
                Some(body),
            )
            .await
        }
    };
    let (_, _, r) = search(json!({
        "filterGroups": [{"filters": [{"propertyName": "amount", "operator": "GTE", "value": "99.5"}]}],
        "sorts": [{"propertyName": "amount", "direction": "DESCENDING"}],
        "properties": ["dealname", "amount"],
    }))
    .await;
    let names: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["properties"]["dealname"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["D", "B", "C"]);
    assert_eq!(r["total"], 3);

    let (_, _, r) = search(json!({
        "filterGroups": [
            {"filters": [{"propertyName": "dealstage", "operator": "IN", "values": ["won"]}, {"propertyName": "amount", "operator": "LT", "value": "50"}]},
            {"filters": [{"propertyName": "dealstage", "operator": "EQ", "value": "OPEN"}]}
        ],
        "limit": 1,
    }))
    .await;
    assert_eq!(r["total"], 2);
    assert_eq!(r["results"].as_array().unwrap().len(), 1);
    assert_eq!(r["paging"]["next"]["after"], "1");

    let (_, _, r) = search(json!({
        "filterGroups": [{"filters": [{"propertyName": "closedate", "operator": "HAS_PROPERTY"}]}],
    }))
    .await;
    assert_eq!(r["total"], 0);
    let (_, _, r) = search(json!({
        "filterGroups": [{"filters": [{"propertyName": "dealstage", "operator": "NEQ", "value": "won"}]}],
    }))
    .await;
    assert_eq!(r["total"], 2);

    let (st, _, r) = search(json!({"limit": 201})).await;
    assert_eq!(st, 400, "{r}");
    let (st, _, r) = search(json!({
        "filterGroups": [{"filters": [{"propertyName": "nope", "operator": "EQ", "value": "1"}]}],
    }))
    .await;
    assert_eq!(st, 400, "{r}");
}

/// Ids and total of one search.
async fn ids_and_total(
    sim: &extsync::simulators::RunningSimulator,
    body: serde_json::Value,
) -> (Vec<String>, u64) {
    let (status, _, r) = api(
        sim,
        Method::POST,
        "/crm/v3/objects/contacts/search",
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let ids = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    (ids, r["total"].as_u64().unwrap())
}

#[tokio::test]
async fn index_ranges_answer_as_a_full_scan_does() {
    let (sim, _portal) = portal().await;
    let t: i64 = 1_714_557_600_000;
    let mut all = Vec::new();
    for (i, n) in [40, 1, 25, 60].into_iter().enumerate() {
        admin(&sim, "/__admin/clock", json!({"frozenAtMs": t + i as i64})).await;
        all.extend(seed_contacts(&sim, &format!("r{i}"), n).await);
    }
    // Archived and updated records leave and move in the date index.
    admin(&sim, "/__admin/clock", json!({"frozenAtMs": t + 1})).await;
    let (st, _, _) = api(
        &sim,
        Method::DELETE,
        &format!("/crm/v3/objects/contacts/{}", all[3]),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _, _) = api(
        &sim,
        Method::PATCH,
        &format!("/crm/v3/objects/contacts/{}", all[70]),
        Some(json!({"properties": {"city": "Lyon"}})),
    )
    .await;
    assert_eq!(st, 200);
    admin(&sim, "/__admin/clock", json!({"frozenAtMs": null})).await;

    // Always true, but not a range: forces the scan of every record.
    let scan_all = json!({"propertyName": "hs_object_id", "operator": "HAS_PROPERTY"});
    let cases = [
        (
            json!([{"propertyName": "lastmodifieddate", "operator": "GT", "value": t.to_string()}]),
            json!([{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}]),
        ),
        (
            json!([{"propertyName": "hs_lastmodifieddate", "operator": "BETWEEN", "value": t.to_string(), "highValue": (t + 2).to_string()}]),
            json!([{"propertyName": "hs_lastmodifieddate", "direction": "DESCENDING"}]),
        ),
        (
            json!([{"propertyName": "lastmodifieddate", "operator": "LTE", "value": (t + 1).to_string()}]),
            json!([]),
        ),
        (
            json!([]),
            json!([{"propertyName": "lastmodifieddate", "direction": "DESCENDING"}]),
        ),
        (
            json!([{"propertyName": "hs_object_id", "operator": "GTE", "value": all[10]}]),
            json!([{"propertyName": "hs_object_id", "direction": "DESCENDING"}]),
        ),
        (
            json!([{"propertyName": "hs_object_id", "operator": "LT", "value": all[90]}]),
            json!([]),
        ),
        (
            json!([{"propertyName": "lastmodifieddate", "operator": "EQ", "value": (t + 9).to_string()}]),
            json!([{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}]),
        ),
    ];
    for (filters, sorts) in cases {
        let mut scanned = filters.as_array().unwrap().clone();
        scanned.push(scan_all.clone());
        for after in [0, 30, 110] {
            let query = |filters: &serde_json::Value| {
                json!({
                    "filterGroups": [{"filters": filters}],
                    "sorts": sorts,
                    "limit": 37,
                    "after": after.to_string(),
                })
            };
            let indexed = ids_and_total(&sim, query(&filters)).await;
            let scan = ids_and_total(&sim, query(&json!(scanned))).await;
            assert_eq!(indexed, scan, "{filters} {sorts} after {after}");
        }
    }
}
