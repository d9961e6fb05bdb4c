"""One CRM record per person: Salesforce Leads across merges, retries in flight and null traits.

A running hub with the real simple-salesforce library against the fake org
(`connectors/sandbox/salesforce.py`). Where a test needs Salesforce to be slow
or to lose an answer, it slows or breaks the fake server's record store, never
the client library.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox.providers import SandboxProviders
from tests.conftest import ADMIN_TOKEN, RunningHub, make_settings, message, serve_hub, support_ticket
from tests.test_crm_and_push_delivery import cart_nudge_mappings, touchhub

BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
PROFILE_KEY = "Touchhub_Profile_Id__c"
ANA = {"email": "ana@example.com", "last_name": "Silva"}


@pytest.fixture
def crm_hub(tmp_path: Path, sandbox: SandboxProviders, database_url: str, request: pytest.FixtureRequest) -> Iterator[RunningHub]:
    """A hub whose one rule upserts a Lead when a cart is viewed, with a template that fills what a profile
    not logged in yet has; `@pytest.mark.hub_settings(...)` changes settings."""
    mappings = cart_nudge_mappings(tmp_path)
    (mappings / "templates" / "cart_nudge.crm.j2").write_text(
        "{% block field_LastName %}{{ profile.last_name | default('[not provided]') }}{% endblock %}"
        "{% block field_Company %}[not provided]{% endblock %}"
    )
    marker = request.node.get_closest_marker("hub_settings")
    settings = {**sandbox.settings_overrides(), "database_url": database_url, **(marker.kwargs if marker else {})}
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings, **settings), sandbox) as hub:
        yield hub


def crm_deliveries(hub: RunningHub) -> list[dict[str, Any]]:
    return sorted((d for d in hub.admin("/api/deliveries")["deliveries"] if d["channel"] == "crm"), key=lambda d: d["created_at"])


def lead_keys(hub: RunningHub) -> list[str]:
    return sorted(lead[PROFILE_KEY] for lead in hub.sandbox.salesforce.records("Lead"))


def until(condition: Callable[[], Any], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def log_in(hub: RunningHub) -> None:
    """The visitor on device anon-7 logs in as Ana, whose profile is older: the device's profile merges into hers."""
    hub.send(message("identify", anonymousId="anon-7", userId="u-ana"))
    hub.settle()


def ana_known_then_an_anonymous_cart(hub: RunningHub, *, log_in_with_the_cart: bool) -> None:
    """Ana's profile first (so it survives the merge), then a cart viewed on a device not logged in yet; the
    login merges that device's profile into hers, in the cart's batch or after its CRM update went out."""
    hub.send(message("identify", userId="u-ana", traits=ANA))
    hub.settle()
    log_in = message("identify", anonymousId="anon-7", userId="u-ana")
    hub.send(message(anonymousId="anon-7", event="Cart Viewed"), *([log_in] if log_in_with_the_cart else []))
    hub.settle()
    if not log_in_with_the_cart:
        assert len(hub.sandbox.salesforce.records("Lead")) == 1  # the anonymous profile's own Lead
        hub.send(log_in)
        hub.settle()


def test_the_cli_delivery_log_follows_a_merged_profile_id_as_the_admin_api_does(crm_hub: RunningHub) -> None:
    """Ops copy the profile id off a Lead in Salesforce (the anonymous visitor's, merged into Ana's since) and
    ask for its deliveries: `touchhub deliveries list --profile` shows what GET /api/deliveries?profile_id= does,
    where it used to show none."""
    ana_known_then_an_anonymous_cart(crm_hub, log_in_with_the_cart=False)
    [lead] = crm_hub.sandbox.salesforce.records("Lead")
    merged_id = lead["Touchhub_Profile_Id__c"]
    [crm] = crm_hub.admin("/api/deliveries", profile_id=merged_id)["deliveries"]
    assert (crm["channel"], crm["profile_id"] != merged_id) == ("crm", True)
    printed = touchhub(crm_hub, "deliveries", "list", "--profile", merged_id)
    assert crm["delivery_id"] in printed, printed
    assert "(0 shown)" in touchhub(crm_hub, "deliveries", "list", "--profile", "no-such-profile")


