"""Fallbacks after a delivery failed or was withdrawn: what the decision spends, quiet hours, and consent
revoked after planning (by the provider, or met at the claim)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from sqlalchemy import select

from connectors.sandbox.providers import SandboxProviders
from hub.store.schema import deliveries
from tests.conftest import ADMIN_TOKEN, RunningHub, cart_nudge_rules, make_settings, message, serve_hub, wait_for
from tests.test_fallbacks21 import DEAD_TOKEN, cart_left, cart_mappings

LIVE_TOKEN = "bGl2ZS1waG9uZS10b2tlbjpBUEE5MWJIdGVzdHRva2VuMDAy"
PUSH_ELSE_EMAIL = """\
      - channel: push
        template: cart_nudge.push.j2
        fallback: [{channel: email, template: cart_nudge.email.j2}]
"""
DELAYED_PUSH_ELSE_EMAIL = """\
      - channel: push
        template: cart_nudge.push.j2
        delay: 2s
        fallback: [{channel: email, template: cart_nudge.email.j2}]
"""
SMS_ELSE_EMAIL = """\
      - channel: sms
        template: cart_nudge.sms.j2
        fallback: [{channel: email, template: cart_nudge.email.j2}]
"""


def mappings_with(tmp_path: Path, actions: str) -> Path:
    """The shipped mappings with one rule, `cart_nudge`, answering a Cart Viewed with `actions`."""
    mappings = cart_mappings(tmp_path)
    (mappings / "triggers.yaml").write_text(cart_nudge_rules(actions))
    (mappings / "templates" / "cart_nudge.sms.j2").write_text("Your cart is saved, {{ profile.first_name }}.")
    return mappings


def cart_left_with_sms_else_email(
    tmp_path: Path, sandbox: SandboxProviders, user_id: str, traits: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """A person with `traits` leaves a cart under one rule that texts, else emails: their deliveries by channel,
    and the decision explained."""
    settings = make_settings(tmp_path, mappings_dir=mappings_with(tmp_path, SMS_ELSE_EMAIL), **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        hub.send(message("identify", userId=user_id, traits=traits), message(userId=user_id, event="Cart Viewed"))
        hub.settle()
        deliveries = {d["channel"]: d for d in hub.admin("/api/deliveries")["deliveries"]}
        decision_id = next(iter(deliveries.values()))["decision_id"]
        return deliveries, hub.admin(f"/api/decisions/{decision_id}")


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_decision_whose_dead_push_fell_back_to_nothing_spends_none_of_the_rule_cap(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """Ben gave no email and his only push token was dead: the push failed and its email fallback found no
    address, yet the decision stayed `fired`, so once he reinstalled the app and left his cart again the rule
    answered `capped` and his working phone got nothing."""
    sandbox.fcm.unregistered.add(DEAD_TOKEN)
    capped = PUSH_ELSE_EMAIL + "    cap: {max: 1, within: 24h}\n"
    settings = make_settings(tmp_path, database_url=database_url, mappings_dir=mappings_with(tmp_path, capped),
                             **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        hub.send(message("identify", userId="u-ben", traits={"first_name": "Ben"}),
                 message(userId="u-ben", event="App Opened", context={"device": {"token": DEAD_TOKEN}}),
                 message(userId="u-ben", event="Cart Viewed"))
        hub.settle()
        hub.send(message(userId="u-ben", event="App Opened", context={"device": {"token": LIVE_TOKEN}}),
                 message(userId="u-ben", event="Cart Viewed"))
        hub.settle()
        second, first = hub.admin("/api/decisions")["decisions"]
    assert (first["status"], [fate["fate"] for fate in first["actions"]]) == ("unreached", ["fell_back", "skipped"])
    assert second["status"] == "fired"
    assert [m["message"]["token"] for m in sandbox.fcm.messages] == [LIVE_TOKEN]


def test_the_fallback_of_a_delayed_push_waits_out_the_persons_quiet_hours(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """An `immediate` rule's delayed push waits out quiet hours, but when it failed (its token dead) its email
    fallback was routed as a send-now: it went in the person's night (she had flown, while the push was on its
    way, to a zone where it is night), with no quiet zone kept, so its retries would not have been held either."""
    hour = datetime.now(timezone.utc).hour
    quiet = f"{(hour + 6) % 24:02d}:00-{(hour + 9) % 24:02d}:00"  # day in UTC now; night 7 h east of it
    sandbox.fcm.fail_next(404, "UNREGISTERED", message="Requested entity was not found.", delay_seconds=8)
    settings = make_settings(tmp_path, mappings_dir=mappings_with(tmp_path, DELAYED_PUSH_ELSE_EMAIL), quiet_hours=quiet,
                             **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub, timezone="UTC")
        wait_for(lambda: _push_on_its_way(hub))  # claimed in the day of UTC; FCM answers 8 s later
        hub.send(message("identify", userId="u-ana", traits={"timezone": "Etc/GMT-7"}))
        wait_for(lambda: len(hub.admin("/api/deliveries")["deliveries"]) == 2, timeout=40)
        hub.settle()
        deliveries = {d["channel"]: d for d in hub.admin("/api/deliveries")["deliveries"]}
        explained = hub.admin(f"/api/decisions/{deliveries['push']['decision_id']}")
    assert deliveries["push"]["status"] == "failed"
    assert deliveries["email"]["status"] == "pending" and sandbox.smtp.received == []
    push, email = explained["actions"]
    assert (push["fate"], email["fate"]) == ("fell_back", "delayed_quiet_hours")
    assert "Etc/GMT-7" in email["reason"]


def _push_on_its_way(hub: RunningHub) -> bool:
    """Whether a delivery worker holds the push (claimed, its answer not recorded yet)."""
    with hub.hub.store.read() as connection:
        return connection.execute(
            select(deliveries.c.claimed_until).where(deliveries.c.channel == "push", deliveries.c.attempts == 0)
        ).scalar() is not None


def test_an_sms_twilio_refuses_as_unsubscribed_falls_back_to_the_email_the_rule_names(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Twilio refused Cal's SMS with 21610 (he had texted STOP): the hub revoked his SMS consent but planned
    no fallback, as his phone was still on the profile, where a STOP that reached the hub a second earlier
    would have had routing plan the email."""
    sandbox.twilio.unsubscribed.add("+14155550142")
    deliveries, explained = cart_left_with_sms_else_email(
        tmp_path, sandbox, "u-cal", {"email": "cal@example.com", "phone": "+14155550142", "first_name": "Cal"}
    )
    assert deliveries["sms"]["status"] == "failed" and deliveries["email"]["status"] == "sent"
    sms, email = explained["actions"]
    assert (sms["fate"], sms["to"], email["fate"]) == ("fell_back", "email", "planned")
    assert sms["reason"].startswith("sms consent revoked by the profile (twilio.21610")
    assert [r.rcpt_tos for r in sandbox.smtp.received] == [["cal@example.com"]]


