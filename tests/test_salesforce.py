"""The Salesforce destination with the real simple-salesforce library against the fake org."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import requests
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import SalesforceMalformedRequest

from connectors.destinations.requests_transport import VendorAdapter
from connectors.destinations.salesforce import SalesforceDestination
from connectors.destinations.salesforce_params import SALESFORCE_ORIGIN
from connectors.sandbox.salesforce import FakeSalesforce, new_record_id
from connectors.sandbox.salesforce_api import create_app
from hub.errors import AuthDeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery
from hub.serving import BackgroundServer
from tests.conftest import vendor_fake_fixtures

PROFILE_ID = "01JDQ7Y8K3M2N4P5Q6R7S8T9V0"
PARAMS = {
    "intent": "support_request",
    "fields": {"LeadSource": "Touchpoint Hub"},
    "task": {"subject": "Customer opened a ticket after buying", "priority": "High"},
}
CONTENT = {"body": "Ana opened a ticket.", "field_LastName": "Silva", "field_Company": "[not provided]",
           "field_Email": "", "params": PARAMS}


fake, server, fresh = vendor_fake_fixtures("fake", FakeSalesforce, create_app)


def destination(server: BackgroundServer, fake: FakeSalesforce, **overrides: Any) -> SalesforceDestination:
    config = SalesforceDestination.validate_config("test", {
        "consumer_key": fake.consumer_key, "consumer_secret": fake.consumer_secret,
        "username": fake.username, "password": fake.password, "api_base_url": server.url,
        "timeout_seconds": 2, **overrides,
    })
    return SalesforceDestination("salesforce", config)


@pytest.fixture
def crm(server: BackgroundServer, fake: FakeSalesforce) -> Iterator[SalesforceDestination]:
    built = destination(server, fake)
    yield built
    built.close()


def delivery(content: dict[str, Any] = CONTENT, delivery_id: str = "dlv-1") -> Delivery:
    return Delivery(delivery_id, "salesforce", "crm", PROFILE_ID, content, 0, datetime.now(timezone.utc))


def test_first_send_creates_the_lead_and_an_owner_task(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    result = crm.deliver(delivery())

    [lead] = fake.records("Lead")
    assert {k: lead[k] for k in ("LastName", "Company", "LeadSource", "Touchhub_Intent__c", "Touchhub_Profile_Id__c")} == {
        "LastName": "Silva", "Company": "[not provided]", "LeadSource": "Touchpoint Hub",
        "Touchhub_Intent__c": "support_request", "Touchhub_Profile_Id__c": PROFILE_ID,
    }
    assert "Email" not in lead  # an empty block never blanks a CRM field
    [task] = fake.records("Task")
    assert (task["WhoId"], task["OwnerId"], task["Subject"], task["Priority"]) == (
        lead["Id"], fake.owner_id, "Customer opened a ticket after buying", "High"
    )
    assert (task["Description"], task["Touchhub_Delivery_Id__c"]) == ("Ana opened a ticket.", "dlv-1")
    assert result.provider_message_id == lead["Id"]
    assert result.response_summary == {"sobject": "Lead", "record_id": lead["Id"], "created": True, "task_id": task["Id"]}
    assert [(r["method"], r["path"].split("/sobjects/")[-1], r["status"]) for r in fake.requests] == [
        ("POST", "/services/oauth2/token", 200),
        ("PATCH", f"Lead/Touchhub_Profile_Id__c/{PROFILE_ID}", 201),
        ("GET", f"Lead/Touchhub_Profile_Id__c/{PROFILE_ID}", 200),
        ("PATCH", "Task/Touchhub_Delivery_Id__c/dlv-1", 201),
    ]
    assert fake.requests[1]["path"].startswith("/services/data/v59.0/")


def test_resending_updates_the_same_records(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    crm.deliver(delivery())
    again = crm.deliver(delivery({**CONTENT, "params": {**PARAMS, "intent": "churn_risk"}}))
    [lead] = fake.records("Lead")
    assert (lead["Touchhub_Intent__c"], again.response_summary["created"]) == ("churn_risk", False)
    assert len(fake.records("Task")) == 1
    assert fake.logins == 1  # the session is reused


MERGED_ID = "01JDQ7Y8K3M2N4P5Q6R7S8T9AA"  # a profile since merged into PROFILE_ID


def after_merge(content: dict[str, Any] = CONTENT, delivery_id: str = "dlv-2") -> Delivery:
    """A delivery for PROFILE_ID, which MERGED_ID was merged into after a delivery of its own went out."""
    return replace(delivery(content, delivery_id), previous_targets=(MERGED_ID,))


def lead_of_merged_profile(crm: SalesforceDestination, fake: FakeSalesforce) -> dict[str, Any]:
    crm.deliver(replace(delivery(delivery_id="dlv-1"), target=MERGED_ID))
    [lead] = fake.records("Lead")
    return lead


def test_the_survivor_takes_over_the_lead_of_a_profile_merged_into_it(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    lead = lead_of_merged_profile(crm, fake)
    before = len(fake.requests)

    result = crm.deliver(after_merge())

    [kept] = fake.records("Lead")
    assert (kept["Id"], kept["Touchhub_Profile_Id__c"]) == (lead["Id"], PROFILE_ID)
    assert result.response_summary["created"] is False
    assert result.response_summary["carried_over_from"] == MERGED_ID
    assert {task["WhoId"] for task in fake.records("Task")} == {lead["Id"]}
    assert [(r["method"], r["path"].split("/sobjects/")[-1], r["status"]) for r in fake.requests[before:]][:4] == [
        ("GET", f"Lead/Touchhub_Profile_Id__c/{PROFILE_ID}", 404),
        ("GET", f"Lead/Touchhub_Profile_Id__c/{MERGED_ID}", 200),
        ("PATCH", f"Lead/{lead['Id']}", 204),
        ("PATCH", f"Lead/Touchhub_Profile_Id__c/{PROFILE_ID}", 200),
    ]
    assert crm.request_summary(after_merge())["previous_keys"] == [MERGED_ID]


def test_when_both_profiles_have_a_lead_the_survivors_is_updated_and_both_stay(
    crm: SalesforceDestination, fake: FakeSalesforce
) -> None:
    """The REST API cannot merge two records: that is left to Salesforce's own duplicate management."""
    lead_of_merged_profile(crm, fake)
    crm.deliver(delivery(delivery_id="dlv-0"))

    result = crm.deliver(after_merge())

    assert sorted(lead["Touchhub_Profile_Id__c"] for lead in fake.records("Lead")) == sorted([MERGED_ID, PROFILE_ID])
    assert "carried_over_from" not in result.response_summary