def test_a_crm_update_planned_before_a_merge_goes_to_the_survivors_lead(crm_hub: RunningHub) -> None:
    """The cart's update was planned for the device's profile, which the login in the same batch merged into
    Ana's: it upserts under her id. The delivery log keeps the id it was planned for; its attempt shows where
    it went."""
    ana_known_then_an_anonymous_cart(crm_hub, log_in_with_the_cart=True)

    [crm] = [d for d in crm_hub.admin("/api/deliveries")["deliveries"] if d["channel"] == "crm"]
    [lead] = crm_hub.sandbox.salesforce.records("Lead")
    assert lead["Touchhub_Profile_Id__c"] == crm["profile_id"] != crm["target"]
    assert crm["attempt_log"][0]["request_summary"]["external_id"] == crm["profile_id"]


def test_after_a_merge_the_survivor_takes_over_the_merged_profiles_lead(crm_hub: RunningHub) -> None:
    """The anonymous profile's cart made a Lead (and a Task on it). Once the login merged that profile into
    Ana's, her next update re-keys that Lead to her id instead of creating a second one; later updates find
    her Lead first and look no further."""
    ana_known_then_an_anonymous_cart(crm_hub, log_in_with_the_cart=False)
    [first_lead] = crm_hub.sandbox.salesforce.records("Lead")

    crm_hub.send(message(userId="u-ana", event="Cart Viewed"))
    crm_hub.settle()
    [lead] = crm_hub.sandbox.salesforce.records("Lead")
    crm = crm_deliveries(crm_hub)
    survivor, visitor = crm[-1]["profile_id"], crm[0]["target"]
    assert (lead["Id"], lead["Touchhub_Profile_Id__c"]) == (first_lead["Id"], survivor)
    assert visitor != survivor  # the first went to the anonymous profile's id, as the log keeps
    carried = crm[-1]["attempt_log"][0]
    assert carried["request_summary"]["previous_keys"] == [visitor]
    assert carried["response_summary"]["carried_over_from"] == visitor
    assert len(crm_hub.sandbox.salesforce.records("Task")) == 2  # both on the one Lead
    assert {task["WhoId"] for task in crm_hub.sandbox.salesforce.records("Task")} == {lead["Id"]}

    before = len(crm_hub.sandbox.salesforce.requests)
    crm_hub.send(message(userId="u-ana", event="Cart Viewed"))
    crm_hub.settle()
    calls = [(r["method"], r["path"].split("/sobjects/")[-1]) for r in crm_hub.sandbox.salesforce.requests[before:]]
    assert calls[:2] == [("GET", f"Lead/Touchhub_Profile_Id__c/{survivor}"), ("PATCH", f"Lead/Touchhub_Profile_Id__c/{survivor}")]
    assert not [path for _, path in calls if visitor in path]
    assert len(crm_hub.sandbox.salesforce.records("Lead")) == 1


@BOTH_DATABASES
@pytest.mark.hub_settings(delivery_max_attempts=2)
def test_an_unmerge_withdraws_a_crm_update_planned_while_the_two_were_one(crm_hub: RunningHub) -> None:
    """The device's cart was viewed while it was wrongly merged into Ana's profile: its update was planned for
    her id, rendered from her traits, and went dead while Salesforce was down. The unmerge withdraws it (it
    would write Ana onto the device's Lead, or the device's cart onto Ana's), and a replay is refused."""
    crm_hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "last_name": "Silva"}))
    crm_hub.settle()
    crm_hub.send(message(anonymousId="anon-7", event="Page Viewed", properties={"path": "/"}))
    crm_hub.settle()
    crm_hub.send(message("identify", anonymousId="anon-7", userId="u-ana"))  # someone else logged in on it
    crm_hub.settle()
    crm_hub.sandbox.salesforce.fail_next(503, "SERVER_UNAVAILABLE", times=10)
    crm_hub.send(message(anonymousId="anon-7", event="Cart Viewed"))
    crm_hub.settle()
    [crm] = crm_deliveries(crm_hub)
    assert crm["status"] == "dead"
    ana = crm["profile_id"]
    [device] = crm_hub.admin(f"/api/profiles/{ana}")["merged_profile_ids"]

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    split = crm_hub.client.post(f"/api/profiles/{ana}/unmerge", json={"merged_profile_id": device}, headers=headers)
    assert split.status_code == 200, split.text
    assert split.json()["deliveries_withdrawn"] == 1
    crm_hub.sandbox.salesforce.reset()
    refused = crm_hub.client.post(f"/api/deliveries/{crm['delivery_id']}/replay", headers=headers)
    assert refused.status_code == 409 and "unmerge" in refused.json()["detail"]
    crm_hub.settle()

    assert crm_hub.sandbox.salesforce.records("Lead") == []
    [withdrawn] = crm_deliveries(crm_hub)
    assert (withdrawn["status"], withdrawn["profile_id"]) == ("failed", device)


