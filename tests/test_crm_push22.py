"""Salesforce and FCM edges (audit 22): a converted Lead, a Firebase project that is not the devices', a token
endpoint that stalls. Real simple-salesforce and firebase-admin against the sandbox fakes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from simple_salesforce.exceptions import SalesforceMalformedRequest

from connectors.destinations.fcm_push import FcmPushDestination
from connectors.destinations.salesforce import SalesforceDestination
from connectors.sandbox.fcm import FakeFcm
from connectors.sandbox.fcm import create_app as fcm_app
from connectors.sandbox.salesforce import FakeSalesforce
from connectors.sandbox.salesforce_api import create_app as salesforce_app
from hub.errors import AuthDeliveryError, RetryableDeliveryError
from hub.model import Delivery
from hub.serving import BackgroundServer
from tests.conftest import vendor_fake_fixtures

PROFILE_ID = "01JDQ7Y8K3M2N4P5Q6R7S8T9V0"
TASK = {"subject": "Customer opened a ticket", "priority": "High"}
PHONE = "dGVzdC1waG9uZS10b2tlbjpBUEE5MWJIdGVzdHRva2VuMDAx"
TABLET = "dGVzdC10YWJsZXQtdG9rZW46QVBBOTFiSHRlc3R0b2tlbjAwMg"
PUSH_CONTENT = {"title": "Still thinking it over?", "body": "Your cart is waiting."}

# `vendor_fake_fixtures` serves one fake a module, as ``server``: Salesforce's here; FCM's fixtures are below.
salesforce, server, fresh = vendor_fake_fixtures("salesforce", FakeSalesforce, salesforce_app)


# ---------------------------------------------------------------------------------------------- Salesforce


@pytest.fixture
def crm(server: BackgroundServer, salesforce: FakeSalesforce) -> Iterator[SalesforceDestination]:
    config = SalesforceDestination.validate_config("test", {
        "consumer_key": salesforce.consumer_key, "consumer_secret": salesforce.consumer_secret,
        "username": salesforce.username, "password": salesforce.password, "api_base_url": server.url,
        "timeout_seconds": 2,
    })
    built = SalesforceDestination("salesforce", config)
    yield built
    built.close()


def crm_update(delivery_id: str, title: str) -> Delivery:
    content = {"body": "Ana opened a ticket.", "field_LastName": "Silva", "field_Company": "[not provided]",
               "params": {"intent": "support_request", "fields": {"Title": title}, "task": TASK}}
    return Delivery(delivery_id, "salesforce", "crm", PROFILE_ID, content, 0, datetime.now(timezone.utc))


def test_an_update_for_a_converted_lead_goes_to_its_contact(
    crm: SalesforceDestination, salesforce: FakeSalesforce
) -> None:
    """Once a sales rep converted Ana's Lead, Salesforce refused every update to it with
    CANNOT_UPDATE_CONVERTED_LEAD, which the hub took as permanent: every later CRM update for her was lost."""
    crm.deliver(crm_update("dlv-1", "Visitor"))
    [lead] = salesforce.records("Lead")
    contact_id = salesforce.convert_lead(lead["Id"])

    result = crm.deliver(crm_update("dlv-2", "Buyer"))

    [contact] = salesforce.records("Contact")
    assert (contact["Id"], contact["Title"], contact["Touchhub_Intent__c"]) == (contact_id, "Buyer", "support_request")
    task = next(t for t in salesforce.records("Task") if t["Touchhub_Delivery_Id__c"] == "dlv-2")
    assert (task["WhoId"], task["OwnerId"]) == (contact_id, contact["OwnerId"])
    assert result.provider_message_id == contact_id
    assert result.response_summary == {
        "sobject": "Contact", "record_id": contact_id, "created": False, "converted_lead_id": lead["Id"],
        "left_out": "Company: no such field on Contact (the Lead was converted)", "task_id": task["Id"],
    }
    assert "Company" not in contact
    assert salesforce.records("Lead")[0]["Title"] == "Visitor"  # the converted Lead stays as it was


def test_the_fake_refuses_writes_to_a_converted_lead_as_salesforce_does(
    crm: SalesforceDestination, salesforce: FakeSalesforce
) -> None:
    """The fake let the hub write a converted Lead, so no test met Salesforce's refusal."""
    crm.deliver(crm_update("dlv-1", "Visitor"))
    [lead] = salesforce.records("Lead")
    assert (lead["IsConverted"], lead["ConvertedContactId"]) == (False, None)
    contact_id = salesforce.convert_lead(lead["Id"])
    client = crm._client()
    converted = client.Lead.get(lead["Id"])
    assert (converted["IsConverted"], converted["ConvertedContactId"]) == (True, contact_id)
    for write in (lambda: client.Lead.update(lead["Id"], {"Title": "Buyer"}),
                  lambda: client.Lead.upsert(f"Touchhub_Profile_Id__c/{PROFILE_ID}", {"Title": "Buyer"}),
                  lambda: client.Task.create({"Subject": "Call", "WhoId": lead["Id"]})):
        with pytest.raises(SalesforceMalformedRequest) as refused:
            write()
        assert refused.value.content[0]["errorCode"] == "CANNOT_UPDATE_CONVERTED_LEAD"