def test_a_push_withdrawn_at_its_claim_for_a_push_opt_out_falls_back_to_email_once(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Ana turned push off between the decision and her delayed push's claim: the claim withdrew the push but
    planned no fallback, where an opt-out a moment before the decision got her the email the rule names. The
    push replayed later must not bring a second email."""
    settings = make_settings(tmp_path, mappings_dir=mappings_with(tmp_path, DELAYED_PUSH_ELSE_EMAIL), quiet_hours="",
                             **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub)
        hub.send(message("identify", userId="u-ana", traits={"push_opt_out": True}))
        hub.settle()
        wait_for(lambda: len(sandbox.smtp.received) == 1)
        deliveries = {d["channel"]: d for d in hub.admin("/api/deliveries")["deliveries"]}
        hub.client.post(f"/api/deliveries/{deliveries['push']['delivery_id']}/replay",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        hub.settle()
        explained = hub.admin(f"/api/decisions/{deliveries['push']['decision_id']}")
    assert deliveries["push"]["status"] == "failed" and "consent" in deliveries["push"]["last_error"]
    push, email = explained["actions"]
    assert (push["fate"], push["reason"], email["fate"]) == (
        "fell_back", "push consent revoked by the profile (withdrawn unsent at its claim)", "planned")
    assert [r.rcpt_tos for r in sandbox.smtp.received] == [["ana@example.com"]]
    assert sandbox.fcm.messages == []


def test_a_decision_whose_only_message_was_withdrawn_for_an_opt_out_spends_none_of_the_rule_cap(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Ana opted out of email before her delayed email's claim: the claim withdrew it, rightly, but the decision
    that reached nobody stayed `fired`, so its rule's cap was spent on a message never sent."""
    delayed_email = "      - channel: email\n        template: cart_nudge.email.j2\n        delay: 2s\n"
    settings = make_settings(tmp_path, mappings_dir=mappings_with(tmp_path, delayed_email), quiet_hours="",
                             **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub)
        hub.send(message("identify", userId="u-ana", traits={"email_opt_out": True}))
        hub.settle()
        wait_for(lambda: hub.admin("/api/deliveries")["deliveries"][0]["status"] == "failed")
        [decision] = hub.admin("/api/decisions")["decisions"]
    assert decision["status"] == "unreached" and sandbox.smtp.received == []