@pytest.mark.hub_settings(delivery_max_attempts=2)
def test_a_replayed_update_after_a_login_takes_over_the_lead_its_first_attempt_made(crm_hub: RunningHub) -> None:
    """The anonymous cart's update wrote its Lead, then the owner Task was refused (the org's Task external-id
    field was not set up yet), so the delivery failed. Meanwhile the visitor logged in. The replay goes to Ana's
    id and carries that Lead over: its own first attempt is the evidence the Lead exists."""
    fake = crm_hub.sandbox.salesforce
    crm_hub.send(message("identify", userId="u-ana", traits=ANA))
    crm_hub.settle()
    fake.external_ids["Task"].discard("Touchhub_Delivery_Id__c")
    crm_hub.send(message(anonymousId="anon-7", event="Cart Viewed"))
    crm_hub.settle()
    [first] = crm_deliveries(crm_hub)
    assert first["status"] == "failed" and lead_keys(crm_hub) == [first["target"]]

    fake.external_ids["Task"].add("Touchhub_Delivery_Id__c")
    log_in(crm_hub)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert crm_hub.client.post(f"/api/deliveries/{first['delivery_id']}/replay", headers=headers).status_code == 200
    crm_hub.settle()

    [replayed] = crm_deliveries(crm_hub)
    assert replayed["status"] == "sent"
    assert lead_keys(crm_hub) == [replayed["profile_id"]]


