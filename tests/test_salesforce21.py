"""The Salesforce destination under Salesforce's passing faults: a login to retry, a lost insert race, a queue
that owns the Lead, an outage with Retry-After. Real simple-salesforce against the fake org."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from connectors.destinations.salesforce import SalesforceDestination
from connectors.sandbox.salesforce import FakeSalesforce
from connectors.sandbox.salesforce_api import create_app
from hub.errors import PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery
from hub.serving import BackgroundServer
from tests.conftest import vendor_fake_fixtures

PROFILE_ID = "01JDQ7Y8K3M2N4P5Q6R7S8T9V0"
PARAMS = {"intent": "support_request", "task": {"subject": "Customer opened a ticket", "priority": "High"}}
CONTENT = {"body": "Ana opened a ticket.", "field_LastName": "Silva", "field_Company": "[not provided]",
           "params": PARAMS}

fake, server, fresh = vendor_fake_fixtures("fake", FakeSalesforce, create_app)


@pytest.fixture
def crm(server: BackgroundServer, fake: FakeSalesforce) -> Iterator[SalesforceDestination]:
    config = SalesforceDestination.validate_config("test", {
        "consumer_key": fake.consumer_key, "consumer_secret": fake.consumer_secret,
        "username": fake.username, "password": fake.password, "api_base_url": server.url, "timeout_seconds": 2,
    })
    built = SalesforceDestination("salesforce", config)
    yield built
    built.close()


def delivery(content: dict[str, Any] = CONTENT, delivery_id: str = "dlv-1") -> Delivery:
    return Delivery(delivery_id, "salesforce", "crm", PROFILE_ID, content, 0, datetime.now(timezone.utc))


@pytest.mark.parametrize(("status", "error", "description"), [
    (500, "unknown_error", "retry your request"),
    (503, "temporarily_unavailable", "The service is temporarily unavailable"),
    (500, "server_error", "internal error"),
    (400, "some_new_error", "Please retry your request."),
])
def test_a_login_salesforce_asks_to_retry_is_retried_not_parked_as_auth(
    crm: SalesforceDestination, fake: FakeSalesforce, status: int, error: str, description: str
) -> None:
    """Salesforce's token endpoint answers a passing fault with 500 unknown_error "retry your request", and
    simple-salesforce passes on only the code: the hub called it an auth failure and parked the CRM update."""
    fake.fail_next_login(status, error, description)
    with pytest.raises(RetryableDeliveryError) as failed:
        crm.deliver(delivery())
    assert failed.value.failure.error_class == f"salesforce.login.{error}"
    crm.deliver(delivery())
    assert len(fake.records("Lead")) == 1


def test_an_upsert_that_loses_the_race_for_a_new_person_is_retried_into_their_one_lead(
    crm: SalesforceDestination, fake: FakeSalesforce
) -> None:
    """Two sends creating one new person's Lead at once: Salesforce refuses the later with DUPLICATE_VALUE on
    the external-id field, which the hub called permanent, so that CRM update (intent, Task) was lost."""
    fake.lose_next_race()
    with pytest.raises(RetryableDeliveryError) as failed:
        crm.deliver(delivery())
    assert failed.value.failure.provider_code == "DUPLICATE_VALUE"

    crm.deliver(delivery())

    [lead] = fake.records("Lead")
    [task] = fake.records("Task")
    assert (lead["Touchhub_Intent__c"], task["WhoId"]) == ("support_request", lead["Id"])


def test_a_duplicate_of_another_unique_field_stays_permanent(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    """Only a duplicate on the profile's own external-id field is a race; any other is the data's to fix."""
    fake.fail_next(400, "DUPLICATE_VALUE", message="duplicate value found: Email__c duplicates value on record "
                   "with id: 00Q5a000001AbcdEAA")
    with pytest.raises(PermanentDeliveryError):
        crm.deliver(delivery())


def test_a_task_for_a_lead_a_queue_owns_goes_to_the_integration_user(
    crm: SalesforceDestination, fake: FakeSalesforce
) -> None:
    """Assignment rules hand new Leads to a queue, which cannot own a Task: the hub copied the queue into the
    Task's OwnerId, Salesforce refused the Task, and the whole CRM update failed."""
    crm.deliver(delivery())
    [lead] = fake.records("Lead")
    fake.assign_to_queue(lead["Id"])

    result = crm.deliver(delivery(delivery_id="dlv-2"))

    task = next(t for t in fake.records("Task") if t["Touchhub_Delivery_Id__c"] == "dlv-2")
    assert (task["WhoId"], task["OwnerId"]) == (lead["Id"], fake.owner_id)  # the integration user
    assert "OwnerId" not in fake.requests[-1]["json"]
    assert fake.queue_id in result.response_summary["task_owner"]
    assert fake.records("Lead")[0]["OwnerId"] == fake.queue_id  # the Lead stays the queue's


def test_retry_after_on_an_outage_is_honoured(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    """A 503 SERVER_UNAVAILABLE with Retry-After: 120 was retried a second later, again and again through the
    outage: simple-salesforce's exceptions keep no headers and the hub never read the answer's."""
    fake.fail_next(503, "SERVER_UNAVAILABLE", message="Server unavailable, try again later", retry_after=120)
    with pytest.raises(RetryableDeliveryError) as outage:
        asyncio.run(crm.deliver_async(delivery()))  # as the engine sends: classified off the sending thread
    assert outage.value.failure.retry_after == 120

    fake.fail_next(503, "SERVER_UNAVAILABLE")
    with pytest.raises(RetryableDeliveryError) as again:
        crm.deliver(delivery())
    assert again.value.failure.retry_after is None  # no wait asked: the backoff alone decides


def test_retry_after_on_a_login_outage_is_honoured(crm: SalesforceDestination, fake: FakeSalesforce) -> None:
    """The token endpoint's 503 with Retry-After was retried with the backoff alone."""
    fake.fail_next_login(503, "temporarily_unavailable", "down for maintenance", retry_after=300)
    with pytest.raises(RetryableDeliveryError) as outage:
        crm.deliver(delivery())
    assert outage.value.failure.retry_after == 300
