//! The simulator's wire format, checked raw: OAuth grants, the exact 401 and
//! 429 bodies, limit headers, status codes and record shapes.

mod hubspot_support;

use extsync::simulators::hubspot::{self, HubSpotConfig};
use hubspot_support::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn token(sim: &extsync::simulators::RunningSimulator, form: &[(&str, &str)]) -> (u16, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let resp = reqwest::Client::new()
        .post(format!("{}/oauth/v1/token", sim.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn oauth_grants_and_401_bodies() {
    let (sim, _portal) = portal().await;
    let code = admin(&sim, "/__admin/oauth/code", json!({})).await["code"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, t) = token(
        &sim,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", hubspot::DEFAULT_CLIENT_ID),
            ("client_secret", hubspot::DEFAULT_CLIENT_SECRET),
            ("redirect_uri", "http://localhost/cb"),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["token_type"], "bearer");
    assert_eq!(t["expires_in"], 1800);
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    let (st, again) = token(
        &sim,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", hubspot::DEFAULT_CLIENT_ID),
            ("client_secret", hubspot::DEFAULT_CLIENT_SECRET),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(again["status"], "BAD_AUTH_CODE");

    let (st, t2) = token(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", hubspot::DEFAULT_CLIENT_ID),
            ("client_secret", hubspot::DEFAULT_CLIENT_SECRET),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        t2["refresh_token"],
        refresh.as_str(),
        "refresh tokens don't rotate"
    );
    let access = t2["access_token"].as_str().unwrap().to_string();

    let (st, bad) = token(
        &sim,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "someone-else"),
            ("client_secret", hubspot::DEFAULT_CLIENT_SECRET),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!((st, bad["status"].as_str()), (400, Some("BAD_CLIENT_ID")));

    let call = |tok: Option<String>| {
        let url = format!("{}/crm/v3/objects/contacts", sim.base_url());
        async move {
            let mut r = reqwest::Client::new().get(url);
            if let Some(t) = tok {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(call(Some(access.clone())).await.0, 200);
    let (st, body) = call(None).await;
    assert_eq!(st, 401);
    assert_eq!(body["status"], "error");
    assert_eq!(body["category"], "INVALID_AUTHENTICATION");
    assert!(body["correlationId"].as_str().is_some());
    let (st, body) = call(Some("CObogus".into())).await;
    assert_eq!(
        (st, body["category"].as_str()),
        (401, Some("INVALID_AUTHENTICATION"))
    );

    admin(&sim, "/__admin/faults", json!({"expireTokens": true})).await;
    let (st, body) = call(Some(access)).await;
    assert_eq!(st, 401);
    assert_eq!(body["category"], "EXPIRED_AUTHENTICATION");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("The OAuth token used to make this call expired"),
        "{body}"
    );
}

#[tokio::test]
async fn records_carry_hubspot_system_properties() {
    let (sim, _portal) = portal().await;
    let (st, _, c) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts",
        Some(json!({"properties": {"email": "Sys@Example.com", "firstname": "S"}})),
    )
    .await;
    assert_eq!(st, 201);
    let id = c["id"].as_str().unwrap();
    for key in [
        "hs_object_id",
        "createdate",
        "hs_lastmodifieddate",
        "lastmodifieddate",
    ] {
        assert!(c["properties"][key].is_string(), "{key} in {c}");
    }
    assert_eq!(c["archived"], false);
    assert!(c["createdAt"].as_str().unwrap().ends_with('Z'));

    let (st, _, by_email) = api(
        &sim,
        Method::GET,
        "/crm/v3/objects/contacts/sys@example.com?idProperty=email&properties=firstname&properties=email",
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(by_email["id"], id);
    assert_eq!(by_email["properties"]["firstname"], "S");

    let (st, _, dup) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts",
        Some(json!({"properties": {"email": "sys@example.com"}})),
    )
    .await;
    assert_eq!(st, 409);
    assert_eq!(dup["category"], "CONFLICT");
    assert_eq!(
        dup["message"],
        format!("Contact already exists. Existing ID: {id}")
    );

    let (st, _, bad) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts",
        Some(json!({"properties": {"hat": "x"}})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(bad["category"], "VALIDATION_ERROR");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .starts_with("Property values were not valid: [{\"isValid\":false"),
        "{bad}"
    );
    assert_eq!(bad["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");

    let (st, _, _) = api(
        &sim,
        Method::DELETE,
        &format!("/crm/v3/objects/contacts/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _, _) = api(
        &sim,
        Method::GET,
        &format!("/crm/v3/objects/contacts/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 404);
    let (st, _, archived) = api(
        &sim,
        Method::GET,
        &format!("/crm/v3/objects/contacts/{id}?archived=true"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(archived["archived"], true);
}

#[tokio::test]
async fn list_paging_and_batch_statuses() {
    let (sim, _portal) = portal().await;
    let ids = seed_contacts(&sim, "lp", 25).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/crm/v3/objects/contacts?limit=10&after={a}"),
            None => "/crm/v3/objects/contacts?limit=10".to_string(),
        };
        let (st, _, page) = api(&sim, Method::GET, &path, None).await;
        assert_eq!(st, 200);
        for r in page["results"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        match page["paging"]["next"]["after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let (st, _, read) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts/batch/read",
        Some(json!({"properties": ["email"], "inputs": [{"id": ids[0]}, {"id": "1"}]})),
    )
    .await;
    assert_eq!(st, 207);
    assert_eq!(read["status"], "COMPLETE");
    assert_eq!(read["results"].as_array().unwrap().len(), 1);
    assert_eq!(read["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(read["errors"][0]["context"]["ids"][0], "1");
    assert!(read["startedAt"].is_string() && read["completedAt"].is_string());

    let (st, _, up) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts/batch/upsert",
        Some(json!({"inputs": [
            {"id": "lp0@example.com", "idProperty": "email", "properties": {"lastname": "Up"}},
            {"id": "fresh@example.com", "idProperty": "email", "properties": {"lastname": "New"}}
        ]})),
    )
    .await;
    assert_eq!(st, 200, "{up}");
    let news: Vec<bool> = up["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["new"].as_bool().unwrap())
        .collect();
    assert_eq!(news, vec![false, true]);

    let too_many: Vec<Value> = (0..101).map(|_| json!({"properties": {}})).collect();
    let (st, _, _) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts/batch/create",
        Some(json!({ "inputs": too_many })),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _, dup) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts/batch/update",
        Some(
            json!({"inputs": [{"id": ids[1], "properties": {}}, {"id": ids[1], "properties": {}}]}),
        ),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        dup["message"]
            .as_str()
            .unwrap()
            .starts_with("Duplicate IDs")
    );
    let (st, _, _) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts/batch/archive",
        Some(json!({"inputs": [{"id": ids[2]}, {"id": "77"}]})),
    )
    .await;
    assert_eq!(st, 204);
    let (st, _, _) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/contacts",
        Some(json!("{")),
    )
    .await;
    assert_eq!(st, 400);

    let written = admin_get(&sim, "/__admin/written?object=contacts").await;
    let kinds: Vec<&str> = written["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "creation").count(), 26);
    assert_eq!(kinds.last(), Some(&"deletion"));
}

#[tokio::test]
async fn rate_limit_headers_and_429_body() {
    let (sim, _portal) = portal_with(HubSpotConfig::default()).await;
    let (st, h, _) = api(&sim, Method::GET, "/crm/v3/objects/deals", None).await;
    assert_eq!(st, 200);
    assert_eq!(h["x-hubspot-ratelimit-max"], "190");
    assert_eq!(h["x-hubspot-ratelimit-remaining"], "189");
    assert_eq!(h["x-hubspot-ratelimit-interval-milliseconds"], "10000");
    assert_eq!(h["x-hubspot-ratelimit-secondly"], "19");
    for name in [
        "x-hubspot-ratelimit-daily",
        "x-hubspot-ratelimit-daily-remaining",
        "x-hubspot-ratelimit-secondly-remaining",
    ] {
        assert!(h.contains_key(name), "{name}");
    }
    admin(&sim, "/__admin/limits", json!({"tenSecondly": 2})).await;
    api(&sim, Method::GET, "/crm/v3/objects/deals", None).await;
    api(&sim, Method::GET, "/crm/v3/objects/deals", None).await;
    let (st, h, body) = api(&sim, Method::GET, "/crm/v3/objects/deals", None).await;
    assert_eq!(st, 429);
    assert_eq!(h["x-hubspot-ratelimit-remaining"], "0");
    assert_eq!(body["status"], "error");
    assert_eq!(
        body["message"],
        "You have reached your ten_secondly_rolling limit."
    );
    assert_eq!(body["errorType"], "RATE_LIMIT");
    assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");
    assert!(body["correlationId"].is_string());

    admin(
        &sim,
        "/__admin/limits",
        json!({"tenSecondly": 100, "searchPerSecond": 1}),
    )
    .await;
    let search = json!({"limit": 1});
    let (st, _, _) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/deals/search",
        Some(search.clone()),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _, body) = api(
        &sim,
        Method::POST,
        "/crm/v3/objects/deals/search",
        Some(search),
    )
    .await;
    assert_eq!(st, 429);
    assert_eq!(body["policyName"], "SECONDLY");
}