@BOTH_DATABASES
def test_a_login_while_the_visitors_update_is_in_flight_still_leaves_one_lead(
    crm_hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Salesforce is slow to answer the anonymous cart's upsert; the visitor logs in and views the cart again
    meanwhile. Ana's update waits for the visitor's to finish, then carries its Lead over."""
    fake = crm_hub.sandbox.salesforce
    crm_hub.send(message("identify", userId="u-ana", traits=ANA))
    crm_hub.settle()
    arrived, find, slowed = threading.Event(), fake._find, []

    def slow_first_lead_upsert(sobject: str, field: str, value: str) -> dict[str, Any] | None:
        if sobject == "Lead" and field == PROFILE_KEY and not slowed:
            slowed.append(value)
            arrived.set()
            time.sleep(1.5)
        return find(sobject, field, value)

    monkeypatch.setattr(fake, "_find", slow_first_lead_upsert)
    crm_hub.send(message(anonymousId="anon-7", event="Cart Viewed"))
    assert arrived.wait(10)
    crm_hub.send(message("identify", anonymousId="anon-7", userId="u-ana"), message(userId="u-ana", event="Cart Viewed"))
    until(lambda: [d["status"] for d in crm_deliveries(crm_hub)] == ["sent", "sent"])

    survivor = crm_deliveries(crm_hub)[-1]["profile_id"]
    assert lead_keys(crm_hub) == [survivor]


@pytest.mark.hub_settings(retry_base_delay_seconds=0.2, retry_max_delay_seconds=0.2, delivery_max_attempts=5)
def test_an_update_retried_after_a_lost_answer_and_a_login_takes_over_its_lead(
    crm_hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Salesforce writes the anonymous cart's Lead, but the answer is lost (a proxy's 500 after the write); the
    visitor logs in before the retry, which goes to Ana's id and re-keys that Lead."""
    fake = crm_hub.sandbox.salesforce
    crm_hub.send(message("identify", userId="u-ana", traits=ANA))
    crm_hub.settle()
    ana = crm_hub.admin("/api/profiles/lookup", type="user_id", value="u-ana")["profile_id"]
    merged, write, lost = threading.Event(), fake._write, []

    def write_then_lose_the_answer(sobject: str, record_id: str, values: dict[str, Any]) -> dict[str, Any]:
        written = write(sobject, record_id, values)
        if sobject == "Lead" and not lost:
            lost.append(record_id)
            assert merged.wait(10)
            raise RuntimeError("the answer is lost after the write")
        return written

    monkeypatch.setattr(fake, "_write", write_then_lose_the_answer)
    crm_hub.send(message(anonymousId="anon-7", event="Cart Viewed"))
    until(lambda: fake.records("Lead"))
    crm_hub.send(message("identify", anonymousId="anon-7", userId="u-ana"))
    until(lambda: crm_hub.admin("/api/profiles/lookup", type="anonymous_id", value="anon-7")["profile_id"] == ana)
    merged.set()
    crm_hub.settle()

    [crm] = crm_deliveries(crm_hub)
    assert [attempt["outcome"] for attempt in crm["attempt_log"]] == ["retryable", "sent"]
    assert [(lead["Id"], lead[PROFILE_KEY]) for lead in fake.records("Lead")] == [(lost[0], ana)]


LEAD_AND_CONTACT_RULES = """
rules:
  - id: cart_lead
    stage: decision
    moment: cart_activity
    urgency: immediate
    when: {event: Cart Viewed}
    respond:
      - {channel: crm, template: cart_nudge.crm.j2, params: {intent: cart_abandonment}}
  - id: buyer_contact
    stage: decision
    moment: purchase
    urgency: immediate
    when: {event: Order Completed}
    respond:
      - {channel: crm, template: contact.crm.j2, params: {sobject: Contact, intent: customer}}
"""


def test_a_contact_written_for_the_survivor_does_not_keep_its_lead_from_being_carried_over(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Ana bought (a Contact under her id); as a visitor she had viewed a cart (a Lead under the device's id).
    After the login her first Lead update carries the visitor's Lead over: a Contact is no Lead."""
    mappings = cart_nudge_mappings(tmp_path)
    (mappings / "triggers.yaml").write_text(LEAD_AND_CONTACT_RULES)
    (mappings / "templates" / "cart_nudge.crm.j2").write_text(
        "{% block field_LastName %}Silva{% endblock %}{% block field_Company %}[not provided]{% endblock %}"
    )
    (mappings / "templates" / "contact.crm.j2").write_text("{% block field_LastName %}Silva{% endblock %}")
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings, **sandbox.settings_overrides()), sandbox) as hub:
        hub.send(message("identify", userId="u-ana", traits=ANA), message(userId="u-ana", event="Order Completed"))
        hub.settle()
        hub.send(message(anonymousId="anon-7", event="Cart Viewed"))
        hub.settle()
        [visitor_lead] = hub.sandbox.salesforce.records("Lead")
        log_in(hub)
        hub.send(message(userId="u-ana", event="Cart Viewed"))
        hub.settle()

        ana = crm_deliveries(hub)[-1]["profile_id"]
        assert [contact[PROFILE_KEY] for contact in hub.sandbox.salesforce.records("Contact")] == [ana]
        assert [(lead["Id"], lead[PROFILE_KEY]) for lead in hub.sandbox.salesforce.records("Lead")] == [(visitor_lead["Id"], ana)]


def test_a_null_trait_never_reaches_salesforce_as_the_text_none(running_hub: RunningHub) -> None:
    """Segment identify calls carry null for a blank form field. The shipped post_purchase_support.crm.j2
    defaults such traits; a null counts as missing, so the Lead gets "[not provided]" and no FirstName rather
    than the text "None"."""
    traits = {"email": "ana@example.com", "first_name": None, "last_name": "Silva", "company": None}
    running_hub.send(*support_ticket("u-ana", traits))
    running_hub.settle()

    [crm] = crm_deliveries(running_hub)
    assert crm["status"] == "sent"
    [lead] = running_hub.sandbox.salesforce.records("Lead")
    assert (lead["Company"], lead.get("FirstName")) == ("[not provided]", None)
    [task] = running_hub.sandbox.salesforce.records("Task")
    assert task["Description"].startswith("A customer bought")