def test_a_lead_made_for_the_survivor_meanwhile_is_updated_instead(
    crm: SalesforceDestination, fake: FakeSalesforce, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's first update for the survivor lands between the look and the re-key: Salesforce refuses
    the re-key (DUPLICATE_VALUE) and the upsert updates that Lead."""
    lead_of_merged_profile(crm, fake)
    find = fake._find

    def another_send_lands(sobject: str, field: str, value: str) -> dict[str, Any] | None:
        found = find(sobject, field, value)
        if value == MERGED_ID:
            fake._write("Lead", new_record_id("Lead"), {"LastName": "Silva", "Company": "x", field: PROFILE_ID})
        return found

    monkeypatch.setattr(fake, "_find", another_send_lands)
    result = crm.deliver(after_merge())

    assert ("PATCH", 400) in [(r["method"], r["status"]) for r in fake.requests]
    assert "carried_over_from" not in result.response_summary
    assert result.response_summary["created"] is False
    assert sorted(lead["Touchhub_Profile_Id__c"] for lead in fake.records("Lead")) == sorted([MERGED_ID, PROFILE_ID])


def test_the_fake_refuses_an_external_id_another_record_holds(server: BackgroundServer, fake: FakeSalesforce) -> None:
    crm = destination(server, fake)
    crm.deliver(delivery())
    crm.deliver(replace(delivery(delivery_id="dlv-2"), target=MERGED_ID))
    other = next(lead for lead in fake.records("Lead") if lead["Touchhub_Profile_Id__c"] == MERGED_ID)
    with pytest.raises(SalesforceMalformedRequest) as refused:
        crm._client().Lead.update(other["Id"], {"Touchhub_Profile_Id__c": PROFILE_ID})
    assert refused.value.content[0]["errorCode"] == "DUPLICATE_VALUE"
    crm.close()


def test_contact_without_task_is_one_upsert(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    crm.deliver(delivery({"body": "", "field_LastName": "Silva", "params": {"sobject": "Contact", "intent": "vip"}}))
    assert [c["Touchhub_Intent__c"] for c in fake.records("Contact")] == ["vip"]
    assert (fake.records("Lead"), fake.records("Task")) == ([], [])


def test_expired_session_logs_in_again_and_retries_once(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    crm.deliver(delivery())
    fake.expire_sessions()
    crm.deliver(delivery(delivery_id="dlv-2"))
    assert fake.logins == 2
    statuses = [r["status"] for r in fake.requests]
    assert statuses[4:] == [401, 200, 200, 200, 201]  # refused, login, then the whole write again
    assert len(fake.records("Task")) == 2


def test_session_refused_again_after_login_is_an_auth_failure(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    fake.fail_next(401, "INVALID_SESSION_ID", message="Session expired or invalid", times=2)
    with pytest.raises(AuthDeliveryError) as refused:
        crm.deliver(delivery())
    assert refused.value.failure.error_class == "salesforce.INVALID_SESSION_ID"
    assert fake.logins == 2
    assert fake.records("Lead") == []


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "REQUEST_LIMIT_EXCEEDED"), (503, "SERVER_UNAVAILABLE"), (500, "UNKNOWN_EXCEPTION"), (502, "BAD_GATEWAY"),
     (400, "UNABLE_TO_LOCK_ROW")],
)
def test_limits_and_server_errors_are_retryable(crm: SalesforceDestination, fake: FakeSalesforce, status: int, code: str) -> None:
    fake.fail_next(status, code)
    with pytest.raises(RetryableDeliveryError) as failed:
        crm.deliver(delivery())
    assert (failed.value.failure.error_class, failed.value.failure.provider_code) == (f"salesforce.{code}", code)
    assert fake.records("Lead") == []
    crm.deliver(delivery())
    assert len(fake.records("Lead")) == 1


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ({**CONTENT, "params": {**PARAMS, "fields": {"Shoe_Size__c": 42}}}, "INVALID_FIELD"),
        ({**CONTENT, "field_OwnerId": "not-an-id"}, "MALFORMED_ID"),
        ({**CONTENT, "field_OwnerId": "005" + "0" * 15}, "INVALID_CROSS_REFERENCE_KEY"),
        ({"body": "", "params": {"intent": "x"}}, "REQUIRED_FIELD_MISSING"),
    ],
)
def test_records_salesforce_refuses_are_permanent(
    crm: SalesforceDestination, fake: FakeSalesforce, content: dict[str, Any], code: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as refused:
        crm.deliver(delivery(content))
    assert (refused.value.failure.error_class, refused.value.failure.response_summary["status"]) == (f"salesforce.{code}", 400)
    assert fake.records("Lead") == []


@pytest.mark.parametrize(("status", "code", "outcome"), [
    (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", PermanentDeliveryError),
    (400, "STRING_TOO_LONG", PermanentDeliveryError),
    (403, "INSUFFICIENT_ACCESS_OR_READONLY", AuthDeliveryError),
    (403, "API_DISABLED_FOR_ORG", AuthDeliveryError),
])
def test_org_rules_and_permissions_are_never_retried(
    crm: SalesforceDestination, fake: FakeSalesforce, status: int, code: str, outcome: type
) -> None:
    fake.fail_next(status, code)
    with pytest.raises(outcome) as refused:
        crm.deliver(delivery())
    assert refused.value.failure.provider_code == code


def test_malformed_params_are_permanent_before_any_request(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    bad = {"body": "", "params": {"fields": ["LastName"], "task": {"priority": "Urgent"}}}
    with pytest.raises(PermanentDeliveryError) as refused:
        crm.deliver(delivery(bad))
    message = refused.value.failure.message
    assert "params.fields" in message and "params.task.subject" in message and "params.task.priority" in message
    assert fake.requests == []
    assert "; ".join(SalesforceDestination.check_params(bad["params"])) == message  # what the rules are checked by
    assert SalesforceDestination.check_params({"sobject": "Contact", "fields": {"Title": "CTO"}, "task": {"subject": "Call"}}) == []


@pytest.mark.parametrize(("override", "code"), [
    ({"consumer_secret": "wrong"}, "invalid_client_id"), ({"password": "wrong"}, "invalid_grant"),
])
def test_refused_login_is_an_auth_failure(
    server: BackgroundServer, fake: FakeSalesforce, override: dict[str, str], code: str
) -> None:
    crm = destination(server, fake, **override)
    with pytest.raises(AuthDeliveryError) as refused:
        crm.deliver(delivery())
    assert refused.value.failure.error_class == f"salesforce.login.{code}"
    assert [r["path"] for r in fake.requests] == ["/services/oauth2/token"]


def test_client_credentials_flow_logs_in_on_a_my_domain(server: BackgroundServer, fake: FakeSalesforce) -> None:
    crm = destination(server, fake, username=None, password=None, domain="touchhub-sandbox.my")
    crm.deliver(delivery())
    assert fake.logins == 1 and len(fake.records("Lead")) == 1
    with pytest.raises(ValueError, match="My Domain"):
        SalesforceDestination.Config(consumer_key="k", consumer_secret="s")


def test_a_slow_answer_times_out_as_retryable(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    fake.fail_next(503, "SERVER_UNAVAILABLE", delay_seconds=3)
    with pytest.raises(RetryableDeliveryError) as slow:
        crm.deliver(delivery())
    assert slow.value.failure.error_class == "network.ReadTimeout"


def test_unreachable_salesforce_is_retryable(fake: FakeSalesforce) -> None:
    with BackgroundServer(create_app(fake)) as gone:
        url = gone.url
    crm = destination(gone, fake, api_base_url=url)
    with pytest.raises(RetryableDeliveryError) as down:
        crm.deliver(delivery())
    assert down.value.failure.error_class == "network.ConnectionError"


def test_library_calls_reach_the_fake_and_other_hosts_are_refused(server: BackgroundServer, fake: FakeSalesforce) -> None:
    session = requests.Session()
    session.mount("https://", VendorAdapter(SALESFORCE_ORIGIN, 2, server.url))
    session_id, instance = SalesforceLogin(
        username=fake.username, password=fake.password, consumer_key=fake.consumer_key,
        consumer_secret=fake.consumer_secret, session=session,
    )
    sf = Salesforce(session_id=session_id, instance=instance, session=session)
    created = sf.Lead.create({"LastName": "Silva", "Company": "Acme"})
    assert sf.Lead.get(created["id"])["LastName"] == "Silva"
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Lead.create({"LastName": "Silva"})
    assert refused.value.content == [
        {"message": "Required fields are missing: [Company]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["Company"]}
    ]
    with pytest.raises(ValueError, match="example.com"):
        session.get("https://example.com/services/data")
    assert httpx.get(f"{server.url}/_sandbox/state").json()["logins"] == 1
