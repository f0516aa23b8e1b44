"""simple-salesforce, the de-facto Python SDK, against the Salesforce simulator:
CRUD, upsert, SOQL paging (query_all), composite collections, OAuth flows
with automatic session refresh, and the SDK's error mapping.

simple-salesforce always builds https:// URLs on *.salesforce.com or the
instance host; a requests transport adapter sends them to the simulator's
loopback address instead (the only change from talking to the real service).
"""

import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import (
    Salesforce,
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

CLIENT_ID = "extsync-demo-client"
CLIENT_SECRET = "extsync-demo-secret"
REFRESH_TOKEN = "extsync-demo-refresh-token"
USERNAME = "demo@extsync.test"
PASSWORD = "extsync-demo-password"
VERSION = "59.0"


class ToSimulator(HTTPAdapter):
    """Sends every https:// request to the simulator, keeping path and query."""

    def __init__(self, base_url):
        super().__init__()
        self.base = base_url.rstrip("/")

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        request.url = self.base + urlunsplit(("", "", parts.path, parts.query, parts.fragment))
        return super().send(request, **kwargs)


def sdk_session(base_url):
    s = requests.Session()
    s.mount("https://", ToSimulator(base_url))
    return s


def login(base_url):
    r = requests.post(
        f"{base_url}/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
        },
        timeout=10,
    )
    r.raise_for_status()
    body = r.json()
    assert "expires_in" not in body
    return body["access_token"], body["instance_url"]


@pytest.fixture
def sf(salesforce_sim):
    token, instance_url = login(salesforce_sim.url)
    return Salesforce(
        instance_url=instance_url,
        session_id=token,
        version=VERSION,
        session=sdk_session(salesforce_sim.url),
    )


def admin(sim, path, body=None):
    r = requests.post(f"{sim.url}/__admin/{path}", json=body or {}, timeout=10)
    r.raise_for_status()
    return r.json()


def tag():
    return uuid.uuid4().hex[:10]


def test_crud_and_upsert(sf):
    name = f"Acme {tag()}"
    created = sf.Account.create({"Name": name, "BillingCity": "Paris", "MRR__c": 99.5})
    assert created["success"] is True and created["errors"] == []
    acct_id = created["id"]
    assert acct_id.startswith("001") and len(acct_id) == 18

    rec = sf.Account.get(acct_id)
    assert rec["Name"] == name
    assert rec["attributes"]["type"] == "Account"
    assert rec["SystemModstamp"].endswith("+0000")

    assert sf.Account.update(acct_id, {"BillingCity": "Lyon"}) == 204
    assert sf.Account.get(acct_id)["BillingCity"] == "Lyon"

    ext = f"ext-{tag()}"
    assert sf.Account.upsert(f"Alguna_Id__c/{ext}", {"Name": "Upserted"}) == 201
    assert sf.Account.upsert(f"Alguna_Id__c/{ext}", {"Name": "Upserted 2"}) == 200
    assert sf.Account.get_by_custom_id("Alguna_Id__c", ext)["Name"] == "Upserted 2"

    contact = sf.Contact.create({"LastName": "Lee", "AccountId": acct_id, "Email": "lee@example.com"})
    opp = sf.Opportunity.create(
        {"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2025-06-30", "Amount": 1200, "AccountId": acct_id}
    )
    assert contact["id"].startswith("003") and opp["id"].startswith("006")

    assert sf.Account.delete(acct_id) == 204
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.get(acct_id)
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get(contact["id"])  # cascaded


def test_query_all_follows_next_records_url(sf):
    last = f"Paged{tag()}"
    for batch in range(13):
        records = [
            {"attributes": {"type": "Contact"}, "LastName": last, "FirstName": f"n{batch * 200 + i}"}
            for i in range(200)
        ]
        results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
        assert all(r["success"] for r in results)

    first = sf.query(f"SELECT Id, FirstName FROM Contact WHERE LastName = '{last}' ORDER BY Id")
    assert first["totalSize"] == 2600
    assert first["done"] is False
    assert len(first["records"]) == 2000
    assert first["nextRecordsUrl"].startswith(f"/services/data/v{VERSION}/query/")

    everything = sf.query_all(f"SELECT Id FROM Contact WHERE LastName = '{last}'")
    assert everything["totalSize"] == 2600
    assert len({r["Id"] for r in everything["records"]}) == 2600

    count = sf.query(f"SELECT COUNT() FROM Contact WHERE LastName = '{last}'")
    assert count["totalSize"] == 2600 and count["records"] == []


