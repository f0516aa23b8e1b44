"""The HubSpot simulator driven through HubSpot's official Python SDK
(hubspot-api-client): CRUD, list paging, search paging, batch calls, OAuth,
error handling and webhook signatures. If the SDK can't talk to the
simulator, the simulator is wrong."""

import http.server
import json
import threading
import time
import uuid

import pytest
import requests
from hubspot import HubSpot
from hubspot.crm.companies import (
    BatchInputSimplePublicObjectBatchInputForCreate as CompanyBatchCreate,
    SimplePublicObjectBatchInputForCreate as CompanyCreateInput,
)
from hubspot.crm.contacts import (
    ApiException,
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInput,
    SimplePublicObjectBatchInputForCreate,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.deals import ApiException as DealsApiException
from hubspot.crm.deals import PublicObjectSearchRequest as DealSearch
from hubspot.crm.deals import SimplePublicObjectInputForCreate as DealInput
from hubspot.utils.signature import Signature

PRIVATE_APP_TOKEN = "pat-na1-extsync-sim"
CLIENT_ID = "extsync-sim-client"
CLIENT_SECRET = "extsync-sim-secret"
REFRESH_TOKEN = "na1-extsync-sim-refresh"


@pytest.fixture(scope="session")
def hubspot_sim(start_simulator):
    sim = start_simulator("hubspot")
    requests.post(
        f"{sim.url}/__admin/limits",
        json={"tenSecondly": 1_000_000, "daily": 100_000_000, "searchPerSecond": 1_000_000},
        timeout=5,
    ).raise_for_status()
    return sim


@pytest.fixture
def client(hubspot_sim):
    return HubSpot(access_token=PRIVATE_APP_TOKEN, host=hubspot_sim.url)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_contact_crud(client):
    email = f"{unique('crud')}@example.com"
    created = client.crm.contacts.basic_api.create(
        simple_public_object_input_for_create=SimplePublicObjectInputForCreate(
            properties={"email": email, "firstname": "Ada"}
        )
    )
    assert created.id.isdigit()
    assert created.properties["hs_object_id"] == created.id
    assert created.archived is False

    got = client.crm.contacts.basic_api.get_by_id(created.id, properties=["email", "firstname"])
    assert got.properties["email"] == email
    assert got.properties["firstname"] == "Ada"

    updated = client.crm.contacts.basic_api.update(
        created.id, simple_public_object_input=SimplePublicObjectInput(properties={"lastname": "Lovelace"})
    )
    assert updated.properties["lastname"] == "Lovelace"
    assert updated.updated_at >= created.updated_at

    by_email = client.crm.contacts.basic_api.get_by_id(email, id_property="email", properties=["lastname"])
    assert by_email.id == created.id
    assert by_email.properties["lastname"] == "Lovelace"

    client.crm.contacts.basic_api.archive(created.id)
    with pytest.raises(ApiException) as err:
        client.crm.contacts.basic_api.get_by_id(created.id)
    assert err.value.status == 404


def test_get_page_paging_and_get_all(client):
    marker = unique("co")
    inputs = [CompanyCreateInput(properties={"name": f"{marker} {i}", "domain": f"{marker}-{i}.example"}) for i in range(37)]
    resp = client.crm.companies.batch_api.create(
        batch_input_simple_public_object_batch_input_for_create=CompanyBatchCreate(inputs=inputs)
    )
    assert resp.status == "COMPLETE"
    mine = {r.id for r in resp.results}
    assert len(mine) == 37

    seen = []
    after = None
    while True:
        page = client.crm.companies.basic_api.get_page(limit=10, after=after, properties=["name"])
        seen.extend(r.id for r in page.results)
        if page.paging is None or page.paging.next is None:
            break
        after = page.paging.next.after
    assert mine <= set(seen)
    assert len(seen) == len(set(seen))

    every = client.crm.companies.get_all(properties=["name"])
    assert mine <= {r.id for r in every}


def test_search_paging(client):
    pipeline = unique("pl")
    for i in range(45):
        client.crm.deals.basic_api.create(
            simple_public_object_input_for_create=DealInput(
                properties={"dealname": f"deal {i}", "amount": str(i), "pipeline": pipeline}
            )
        )
    seen = []
    after = None
    total = None
    while True:
        req = DealSearch(
            filter_groups=[{"filters": [{"propertyName": "pipeline", "operator": "EQ", "value": pipeline}]}],
            sorts=[{"propertyName": "amount", "direction": "ASCENDING"}],
            properties=["dealname", "amount"],
            limit=20,
            after=after,
        )
        page = client.crm.deals.search_api.do_search(public_object_search_request=req)
        total = page.total
        seen.extend(float(r.properties["amount"]) for r in page.results)
        if page.paging is None or page.paging.next is None:
            break
        after = page.paging.next.after
    assert total == 45
    assert seen == [float(i) for i in range(45)]

    over = DealSearch(filter_groups=[], limit=10, after="10000")
    with pytest.raises(DealsApiException) as err:
        client.crm.deals.search_api.do_search(public_object_search_request=over)
    assert err.value.status == 400
    assert json.loads(err.value.body)["category"] == "VALIDATION_ERROR"


def test_batch_calls_and_partial_failure(client):
    marker = unique("b")
    emails = [f"{marker}-{i}@example.com" for i in range(5)]
    created = client.crm.contacts.batch_api.create(
        batch_input_simple_public_object_batch_input_for_create=BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[SimplePublicObjectBatchInputForCreate(properties={"email": e}) for e in emails]
        )
    )
    assert created.status == "COMPLETE"
    assert created.started_at is not None and created.completed_at is not None
    ids = [r.id for r in created.results]

    read = client.crm.contacts.batch_api.read(
        batch_read_input_simple_public_object_id=BatchReadInputSimplePublicObjectId(
            properties=["email"], properties_with_history=[], inputs=[SimplePublicObjectId(id=i) for i in ids]
        )
    )
    assert sorted(r.properties["email"] for r in read.results) == sorted(emails)

    updated = client.crm.contacts.batch_api.update(
        batch_input_simple_public_object_batch_input=BatchInputSimplePublicObjectBatchInput(
            inputs=[SimplePublicObjectBatchInput(id=i, properties={"firstname": "B"}) for i in ids]
        )
    )
    assert {r.properties["firstname"] for r in updated.results} == {"B"}

    upserted = client.crm.contacts.batch_api.upsert(
        batch_input_simple_public_object_batch_input_upsert=BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                SimplePublicObjectBatchInputUpsert(id=emails[0], id_property="email", properties={"lastname": "U"}),
                SimplePublicObjectBatchInputUpsert(
                    id=f"{marker}-new@example.com", id_property="email", properties={"lastname": "N"}
                ),
            ]
        )
    )
    assert sorted(r.new for r in upserted.results) == [False, True]

    partial = client.crm.contacts.batch_api.create(
        batch_input_simple_public_object_batch_input_for_create=BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[
                SimplePublicObjectBatchInputForCreate(properties={"email": f"{marker}-ok@example.com"}),
                SimplePublicObjectBatchInputForCreate(properties={"email": emails[1]}),
            ]
        )
    )
    assert len(partial.results) == 1
    assert partial.num_errors == 1
    assert partial.errors[0].category == "CONFLICT"
    assert partial.errors[0].message == f"Contact already exists. Existing ID: {ids[1]}"

    client.crm.contacts.batch_api.archive(
        batch_input_simple_public_object_id=BatchInputSimplePublicObjectId(
            inputs=[SimplePublicObjectId(id=i) for i in ids]
        )
    )
    gone = client.crm.contacts.batch_api.read(
        batch_read_input_simple_public_object_id=BatchReadInputSimplePublicObjectId(
            properties=["email"], properties_with_history=[], inputs=[SimplePublicObjectId(id=ids[0])]
        )
    )
    assert gone.results == []
    assert gone.errors[0].category == "OBJECT_NOT_FOUND"