# ---------------------------------------------------------------------------------------------- FCM


class Forgotten(dict[str, str]):
    """Token -> the reason the destination gave for calling it dead."""

    def __call__(self, tokens: Sequence[str], reason: str) -> None:
        self.update(dict.fromkeys(tokens, reason))


@pytest.fixture(scope="module")
def fcm() -> FakeFcm:
    return FakeFcm()


@pytest.fixture(scope="module")
def fcm_server(fcm: FakeFcm) -> Iterator[BackgroundServer]:
    with BackgroundServer(fcm_app(fcm)) as running:
        yield running


@pytest.fixture
def forgotten() -> Forgotten:
    return Forgotten()


def push_destination(fcm: FakeFcm, api: BackgroundServer, token_uri: str, folder: Path,
                     forgotten: Forgotten | None = None, timeout: float = 2) -> FcmPushDestination:
    key = folder / "key.json"
    key.write_text(json.dumps(fcm.service_account_key(token_uri)))
    config = FcmPushDestination.validate_config(
        "test", {"credentials_file": key, "api_base_url": api.url, "timeout_seconds": timeout}
    )
    return FcmPushDestination("fcm_push", config, forget_tokens=forgotten)


@pytest.fixture
def push(fcm: FakeFcm, fcm_server: BackgroundServer, tmp_path: Path, forgotten: Forgotten) -> Iterator[FcmPushDestination]:
    fcm.reset()
    built = push_destination(fcm, fcm_server, f"{fcm_server.url}/token", tmp_path, forgotten)
    yield built
    built.close()


def push_delivery(*tokens: str) -> Delivery:
    return Delivery("dlv-1", "fcm_push", "push", tokens[0], {**PUSH_CONTENT, "recipients": list(tokens)}, 0,
                    datetime.now(timezone.utc))


@pytest.mark.parametrize("tokens", [(PHONE,), (PHONE, TABLET)], ids=["one device", "two devices"])
def test_a_push_every_device_refuses_as_another_projects_is_parked_and_keeps_the_tokens(
    push: FcmPushDestination, fcm: FakeFcm, forgotten: Forgotten, tokens: tuple[str, ...]
) -> None:
    """With another project's service-account key, FCM answers SENDER_ID_MISMATCH for every device, and the hub
    removed each token as dead: one swapped key stripped every person of their devices."""
    fcm.other_senders.update(tokens)
    with pytest.raises(AuthDeliveryError) as parked:
        push.send(push_delivery(*tokens))
    failure = parked.value.failure
    assert (failure.error_class, failure.provider_code) == ("fcm.SENDER_ID_MISMATCH", "SENDER_ID_MISMATCH")
    assert "HUB_FCM_CREDENTIALS_FILE" in failure.message and "The tokens were kept" in failure.message
    assert forgotten == {}


def test_a_device_of_another_project_beside_one_reached_is_still_removed(
    push: FcmPushDestination, fcm: FakeFcm, forgotten: Forgotten
) -> None:
    """Where another device of the same push got through, the hub's setup is right and the token is a stray."""
    fcm.other_senders.add(TABLET)
    result = push.send(push_delivery(PHONE, TABLET))
    assert (result.response_summary["sent"], result.response_summary["dead_tokens"]) == (1, 1)
    assert list(forgotten) == [TABLET]
    assert forgotten[TABLET].startswith("FCM answered SENDER_ID_MISMATCH: the token belongs to another Firebase project")


def test_a_stalled_token_endpoint_fails_the_push_as_retryable_within_the_timeout(
    fcm: FakeFcm, fcm_server: BackgroundServer, tmp_path: Path
) -> None:
    """Google's token endpoint may accept the connection and never answer: the access-token fetch must end with
    the destination's timeout, not hold the delivery worker."""
    fcm.reset()
    released = threading.Event()
    fcm_api = fcm_app(fcm)

    async def stalling(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/token":
            await asyncio.to_thread(released.wait, 30)
        await fcm_api(scope, receive, send)

    with BackgroundServer(stalling) as token_endpoint:
        push = push_destination(fcm, fcm_server, f"{token_endpoint.url}/token", tmp_path, timeout=1)
        started = time.monotonic()
        try:
            with pytest.raises(RetryableDeliveryError) as stalled:
                push.send(push_delivery(PHONE))
        finally:
            took = time.monotonic() - started
            released.set()
            push.close()
    assert stalled.value.failure.error_class.startswith("fcm.credentials.")
    assert took < 10  # the endpoint stalls for 30 s; only a timeout ends the fetch sooner
    assert fcm.messages == []
