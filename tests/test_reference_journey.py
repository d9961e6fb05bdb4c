"""The shipped reference journey (mappings/triggers.yaml) through the real pipeline, timers included.

Only SMS has a destination in this hub so far; for the other channels the
tests read what was decided and planned (the decision log and the outbox),
not what a provider received.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from hub.store import timers
from tests.conftest import WRITE_KEY, RunningHub, message

NOW = datetime.now(timezone.utc)  # when the module was collected: only the quiet-hours window is set from it


def now() -> datetime:
    return datetime.now(timezone.utc)
NO_QUIET_HOURS = pytest.mark.hub_settings(quiet_hours="")


def at(**delta: float) -> str:
    """An event time `delta` before the real now: the hub judges timers against its own clock."""
    return (now() - timedelta(**delta)).isoformat()


def decisions_of(running_hub: RunningHub, rule_id: str) -> list[dict[str, Any]]:
    return running_hub.admin("/api/decisions", rule_id=rule_id)["decisions"]


def explained(running_hub: RunningHub, rule_id: str) -> dict[str, Any]:
    [decision] = decisions_of(running_hub, rule_id)
    return running_hub.admin(f"/api/decisions/{decision['decision_id']}")


def fates(decision: dict[str, Any]) -> list[tuple[str, str]]:
    return [(action["channel"], action["fate"]) for action in decision["actions"]]


def shopper(user_id: str, **traits: Any) -> dict[str, Any]:
    return message("identify", userId=user_id, traits={"first_name": user_id, **traits}, timestamp=at(days=1))


def fcm_token(person: str) -> str:
    """A token shaped as FCM's registration tokens are: the sandbox, like FCM, refuses a malformed one, and the
    hub then falls back to email."""
    return f"{person}:APA91b{'0' * 32}"


def cart(user_id: str, device: dict[str, Any] | None = None, **delta: float) -> dict[str, Any]:
    context = {"device": device} if device else {}
    return message(userId=user_id, event="Product Added", properties={"product_id": "sku-1"}, context=context,
                   timestamp=at(**delta))


@NO_QUIET_HOURS
def test_cart_abandoned_on_mobile_gets_a_push_with_the_discount(running_hub: RunningHub) -> None:
    running_hub.send(shopper("mia", email="mia@example.com"),
                     cart("mia", {"type": "ios", "token": fcm_token("mia")}, minutes=3))
    running_hub.settle()
    decision = explained(running_hub, "cart_abandonment")
    assert fates(decision) == [("push", "planned")]
    assert decision["timer"]["status"] == "fired"
    assert [tp["event"] for tp in decision["touchpoints"]] == ["Product Added"]
    [push] = decision["deliveries"]
    assert (push["channel"], push["destination_id"]) == ("push", "fcm_push")
    assert push["content"]["title"] == "Still thinking it over?"
    assert "COMEBACK10" in push["content"]["body"]


@NO_QUIET_HOURS
@pytest.mark.parametrize("device_type", ["iOS", "iPadOS", "Android"])
def test_a_cart_from_the_rudderstack_mobile_sdks_gets_the_push_too(running_hub: RunningHub, device_type: str) -> None:
    """RudderStack's SDKs capitalise the device type that Segment's write in lower case; matched exactly, the
    cart got neither the push nor the web email."""
    running_hub.send(shopper("rio", email="rio@example.com"), cart("rio", {"type": device_type, "token": fcm_token("rio")}, minutes=3))
    running_hub.settle()
    assert fates(explained(running_hub, "cart_abandonment")) == [("push", "planned")]


@NO_QUIET_HOURS
def test_mobile_without_a_push_token_falls_back_to_email(running_hub: RunningHub) -> None:
    running_hub.send(shopper("noah", email="noah@example.com"), cart("noah", {"type": "android"}, minutes=3))
    running_hub.settle()
    decision = explained(running_hub, "cart_abandonment")
    assert fates(decision) == [("push", "fell_back"), ("email", "planned")]
    assert decision["actions"][0]["reason"] == "profile has no push_token"
    [email] = decision["deliveries"]
    assert email["channel"] == "email" and "COMEBACK10" in email["content"]["subject"] + email["content"]["text"]


@NO_QUIET_HOURS
def test_cart_abandoned_on_the_web_gets_an_email(running_hub: RunningHub) -> None:
    running_hub.send(shopper("wes", email="wes@example.com"), cart("wes", minutes=3))
    running_hub.settle()
    assert fates(explained(running_hub, "cart_abandonment")) == [("email", "planned")]


@NO_QUIET_HOURS
def test_any_further_action_within_two_minutes_cancels_the_nudge(running_hub: RunningHub) -> None:
    running_hub.send(
        shopper("cal", email="cal@example.com"),
        cart("cal", minutes=5),
        message(userId="cal", event="Checkout Started", timestamp=at(minutes=4)),
    )
    running_hub.settle()
    assert decisions_of(running_hub, "cart_abandonment") == []


@NO_QUIET_HOURS
def test_a_phone_whose_clock_is_behind_still_gets_its_two_minutes(running_hub: RunningHub) -> None:
    """The phone's clock reads three minutes slow; its SDK stamps the batch with that clock too (sentAt), and the
    hub corrects the event's time by it, as Segment's API does: the cart is fresh, not already past its wait."""
    slow = at(minutes=3)
    running_hub.client.post("/v1/batch", auth=(WRITE_KEY, ""), json={"sentAt": slow, "batch": [
        shopper("sly", email="sly@example.com"), cart("sly", {"type": "ios", "token": fcm_token("sly")}, minutes=3)]})
    running_hub.settle()
    assert decisions_of(running_hub, "cart_abandonment") == []
    with running_hub.hub.store.read() as connection:
        profile_id = running_hub.admin("/api/profiles/lookup", type="user_id", value="sly")["profile_id"]
        [timer] = timers.for_profile(connection, profile_id)
    assert timer["status"] == "pending" and timer["due_at"] > now() + timedelta(seconds=100)


@NO_QUIET_HOURS
def test_a_fresh_cart_waits_until_its_two_minutes_are_up(running_hub: RunningHub) -> None:
    sent_at = now()
    running_hub.send(shopper("fay", email="fay@example.com"), cart("fay", seconds=5))
    running_hub.settle()
    assert decisions_of(running_hub, "cart_abandonment") == []
    with running_hub.hub.store.read() as connection:
        profile_id = running_hub.admin("/api/profiles/lookup", type="user_id", value="fay")["profile_id"]
        [timer] = timers.for_profile(connection, profile_id)
    assert timer["status"] == "pending"
    assert timedelta(minutes=1, seconds=50) < timer["due_at"] - sent_at < timedelta(minutes=2)


def quiet_now() -> str:
    """A quiet-hours window around the current UTC time."""
    start, end = NOW - timedelta(hours=1), NOW + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


@pytest.mark.hub_settings(quiet_hours=quiet_now())
def test_quiet_hours_hold_the_nudge_until_they_end(running_hub: RunningHub) -> None:
    running_hub.send(shopper("ivy", email="ivy@example.com"), cart("ivy", minutes=3))
    running_hub.settle()
    decision = explained(running_hub, "cart_abandonment")
    assert fates(decision) == [("email", "delayed_quiet_hours")]
    [email] = decision["deliveries"]
    release = datetime.fromisoformat(decision["actions"][0]["not_before"])
    assert timedelta(minutes=50) < release - NOW <= timedelta(hours=1, minutes=1)
    assert (email["status"], email["attempt_log"]) == ("pending", [])


def view(user_id: str, sku: str, **delta: float) -> dict[str, Any]:
    return message(userId=user_id, event="Product Viewed", properties={"product_id": sku}, timestamp=at(**delta))


def test_comparing_two_products_gets_a_chat_offer_once(running_hub: RunningHub) -> None:
    running_hub.send(view("kim", "sku-1", minutes=4), view("kim", "sku-2", minutes=2), view("kim", "sku-3", minutes=1))
    running_hub.settle()
    decisions = decisions_of(running_hub, "comparison_hesitation")
    assert sorted(d["status"] for d in decisions) == ["capped", "fired"]  # the third view is within the hour's cap
    fired = next(d for d in decisions if d["status"] == "fired")
    decision = running_hub.admin(f"/api/decisions/{fired['decision_id']}")
    assert fates(decision) == [("chat", "planned")]
    assert [tp["properties"]["product_id"] for tp in decision["touchpoints"]] == ["sku-2", "sku-1"]
    [chat] = decision["deliveries"]
    assert (chat["destination_id"], chat["content"]["params"]) == ("chat_webhook", {"endpoint": "chat_widget"})


def test_two_products_compared_make_the_offer_whichever_view_arrives_first(running_hub: RunningHub) -> None:
    """The later view is taken in first (an SDK batch flushed late): the earlier one, when it comes, finds it."""
    running_hub.send(view("noa", "sku-2", minutes=1))
    running_hub.settle()
    assert decisions_of(running_hub, "comparison_hesitation") == []
    running_hub.send(view("noa", "sku-1", minutes=2))
    running_hub.settle()
    [decision] = decisions_of(running_hub, "comparison_hesitation")
    explained_decision = running_hub.admin(f"/api/decisions/{decision['decision_id']}")
    assert [tp["properties"]["product_id"] for tp in explained_decision["touchpoints"]] == ["sku-1", "sku-2"]
    assert fates(explained_decision) == [("chat", "planned")]


def test_the_same_product_twice_or_views_far_apart_are_no_comparison(running_hub: RunningHub) -> None:
    running_hub.send(view("lee", "sku-1", minutes=3), view("lee", "sku-1", minutes=2),
                     view("max", "sku-1", minutes=30), view("max", "sku-2", minutes=1))
    running_hub.settle()
    assert decisions_of(running_hub, "comparison_hesitation") == []


def test_purchaser_ticket_gets_sms_email_and_a_crm_update_with_the_intent(running_hub: RunningHub) -> None:
    running_hub.send(
        shopper("ona", phone="+14155550111", email="ona@example.com"),
        message(userId="ona", event="Order Completed", timestamp=at(days=2)),
        message(userId="ona", event="Ticket Submitted", properties={"ticket_id": "T-9", "intent": "refund"},
                timestamp=at(minutes=1)),
    )
    running_hub.settle()
    decision = explained(running_hub, "post_purchase_support")
    assert fates(decision) == [("sms", "planned"), ("email", "planned"), ("crm", "planned")]
    assert [tp["event"] for tp in decision["touchpoints"]] == ["Ticket Submitted", "Order Completed"]
    by_channel = {d["channel"]: d for d in decision["deliveries"]}
    assert by_channel["sms"]["status"] == "sent"
    assert by_channel["email"]["content"]["subject"] == "Help with your order"
    assert by_channel["crm"]["content"]["params"] == {
        "intent": "support_request", "task": {"subject": "Recent buyer opened a support ticket", "priority": "High"}}
    assert by_channel["crm"]["status"] == "sent"
    [lead] = running_hub.sandbox.salesforce.records("Lead")
    assert lead["Touchhub_Intent__c"] == "support_request" and "T-9" in running_hub.sandbox.salesforce.records("Task")[0]["Description"]
    assert [m["to"] for m in running_hub.sandbox.twilio.messages] == ["+14155550111"]


def test_a_ticket_that_arrives_days_late_updates_the_crm_but_messages_nobody(running_hub: RunningHub) -> None:
    """"A ticket submitted in the last 24 h": one that reaches the hub three days after it was opened (a help
    desk's backfill) still tells the CRM, but an SMS and an email now would be about the past."""
    running_hub.send(
        shopper("old", phone="+14155550112", email="old@example.com"),
        message(userId="old", event="Order Completed", timestamp=at(days=5)),
        message(userId="old", event="Ticket Submitted", properties={"ticket_id": "T-1"}, timestamp=at(days=3)),
    )
    running_hub.settle()
    decision = explained(running_hub, "post_purchase_support")
    assert fates(decision) == [("sms", "skipped"), ("email", "skipped"), ("crm", "planned")]
    assert decision["actions"][0]["reason"].startswith("too old to send")
    assert running_hub.sandbox.twilio.messages == [] and running_hub.sandbox.smtp.received == []


def pricing(user_id: str, path: str = "/pricing", **delta: float) -> dict[str, Any]:
    return message("page", userId=user_id, name="Pricing", properties={"path": path}, timestamp=at(**delta))


def test_lingering_on_pricing_offers_a_live_demo_and_tasks_a_sales_rep(running_hub: RunningHub) -> None:
    running_hub.send(shopper("pat", email="pat@example.com"),
                     pricing("pat", minutes=6), pricing("pat", "/pricing/teams", minutes=4), pricing("pat", minutes=2))
    running_hub.settle()
    decision = explained(running_hub, "high_intent_pricing")
    assert fates(decision) == [("webhook", "planned"), ("crm", "planned")]
    assert len(decision["touchpoints"]) == 3
    by_channel = {d["channel"]: d for d in decision["deliveries"]}
    assert by_channel["webhook"]["content"]["params"] == {"endpoint": "live_demo_offer"}
    assert by_channel["crm"]["content"]["params"] == {
        "intent": "pricing_interest", "task": {"subject": "Live demo follow-up", "priority": "High"}}
    assert {d["channel"]: d["status"] for d in decision["deliveries"]} == {"webhook": "sent", "crm": "sent"}
    [task] = running_hub.sandbox.salesforce.records("Task")
    assert task["Description"].startswith("pat@example.com lingered on pricing")
    # The chain ops read (and paste into tickets) masks what was sent as it masks recipients.
    assert "pat@example.com" not in json.dumps(decision)
    assert by_channel["crm"]["content"]["description"].startswith("p***@example.com lingered on pricing")


def test_no_live_demo_offer_after_a_download_or_for_a_short_look(running_hub: RunningHub) -> None:
    running_hub.send(
        message(userId="dan", event="Whitepaper Downloaded", timestamp=at(days=3)),
        pricing("dan", minutes=6), pricing("dan", minutes=4), pricing("dan", minutes=2),
        pricing("eve", minutes=3), pricing("eve", "/blog", minutes=2), pricing("eve", minutes=1),
    )
    running_hub.settle()
    assert decisions_of(running_hub, "high_intent_pricing") == []


def test_unknown_decision_is_a_404(running_hub: RunningHub) -> None:
    answer = running_hub.client.get("/api/decisions/nope", headers={"Authorization": "Bearer test-admin-token"})
    assert answer.status_code == 404 and answer.json()["detail"] == "no decision 'nope'"
