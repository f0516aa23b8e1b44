//! The simulator's wire format, checked with a plain HTTP client: status
//! codes, bodies and headers as Salesforce sends them.

mod salesforce_support;

use extsync::simulators::salesforce::{
    CustomField, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD, DEMO_REFRESH_TOKEN,
    DEMO_USERNAME, DuplicateRule, FieldType, SalesforceSimConfig,
};
use reqwest::StatusCode;
use salesforce_support::*;
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn login(org: &Org) -> Api {
        let http = reqwest::Client::new();
        let base = org.url();
        let t: Value = http
            .post(format!("{base}/services/oauth2/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", DEMO_CLIENT_SECRET),
                ("refresh_token", DEMO_REFRESH_TOKEN),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Api {
            token: t["access_token"].as_str().unwrap().to_string(),
            http,
            base,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.call_at("v59.0", method, path, body).await
    }

    /// A call in another API version than v59.0.
    async fn call_at(
        &self,
        version: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(
                method,
                format!("{}/services/data/{version}{path}", self.base),
            )
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, headers, v)
    }
}

#[tokio::test]
async fn oauth_grants_answer_like_salesforce() {
    let org = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/services/oauth2/token", org.url());
    let ok = |form: Vec<(&'static str, &'static str)>| {
        let http = http.clone();
        let url = url.clone();
        async move { http.post(url).form(&form).send().await.unwrap() }
    };
    for form in [
        vec![
            ("grant_type", "refresh_token"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("refresh_token", DEMO_REFRESH_TOKEN),
        ],
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
        ],
        vec![
            ("grant_type", "password"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("username", DEMO_USERNAME),
            ("password", DEMO_PASSWORD),
        ],
    ] {
        let resp = ok(form).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let t: Value = resp.json().await.unwrap();
        for key in [
            "access_token",
            "instance_url",
            "id",
            "token_type",
            "issued_at",
            "signature",
        ] {
            assert!(t.get(key).is_some(), "token answer has {key}: {t}");
        }
        assert!(
            t.get("expires_in").is_none(),
            "Salesforce never says when tokens expire"
        );
        assert_eq!(t["token_type"], json!("Bearer"));
        assert_eq!(t["instance_url"], json!(org.url()));
    }
    let resp = ok(vec![
        ("grant_type", "refresh_token"),
        ("client_id", DEMO_CLIENT_ID),
        ("refresh_token", "nope"),
    ])
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "invalid_grant", "error_description": "expired access/refresh token"})
    );

    // Web-server flow: authorize redirects with a code that buys a refresh token.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirect
        .get(format!("{}/services/oauth2/authorize", org.url()))
        .query(&[
            ("response_type", "code"),
            ("client_id", DEMO_CLIENT_ID),
            ("redirect_uri", "http://localhost/cb"),
            ("state", "s1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let code = location
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    assert!(location.ends_with("state=s1"));
    let t: Value = http
        .post(&url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("code", code.as_str()),
            ("redirect_uri", "http://localhost/cb"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(t["refresh_token"].is_string());
}

#[tokio::test]
async fn sessions_expire_with_the_exact_401_body() {
    let org = start().await;
    let api = Api::login(&org).await;
    let (status, headers, _) = api.call(reqwest::Method::GET, "/limits", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["sforce-limit-info"]
            .to_str()
            .unwrap()
            .starts_with("api-usage=1/")
    );
    org.sim.expire_tokens();
    let (status, headers, body) = api
        .call(
            reqwest::Method::GET,
            "/sobjects/Account/001Dn000000zzzzAAA",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );
    assert!(headers.contains_key("sforce-limit-info"));
}

#[tokio::test]
async fn sobject_rest_status_codes_and_bodies() {
    let mut config = SalesforceSimConfig::default();
    config.custom_fields.push(CustomField {
        object: "Account".into(),
        name: "Legacy_Id__c".into(),
        kind: FieldType::String,
        external_id: true,
        unique: false,
        required: false,
    });
    let org = start_with(config).await;
    let api = Api::login(&org).await;
    use reqwest::Method as M;

    let (s, _, b) = api
        .call(M::POST, "/sobjects/Account/", Some(json!({"Name": "Acme"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(b["success"], json!(true));
    assert_eq!(b["errors"], json!([]));
    let id = b["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("001") && id.len() == 18);

    let (s, _, rec) = api
        .call(M::GET, &format!("/sobjects/Account/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        rec["attributes"],
        json!({"type": "Account", "url": format!("/services/data/v59.0/sobjects/Account/{id}")})
    );
    assert_eq!(rec["Id"], json!(id));
    let stamp = rec["SystemModstamp"].as_str().unwrap();
    assert_eq!(stamp.len(), "2024-01-15T10:30:00.000+0000".len());
    assert!(stamp.ends_with("+0000"));
    assert_eq!(rec["LastModifiedDate"], rec["SystemModstamp"]);
    assert!(
        rec.as_object().unwrap().contains_key("BillingCity"),
        "all fields, nulls included"
    );

    let (s, _, rec15) = api
        .call(
            M::GET,
            &format!("/sobjects/Account/{}?fields=Name", &id[..15]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "15-character ids work too");
    assert_eq!(rec15.as_object().unwrap().len(), 2);

    let (s, _, b) = api
        .call(
            M::PATCH,
            &format!("/sobjects/Account/{id}"),
            Some(json!({"Name": "Acme 2"})),
        )
        .await;
    assert_eq!((s, b), (StatusCode::NO_CONTENT, Value::Null));

    let (s, _, b) = api
        .call(
            M::PATCH,
            &format!("/sobjects/Account/{id}"),
            Some(json!({"SystemModstamp": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b[0]["errorCode"], json!("INVALID_FIELD_FOR_INSERT_UPDATE"));

    let (s, _, b) = api
        .call(
            M::POST,
            "/sobjects/Account",
            Some(json!({"Name": "x", "Nope": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b[0]["errorCode"], json!("INVALID_FIELD"));
    assert_eq!(
        b[0]["message"],
        json!("No such column 'Nope' on sobject of type Account")
    );

    let (s, _, b) = api
        .call(M::POST, "/sobjects/Opportunity", Some(json!({"Name": "o"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        b,
        json!([{"message": "Required fields are missing: [StageName, CloseDate]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["StageName", "CloseDate"]}])
    );

    let (s, _, b) = api
        .call(
            M::POST,
            "/sobjects/Account",
            Some(json!(["not", "an", "object"])),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b[0]["errorCode"], json!("JSON_PARSER_ERROR"));

    let (s, _, b) = api
        .call(M::GET, "/sobjects/Widget/001Dn000000zzzzAAA", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        b,
        json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
    );

    // Upsert by external id: 201, then 200 with created=false, then 300.
    let (s, _, b) = api
        .call(
            M::PATCH,
            "/sobjects/Account/Alguna_Id__c/A-1",
            Some(json!({"Name": "u"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(b["created"], json!(true));
    let (s, _, b2) = api
        .call(
            M::PATCH,
            "/sobjects/Account/Alguna_Id__c/A-1",
            Some(json!({"Name": "u2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b2,
        json!({"id": b["id"], "success": true, "errors": [], "created": false})
    );
    for n in ["l1", "l2"] {
        api.call(
            M::POST,
            "/sobjects/Account",
            Some(json!({"Name": n, "Legacy_Id__c": "L"})),
        )
        .await;
    }
    let (s, _, b) = api
        .call(
            M::PATCH,
            "/sobjects/Account/Legacy_Id__c/L",
            Some(json!({"Name": "?"})),
        )
        .await;
    assert_eq!(s, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(b.as_array().unwrap().len(), 2);
    let (s, _, _) = api
        .call(M::GET, "/sobjects/Account/Legacy_Id__c/L", None)
        .await;
    assert_eq!(s, StatusCode::MULTIPLE_CHOICES);
    let (s, _, b) = api
        .call(M::PATCH, "/sobjects/Account/Name/x", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        b[0]["message"]
            .as_str()
            .unwrap()
            .contains("external ID field")
    );

    let (s, _, _) = api
        .call(M::DELETE, &format!("/sobjects/Account/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, b) = api
        .call(M::DELETE, &format!("/sobjects/Account/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b[0]["errorCode"], json!("ENTITY_IS_DELETED"));

    let (s, _, d) = api.call(M::GET, "/sobjects/Account/describe", None).await;
    assert_eq!(s, StatusCode::OK);
    let ext = d["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Alguna_Id__c")
        .unwrap();
    assert_eq!(ext["externalId"], json!(true));
    assert_eq!(d["keyPrefix"], json!("001"));
}

#[tokio::test]
async fn duplicate_rule_matches_link_records_in_the_request_version() {
    let mut config = SalesforceSimConfig::default();
    config.duplicate_rules.push(DuplicateRule {
        object: "Contact".into(),
        name: "Contact_Email".into(),
        fields: vec!["Email".into()],
    });
    let org = start_with(config).await;
    let api = Api::login(&org).await;
    use reqwest::Method as M;
    let contact = json!({"LastName": "Doe", "Email": "jane@example.com"});

    let (s, _, b) = api
        .call_at(
            "v60.0",
            M::POST,
            "/sobjects/Contact/",
            Some(contact.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = b["id"].as_str().unwrap().to_string();

    for version in ["v60.0", "v62.0"] {
        let (s, _, b) = api
            .call_at(
                version,
                M::POST,
                "/sobjects/Contact/",
                Some(contact.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(b[0]["errorCode"], json!("DUPLICATES_DETECTED"));
        let matched = &b[0]["duplicateResult"]["matchResults"][0]["matchRecords"][0]["record"];
        assert_eq!(
            matched,
            &json!({
                "attributes": {
                    "type": "Contact",
                    "url": format!("/services/data/{version}/sobjects/Contact/{id}"),
                },
                "Id": id,
            })
        );
    }
}

#[tokio::test]
async fn composite_collections_honour_all_or_none() {
    let org = start().await;
    let api = Api::login(&org).await;
    use reqwest::Method as M;
    let records = json!([
        {"attributes": {"type": "Account"}, "Name": "ok 1"},
        {"attributes": {"type": "Account"}},
        {"attributes": {"type": "Contact"}, "LastName": "mixed types"},
    ]);
    let (s, _, b) = api
        .call(
            M::POST,
            "/composite/sobjects",
            Some(json!({"allOrNone": true, "records": records})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b[0]["success"], json!(false));
    assert_eq!(
        b[0]["errors"][0]["statusCode"],
        json!("ALL_OR_NONE_OPERATION_ROLLED_BACK")
    );
    assert_eq!(
        b[1]["errors"][0],
        json!({"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Name]", "fields": ["Name"]})
    );
    let (_, _, count) = api
        .call(M::GET, "/query?q=SELECT+COUNT()+FROM+Account", None)
        .await;
    assert_eq!(count["totalSize"], json!(0), "rolled back");
    assert!(org.sim.written(0).is_empty());

    let (_, _, b) = api
        .call(
            M::POST,
            "/composite/sobjects",
            Some(json!({"allOrNone": false, "records": records})),
        )
        .await;
    assert_eq!(b[0]["success"], json!(true));
    assert_eq!(b[1]["success"], json!(false));
    assert_eq!(b[2]["success"], json!(true));
    assert!(b[2]["id"].as_str().unwrap().starts_with("003"));
    let a = b[0]["id"].as_str().unwrap().to_string();

    let (_, _, b) = api
        .call(
            M::PATCH,
            "/composite/sobjects",
            Some(json!({"records": [
                {"attributes": {"type": "Account"}, "id": a, "Phone": "123"},
                {"attributes": {"type": "Account"}, "Phone": "no id"},
            ]})),
        )
        .await;
    assert_eq!(b[0], json!({"id": a, "success": true, "errors": []}));
    assert_eq!(b[1]["errors"][0]["statusCode"], json!("MISSING_ARGUMENT"));

    let (_, _, b) = api
        .call(
            M::PATCH,
            "/composite/sobjects/Account/Alguna_Id__c",
            Some(json!({"allOrNone": false, "records": [
                {"attributes": {"type": "Account"}, "Alguna_Id__c": "x1", "Name": "X1"},
                {"attributes": {"type": "Account"}, "Alguna_Id__c": "x1", "Name": "X1 again"},
            ]})),
        )
        .await;
    assert_eq!(b[0]["created"], json!(true));
    assert_eq!(b[1]["created"], json!(false));

    let (_, _, b) = api
        .call(
            M::GET,
            &format!("/composite/sobjects/Account?ids={a},001Dn000000zzzzAAA&fields=Name,Phone"),
            None,
        )
        .await;
    assert_eq!(b[0]["Phone"], json!("123"));
    assert_eq!(b[1], Value::Null);

    let (_, _, b) = api
        .call(
            M::DELETE,
            &format!("/composite/sobjects?ids={a},001Dn000000zzzzAAA&allOrNone=false"),
            None,
        )
        .await;
    assert_eq!(b[0]["success"], json!(true));
    assert_eq!(b[1]["errors"][0]["statusCode"], json!("NOT_FOUND"));

    let many: Vec<Value> = (0..201)
        .map(|i| json!({"attributes": {"type": "Account"}, "Name": format!("n{i}")}))
        .collect();
    let (s, _, b) = api
        .call(
            M::POST,
            "/composite/sobjects",
            Some(json!({"records": many})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b[0]["errorCode"], json!("EXCEEDED_ID_LIMIT"));
}

#[tokio::test]
async fn soql_subset_and_paging() {
    let org = start().await;
    let api = Api::login(&org).await;
    use reqwest::Method as M;
    let records: Vec<Value> = (0..200)
        .map(|i| json!({"attributes": {"type": "Account"}, "Name": format!("Acct {i:03}"), "AnnualRevenue": i * 10, "BillingCountry": if i % 2 == 0 { "FR" } else { "DE" }}))
        .collect();
    for _ in 0..12 {
        let (s, _, _) = api
            .call(
                M::POST,
                "/composite/sobjects",
                Some(json!({"records": records})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let q = |soql: &str| format!("/query?q={}", urlencode(soql));
    let (_, _, b) = api.call(M::GET, &q("select Id, Name from account where BillingCountry = 'fr' and AnnualRevenue >= 1000 order by AnnualRevenue desc, Name limit 5"), None).await;
    assert_eq!(b["totalSize"], json!(5));
    assert_eq!(b["done"], json!(true));
    assert_eq!(b["records"][0]["Name"], json!("Acct 198"));
    let mut keys: Vec<&String> = b["records"][0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["Id", "Name", "attributes"]);

    let (_, _, b) = api.call(M::GET, &q("SELECT Name FROM Account WHERE Name LIKE 'Acct 00%' OR (AnnualRevenue IN (1990) AND NOT BillingCountry = 'FR')"), None).await;
    assert_eq!(b["totalSize"], json!(12 * 11));

    // 2,400 rows: one full page, then the rest through nextRecordsUrl.
    let (_, _, p1) = api
        .call(M::GET, &q("SELECT Id FROM Account ORDER BY Id"), None)
        .await;
    assert_eq!(p1["totalSize"], json!(2400));
    assert_eq!(p1["done"], json!(false));
    assert_eq!(p1["records"].as_array().unwrap().len(), 2000);
    let next = p1["nextRecordsUrl"].as_str().unwrap();
    assert!(next.starts_with("/services/data/v59.0/query/01g"));
    let resp = api
        .http
        .get(format!("{}{next}", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let p2: Value = resp.json().await.unwrap();
    assert_eq!(p2["done"], json!(true));
    assert_eq!(p2["records"].as_array().unwrap().len(), 400);
    assert!(p2.get("nextRecordsUrl").is_none());

    let (s, _, b) = api
        .call(M::GET, &q("SELECT Id FROM Account WHERE"), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b[0]["errorCode"], json!("MALFORMED_QUERY"));
    let (_, _, b) = api
        .call(M::GET, &q("SELECT Bogus FROM Account"), None)
        .await;
    assert_eq!(b[0]["errorCode"], json!("INVALID_FIELD"));
    let (_, _, b) = api.call(M::GET, &q("SELECT Id FROM Widget"), None).await;
    assert_eq!(b[0]["errorCode"], json!("INVALID_TYPE"));
    let (_, _, b) = api
        .call(M::GET, "/query/01gDn0000000XXXAAA-2000", None)
        .await;
    assert_eq!(b[0]["errorCode"], json!("INVALID_QUERY_LOCATOR"));
}

#[tokio::test]
async fn admin_surface_and_cometd_auth() {
    let org = start().await;
    let http = reqwest::Client::new();
    let base = org.url();
    let r: Value = http
        .post(format!("{base}/__admin/limits"))
        .json(&json!({"limit": 5, "used": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"used": 5, "limit": 5}));
    let api = Api::login(&org).await;
    let (s, h, b) = api.call(reqwest::Method::GET, "/limits", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        b,
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );
    assert_eq!(h["sforce-limit-info"], "api-usage=5/5");
    assert!(!h.contains_key("retry-after"));
    http.post(format!("{base}/__admin/limits"))
        .json(&json!({"limit": 100, "used": 0}))
        .send()
        .await
        .unwrap();

    http.post(format!("{base}/__admin/clock"))
        .json(&json!({"frozenAt": "2024-05-05T05:05:05Z"}))
        .send()
        .await
        .unwrap();
    let (_, _, b) = api
        .call(
            reqwest::Method::POST,
            "/sobjects/Account",
            Some(json!({"Name": "frozen"})),
        )
        .await;
    let id = b["id"].as_str().unwrap();
    let (_, _, rec) = api
        .call(
            reqwest::Method::GET,
            &format!("/sobjects/Account/{id}"),
            None,
        )
        .await;
    assert_eq!(rec["SystemModstamp"], json!("2024-05-05T05:05:05.000+0000"));
    let w: Value = http
        .get(format!("{base}/__admin/written?object=Account"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(w["written"][0]["fields"], json!({"Name": "frozen"}));
    assert_eq!(w["written"][0]["op"], json!("create"));
    let r: Value = http
        .post(format!("{base}/__admin/tokens/expire"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["revoked"].as_u64().unwrap() >= 1);

    let hs: Value = http
        .post(format!("{base}/cometd/59.0"))
        .json(&json!([{"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hs[0]["successful"], json!(false));
    assert_eq!(hs[0]["error"], json!("403::Handshake denied"));
    assert_eq!(
        hs[0]["ext"]["sfdc"]["failureReason"],
        json!("401::Authentication invalid")
    );
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
