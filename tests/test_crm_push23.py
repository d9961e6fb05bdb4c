"""Salesforce and FCM edges (audit 23): a converted Lead's Contact when the person is forgotten or merged, a
device of another Firebase project beside the person's own, and a push retried after a device left.

A running hub (or one whose steps the test drives) with the real simple-salesforce and firebase-admin against
the sandbox fakes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors.sandbox.providers import SandboxProviders
from hub.runtime import Hub
from hub.store.schema import deliveries
from tests.conftest import RunningHub, message
from tests.test_absence_timers import accept, hub_on
from tests.test_crm_and_push_delivery import cart_nudge_mappings
from tests.test_crm_erasure import ana_opens_a_ticket, deletes, erasures, forget_ana
from tests.test_crm_records import PROFILE_KEY, ana_known_then_an_anonymous_cart, crm_deliveries, crm_hub

__all__ = ["crm_hub"]  # test_crm_records' fixture, taken by name

PHONE = "cGhvbmUtdG9rZW46QVBBOTFiSDIzcHVzaDAwMDAwMDAwMDE"
TABLET = "dGFibGV0LXRva2VuOkFQQTkxYkgyM3B1c2gwMDAwMDAwMDI"


# ---------------------------------------------------------------------------------------------- Salesforce


def test_forgetting_a_person_whose_lead_was_converted_deletes_the_contact_too(running_hub: RunningHub) -> None:
    """A sales rep converted Ana's Lead, and her name and email live on in the Contact the conversion made, where
    the hub's updates went since. Forgetting her deleted the Lead only: the Contact kept her data."""
    ana_opens_a_ticket(running_hub)
    salesforce = running_hub.sandbox.salesforce
    [lead] = salesforce.records("Lead")
    contact_id = salesforce.convert_lead(lead["Id"])
    assert salesforce.records("Contact")[0]["Email"] == "ana@example.com" and salesforce.records("Task")

    ana = forget_ana(running_hub)["profile_id"]

    assert (salesforce.records("Lead"), salesforce.records("Contact"), salesforce.records("Task")) == ([], [], [])
    assert deletes(running_hub) == [f"Contact/{contact_id}", f"Lead/{PROFILE_KEY}/{ana}"]  # the Contact first
    [erasure] = erasures(running_hub)
    assert erasure["status"] == "sent"
    assert erasure["attempt_log"][0]["response_summary"] == {
        "sobject": "Lead", "deleted": True, "converted_contact_id": contact_id, "contact_deleted": True,
    }


def test_an_erasure_retried_after_its_contact_went_still_deletes_the_lead(running_hub: RunningHub) -> None:
    """The Contact is gone (deleted by a rep, or by a try whose answer was lost) but the Lead naming it is still
    there: the erasure counts the Contact erased and deletes the Lead."""
    ana_opens_a_ticket(running_hub)
    salesforce = running_hub.sandbox.salesforce
    [lead] = salesforce.records("Lead")
    contact_id = salesforce.convert_lead(lead["Id"])
    salesforce.delete_record("Contact", contact_id)

    forget_ana(running_hub)

    assert salesforce.records("Lead") == []
    [erasure] = erasures(running_hub)
    summary = erasure["attempt_log"][0]["response_summary"]
    assert (erasure["status"], summary["deleted"], summary["contact_deleted"]) == ("sent", True, False)


def test_after_a_merge_an_update_goes_to_the_contact_of_the_merged_profiles_converted_lead(crm_hub: RunningHub) -> None:
    """The visitor's cart made a Lead, a sales rep converted it, then the visitor logged in as Ana. Her next
    update tried to re-key the converted Lead to her id; Salesforce refuses any write to a converted Lead
    (CANNOT_UPDATE_CONVERTED_LEAD), so the update failed for good, and so did every later one."""
    ana_known_then_an_anonymous_cart(crm_hub, log_in_with_the_cart=False)
    salesforce = crm_hub.sandbox.salesforce
    [lead] = salesforce.records("Lead")
    contact_id = salesforce.convert_lead(lead["Id"])

    for _ in range(2):
        crm_hub.send(message(userId="u-ana", event="Cart Viewed"))
        crm_hub.settle()

    updates = crm_deliveries(crm_hub)[-2:]
    assert [update["status"] for update in updates] == ["sent", "sent"]
    for update in updates:
        summary = update["attempt_log"][0]["response_summary"]
        assert {key: summary[key] for key in ("sobject", "record_id", "converted_lead_id", "merged_lead_key")} == {
            "sobject": "Contact", "record_id": contact_id, "converted_lead_id": lead["Id"], "merged_lead_key": lead[PROFILE_KEY],
        }
    assert [record["Id"] for record in salesforce.records("Lead")] == [lead["Id"]]  # no second Lead for Ana
    [contact] = salesforce.records("Contact")
    assert (contact["Id"], contact["Touchhub_Intent__c"]) == (contact_id, "cart_abandonment")
    assert {task["WhoId"] for task in salesforce.records("Task")} == {contact_id}