def test_error_handling(client, hubspot_sim):
    email = f"{unique('err')}@example.com"
    first = client.crm.contacts.basic_api.create(
        simple_public_object_input_for_create=SimplePublicObjectInputForCreate(properties={"email": email})
    )
    with pytest.raises(ApiException) as err:
        client.crm.contacts.basic_api.create(
            simple_public_object_input_for_create=SimplePublicObjectInputForCreate(properties={"email": email})
        )
    assert err.value.status == 409
    body = json.loads(err.value.body)
    assert body["category"] == "CONFLICT"
    assert body["message"] == f"Contact already exists. Existing ID: {first.id}"

    with pytest.raises(ApiException) as err:
        client.crm.contacts.basic_api.create(
            simple_public_object_input_for_create=SimplePublicObjectInputForCreate(properties={"no_such_prop": "x"})
        )
    assert err.value.status == 400
    body = json.loads(err.value.body)
    assert body["category"] == "VALIDATION_ERROR"
    assert "PROPERTY_DOESNT_EXIST" in body["message"]

    stranger = HubSpot(access_token="pat-na1-not-a-token", host=hubspot_sim.url)
    with pytest.raises(ApiException) as err:
        stranger.crm.contacts.basic_api.get_page()
    assert err.value.status == 401
    assert json.loads(err.value.body)["category"] == "INVALID_AUTHENTICATION"