def test_composite_collections(sf):
    t = tag()
    created = sf.restful(
        "composite/sobjects",
        method="POST",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Account"}, "Name": f"C1 {t}"},
                {"attributes": {"type": "Account"}, "Phone": "no name"},
                {"attributes": {"type": "Account"}, "Name": f"C3 {t}"},
            ],
        },
    )
    assert [r["success"] for r in created] == [True, False, True]
    assert created[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    ids = [created[0]["id"], created[2]["id"]]

    updated = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={"allOrNone": True, "records": [{"attributes": {"type": "Account"}, "id": i, "Phone": "555"} for i in ids]},
    )
    assert all(r["success"] for r in updated)

    upserted = sf.restful(
        "composite/sobjects/Account/Alguna_Id__c",
        method="PATCH",
        json={"records": [{"attributes": {"type": "Account"}, "Alguna_Id__c": f"u-{t}", "Name": "U"}]},
    )
    assert upserted[0]["created"] is True

    fetched = sf.restful(f"composite/sobjects/Account", params={"ids": ",".join(ids), "fields": "Name,Phone"})
    assert [r["Phone"] for r in fetched] == ["555", "555"]

    deleted = sf.restful("composite/sobjects", method="DELETE", params={"ids": ",".join(ids), "allOrNone": "true"})
    assert all(r["success"] for r in deleted)


def test_sdk_error_mapping(sf, salesforce_sim):
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Opportunity.create({"Name": "no stage"})
    assert e.value.content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert e.value.content[0]["fields"] == ["StageName", "CloseDate"]

    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Opportunity.create({"Name": "neg", "StageName": "Prospecting", "CloseDate": "2025-01-01", "Amount": -1})
    assert e.value.content[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert e.value.content[0]["message"] == "Amount cannot be negative"

    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Account.create({"Name": "x", "Undeclared__c": 1})
    assert e.value.content[0]["errorCode"] == "INVALID_FIELD"

    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.query("SELECT Id FROM Account WHERE")
    assert e.value.content[0]["errorCode"] == "MALFORMED_QUERY"

    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.get("001Dn000000zzzzAAA")

    legacy = f"L-{tag()}"
    for n in range(2):
        sf.Account.create({"Name": f"legacy {n}", "Legacy_Id__c": legacy})
    with pytest.raises(SalesforceMoreThanOneRecord) as e:
        sf.Account.upsert(f"Legacy_Id__c/{legacy}", {"Name": "which"})
    assert len(e.value.content) == 2

    sf.query("SELECT COUNT() FROM Account")
    used, total = sf.api_usage["api-usage"]
    assert 0 < used <= total
    admin(salesforce_sim, "limits", {"used": total})
    try:
        with pytest.raises(SalesforceRefusedRequest) as e:
            sf.Account.get("001Dn000000zzzzAAA")
        assert e.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    finally:
        admin(salesforce_sim, "limits", {"used": 0})

    admin(salesforce_sim, "tokens/expire")
    with pytest.raises(SalesforceExpiredSession) as e:
        sf.Account.get("001Dn000000zzzzAAA")
    assert e.value.content == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def test_oauth_logins_refresh_expired_sessions(salesforce_sim):
    session = sdk_session(salesforce_sim.url)
    pw = Salesforce(
        username=USERNAME,
        password=PASSWORD,
        consumer_key=CLIENT_ID,
        consumer_secret=CLIENT_SECRET,
        version=VERSION,
        session=session,
    )
    acct = pw.Account.create({"Name": f"pw {tag()}"})
    admin(salesforce_sim, "tokens/expire")
    assert pw.Account.get(acct["id"])["Id"] == acct["id"], "the SDK logs in again after INVALID_SESSION_ID"

    cc = Salesforce(
        consumer_key=CLIENT_ID,
        consumer_secret=CLIENT_SECRET,
        domain="extsync-demo.my",
        version=VERSION,
        session=session,
    )
    assert cc.Account.get(acct["id"])["Id"] == acct["id"]

    with pytest.raises(Exception) as e:
        Salesforce(username=USERNAME, password="wrong", consumer_key=CLIENT_ID, consumer_secret=CLIENT_SECRET, session=session)
    assert "authentication failure" in str(e.value)


def test_describe_and_limits(sf):
    describe = sf.Account.describe()
    fields = {f["name"]: f for f in describe["fields"]}
    assert fields["Alguna_Id__c"]["externalId"] is True
    assert fields["Name"]["nillable"] is False
    assert {o["name"] for o in sf.describe()["sobjects"]} >= {"Account", "Contact", "Opportunity"}
    assert sf.limits()["DailyApiRequests"]["Max"] > 0