# ---------------------------------------------------------------------------------------------- FCM


@pytest.fixture
def push_hub(tmp_path: Path, sandbox: SandboxProviders) -> Iterator[Hub]:
    """A hub with the cart rule's push (and CRM update), whose delivery steps the test drives."""
    hub = hub_on(tmp_path, mappings_dir=cart_nudge_mappings(tmp_path), **sandbox.settings_overrides())
    yield hub
    hub.stop()


def ana_views_her_cart(hub: Hub, *tokens: str) -> None:
    """Ana uses one device per token, then views her cart: the cart rule plans a push to every device."""
    accept(hub, message("identify", userId="u-ana", traits={"email": "ana@example.com", "first_name": "Ana", "last_name": "Silva"}),
           *[message(userId="u-ana", event="App Opened", context={"device": {"token": t}}) for t in tokens],
           message(userId="u-ana", event="Cart Viewed"))


def push_row(hub: Hub) -> tuple[str, int, list[str]]:
    """The push's status, attempts so far and recipients."""
    with hub.store.read() as connection:
        status, attempts, content = connection.execute(
            select(deliveries.c.status, deliveries.c.attempts, deliveries.c.content).where(deliveries.c.channel == "push")
        ).one()
    return status, attempts, sorted(content.get("recipients") or [])


def attempt_push(hub: Hub, sandbox: SandboxProviders) -> list[str]:
    """Run the delivery engine until the push has had one attempt more; the tokens that attempt sent to."""
    before, attempts = len(sandbox.fcm.requests), push_row(hub)[1]
    deadline = time.monotonic() + 10
    while push_row(hub)[1] == attempts:
        assert time.monotonic() < deadline, "the push was never attempted"
        hub.delivery.run_once()
        time.sleep(0.02)
    return sorted(r["json"]["message"]["token"] for r in sandbox.fcm.requests[before:] if r["path"].endswith("messages:send"))


def test_a_push_retried_after_a_device_was_unregistered_goes_to_the_others_only(
    push_hub: Hub, sandbox: SandboxProviders
) -> None:
    """FCM called Ana's phone UNREGISTERED while her tablet was over its message rate: the phone's token left her
    profile and the push was retried, still to both. The retry sent to the phone again."""
    ana_views_her_cart(push_hub, PHONE, TABLET)
    sandbox.fcm.unregistered.add(PHONE)
    sandbox.fcm.rate_limited.add(TABLET)
    assert attempt_push(push_hub, sandbox) == sorted([PHONE, TABLET])
    assert push_row(push_hub)[0] == "retrying"
    sandbox.fcm.rate_limited.clear()

    assert attempt_push(push_hub, sandbox) == [TABLET]

    assert push_row(push_hub) == ("sent", 2, [TABLET])
    assert [m["message"]["token"] for m in sandbox.fcm.messages] == [TABLET]


def bob_signs_in_on(hub: Hub, token: str) -> None:
    """Bob signs in on the device of `token`: the token follows the last login to his profile, and Ana's pushes
    still to go leave it."""
    accept(hub, message("identify", userId="u-bob", traits={"email": "bob@example.com", "first_name": "Bob"}),
           message(userId="u-bob", event="App Opened", context={"device": {"token": token}}))


def test_a_stray_device_of_another_project_does_not_park_the_persons_push(
    push_hub: Hub, sandbox: SandboxProviders
) -> None:
    """Ana's phone runs a build of another Firebase project (SENDER_ID_MISMATCH) while her tablet is over its
    message rate: the phone's token left her profile and the push was retried. Bob then signed in on the
    tablet, which left the push with the phone alone; its retry went to the phone, every device "answered
    SENDER_ID_MISMATCH", and the push was parked as a wrong service-account key, the tokens "kept"."""
    ana_views_her_cart(push_hub, PHONE, TABLET)
    sandbox.fcm.other_senders.add(PHONE)
    sandbox.fcm.rate_limited.add(TABLET)
    assert attempt_push(push_hub, sandbox) == sorted([PHONE, TABLET])
    bob_signs_in_on(push_hub, TABLET)
    assert push_row(push_hub) == ("retrying", 1, [PHONE])

    sent_before = len(sandbox.fcm.requests)
    deadline = time.monotonic() + 3  # FCM asked for a second's wait
    while time.monotonic() < deadline:
        push_hub.delivery.run_once()
        time.sleep(0.02)

    assert push_row(push_hub)[:2] == ("failed", 1)  # withdrawn at its claim: no device of Ana's is left
    assert [r for r in sandbox.fcm.requests[sent_before:] if r["path"].endswith("messages:send")] == []
