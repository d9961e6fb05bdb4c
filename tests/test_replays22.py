"""Withdrawn messages and their replays: a push withdrawn because its device was handed on falls back, and a
replay refuses what consent or a fallback already settled."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from connectors.sandbox.providers import SandboxProviders
from tests.conftest import ADMIN_TOKEN, RunningHub, cart_nudge_rules, make_settings, message, serve_hub, wait_for
from tests.test_fallbacks21 import DEAD_TOKEN, cart_left, cart_mappings


def mappings_with(tmp_path: Path, actions: str) -> Path:
    """The shipped mappings with the cart rule answering with `actions` (its templates: `cart_mappings`)."""
    mappings = cart_mappings(tmp_path)
    (mappings / "triggers.yaml").write_text(cart_nudge_rules(actions))
    return mappings


def replay(hub: RunningHub, delivery_id: str) -> httpx.Response:
    return hub.client.post(f"/api/deliveries/{delivery_id}/replay", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def by_channel(hub: RunningHub) -> dict[str, dict]:
    return {delivery["channel"]: delivery for delivery in hub.admin("/api/deliveries")["deliveries"]}


DELAYED_PUSH_ELSE_EMAIL = """\
      - channel: push
        template: cart_nudge.push.j2
        delay: 2s
        fallback: [{channel: email, template: cart_nudge.email.j2}]
"""


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_push_withdrawn_because_its_device_was_handed_on_falls_back_to_the_email_the_rule_names(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """Bob signed in on the tablet he shares with Ana before her push (in 2 s, else email) went: the push was
    rightly withdrawn, but no fallback was planned, so Ana, reachable by email and now without a device, heard
    nothing. Replaying the withdrawn push is refused: it would reach Bob, and Ana has had her email."""
    settings = make_settings(tmp_path, database_url=database_url, quiet_hours="",
                             mappings_dir=mappings_with(tmp_path, DELAYED_PUSH_ELSE_EMAIL), **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub)
        hub.send(message("identify", userId="u-bob", traits={"email": "bob@example.com"},
                         context={"device": {"token": DEAD_TOKEN}}))
        hub.settle()
        wait_for(lambda: by_channel(hub).get("email", {}).get("status") == "sent")
        deliveries = by_channel(hub)
        explained = hub.admin(f"/api/decisions/{deliveries['push']['decision_id']}")
        refused = replay(hub, deliveries["push"]["delivery_id"])
    assert deliveries["push"]["status"] == "failed" and "another person" in deliveries["push"]["last_error"]
    assert [(fate["fate"], fate.get("to")) for fate in explained["actions"]] == [("fell_back", "email"), ("planned", None)]
    assert [r.rcpt_tos for r in sandbox.smtp.received] == [["ana@example.com"]]
    assert refused.status_code == 409
    assert sandbox.fcm.messages == []


DELAYED_EMAIL = """\
      - channel: email
        template: cart_nudge.email.j2
        delay: 2s
"""


def test_replaying_a_message_withdrawn_because_the_person_opted_out_answers_409_until_they_opt_in(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Ana opted out of email before her delayed nudge went, and its claim withdrew it. Its replay answered 200
    "replayed" (the CLI: "queued again") while she still said no, only for the claim to withdraw it again;
    the statuses table says such a delivery answers 409 naming why."""
    settings = make_settings(tmp_path, quiet_hours="", mappings_dir=mappings_with(tmp_path, DELAYED_EMAIL),
                             **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "first_name": "Ana"}),
                 message(userId="u-ana", event="Cart Viewed"))
        hub.settle()
        hub.send(message("identify", userId="u-ana", traits={"email_opt_out": True}))
        hub.settle()
        wait_for(lambda: by_channel(hub)["email"]["status"] == "failed")
        email = by_channel(hub)["email"]
        refused = replay(hub, email["delivery_id"])
        hub.send(message("identify", userId="u-ana", traits={"email_opt_out": False}))
        hub.settle()
        replayed = replay(hub, email["delivery_id"])
        wait_for(lambda: len(sandbox.smtp.received) == 1)
    assert refused.status_code == 409
    assert "revoked consent to its channel" in refused.json()["detail"]
    assert replayed.status_code == 200, replayed.text


BEN_TOKEN = "YmVuLXBob25lLXRva2VuOkFQQTkxYkh0ZXN0dG9rZW4wMDM"
PUSH_ELSE_EMAIL = """\
      - channel: push
        template: cart_nudge.push.j2
        fallback: [{channel: email, template: cart_nudge.email.j2}]
"""


def test_a_push_that_fell_back_to_email_is_not_replayed_once_its_token_is_back(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """FCM called Ana's token dead, so the email the rule names went in the push's place. When her app
    registered the same token again, the token was hers once more and replaying the failed push sent it:
    two messages about one cart. Ben, who gave no email, got nothing in its place: his replay goes."""
    sandbox.fcm.unregistered.update({DEAD_TOKEN, BEN_TOKEN})
    settings = make_settings(tmp_path, mappings_dir=mappings_with(tmp_path, PUSH_ELSE_EMAIL), **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub)
        ana_push = by_channel(hub)["push"]
        hub.send(message("identify", userId="u-ben", traits={"first_name": "Ben"}),
                 message(userId="u-ben", event="App Opened", context={"device": {"token": BEN_TOKEN}}),
                 message(userId="u-ben", event="Cart Viewed"))
        hub.settle()
        ben_push, _ = hub.admin("/api/deliveries", channel="push")["deliveries"]  # newest first
        sandbox.fcm.unregistered.clear()
        hub.send(message(userId="u-ana", event="App Opened", context={"device": {"token": DEAD_TOKEN}}),
                 message(userId="u-ben", event="App Opened", context={"device": {"token": BEN_TOKEN}}))
        hub.settle()
        refused, replayed = replay(hub, ana_push["delivery_id"]), replay(hub, ben_push["delivery_id"])
        hub.settle()
    assert [r.rcpt_tos for r in sandbox.smtp.received] == [["ana@example.com"]]
    assert refused.status_code == 409
    assert "fallback channel was planned in its place" in refused.json()["detail"]
    assert replayed.status_code == 200, replayed.text
    assert [m["message"]["token"] for m in sandbox.fcm.messages] == [BEN_TOKEN]