def test_oauth_refresh_and_expiry(hubspot_sim):
    anon = HubSpot(host=hubspot_sim.url)
    tokens = anon.oauth.tokens_api.create(
        grant_type="refresh_token", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN
    )
    assert tokens.expires_in == 1800
    app = HubSpot(access_token=tokens.access_token, host=hubspot_sim.url)
    app.crm.contacts.basic_api.get_page(limit=1)

    requests.post(f"{hubspot_sim.url}/__admin/faults", json={"expireTokens": True}, timeout=5).raise_for_status()
    with pytest.raises(ApiException) as err:
        app.crm.contacts.basic_api.get_page(limit=1)
    assert err.value.status == 401
    assert json.loads(err.value.body)["category"] == "EXPIRED_AUTHENTICATION"

    fresh = anon.oauth.tokens_api.create(
        grant_type="refresh_token", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN
    )
    HubSpot(access_token=fresh.access_token, host=hubspot_sim.url).crm.contacts.basic_api.get_page(limit=1)

    from hubspot.oauth import ApiException as OAuthApiException

    with pytest.raises(OAuthApiException) as err:
        anon.oauth.tokens_api.create(
            grant_type="refresh_token", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token="na1-nope"
        )
    assert err.value.status == 400
    assert json.loads(err.value.body)["status"] == "BAD_REFRESH_TOKEN"


def test_rate_limit_429(start_simulator):
    sim = start_simulator("hubspot")
    requests.post(f"{sim.url}/__admin/limits", json={"tenSecondly": 2}, timeout=5).raise_for_status()
    client = HubSpot(access_token=PRIVATE_APP_TOKEN, host=sim.url)
    client.crm.contacts.basic_api.get_page(limit=1)
    client.crm.contacts.basic_api.get_page(limit=1)
    with pytest.raises(ApiException) as err:
        client.crm.contacts.basic_api.get_page(limit=1)
    assert err.value.status == 429
    body = json.loads(err.value.body)
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert err.value.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert err.value.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"


class _Hook(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((self.path, dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_signature_validates_with_the_sdk(client, hubspot_sim):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{server.server_address[1]}/hooks/hubspot"
    try:
        requests.post(
            f"{hubspot_sim.url}/__admin/webhooks",
            json={"targetUrl": target, "subscriptions": ["contact.creation"]},
            timeout=5,
        ).raise_for_status()
        created = client.crm.contacts.basic_api.create(
            simple_public_object_input_for_create=SimplePublicObjectInputForCreate(
                properties={"email": f"{unique('hook')}@example.com"}
            )
        )
        deadline = time.monotonic() + 10
        while not _Hook.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _Hook.received, "no webhook delivered"
        path, headers, body = _Hook.received[0]
        headers = {k.lower(): v for k, v in headers.items()}
        assert Signature.is_valid(
            signature=headers["x-hubspot-signature-v3"],
            client_secret=CLIENT_SECRET,
            request_body=body.decode(),
            http_uri=target,
            http_method="POST",
            signature_version="v3",
            timestamp=headers["x-hubspot-request-timestamp"],
        )
        assert Signature.is_valid(
            signature=headers["x-hubspot-signature"],
            client_secret=CLIENT_SECRET,
            request_body=body.decode(),
            signature_version="v1",
        )
        events = json.loads(body)
        assert any(e["objectId"] == int(created.id) and e["subscriptionType"] == "contact.creation" for e in events)
    finally:
        requests.post(f"{hubspot_sim.url}/__admin/webhooks", json={"targetUrl": ""}, timeout=5)
        server.shutdown()
