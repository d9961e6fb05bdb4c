"""Fallbacks when a channel cannot carry the message: an email with no subject, a push whose every token is dead."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.model import Action, Decision
from hub.routes_file import ChannelRoute
from hub.routing import Router
from hub.settings import PROJECT_MAPPINGS
from hub.templates import TemplateRenderer
from tests.conftest import RunningHub, cart_nudge_rules, make_settings, message, serve_hub

ROUTES = {
    "email": ChannelRoute(destination="email_smtp", target="email"),
    "sms": ChannelRoute(destination="twilio_sms", target="phone"),
}
PROFILE = {"traits": {"first_name": "Jane", "nickname": None}, "identifiers": {"email": ["jane@example.com"], "phone": ["+14155550188"]}}


def support_decision() -> Decision:
    action = Action("email", "help.email.j2", fallback=(("sms", "help.sms.j2"),))
    return Decision("d-21", "post_purchase_support", "post_purchase_support@1", "P1", "tp-1",
                    datetime(2026, 1, 1, 12, tzinfo=timezone.utc), (action,))


@pytest.mark.parametrize("subject", ["", "{% block subject %}{{ profile.nickname }}{% endblock %}\n"],
                         ids=["no-subject-block", "blank-subject"])
def test_an_email_template_without_a_subject_block_does_not_send_the_internal_rule_id_as_subject(
    tmp_path: Path, subject: str
) -> None:
    """An email whose subject was missing or rendered blank, while its text did not, was planned: the SMTP
    destination then put the rule id in the Subject header and the customer read "post_purchase_support"."""
    (tmp_path / "help.email.j2").write_text(subject + "{% block text %}Hi {{ profile.first_name }}, we can help.{% endblock %}\n")
    (tmp_path / "help.sms.j2").write_text("Hi {{ profile.first_name }}, we can help.")
    plan = Router(ROUTES, TemplateRenderer(tmp_path)).plan(support_decision(), PROFILE, {})
    [sms] = plan.deliveries
    assert sms.channel == "sms"
    [email, fell_to] = plan.fates()
    assert (email["fate"], email["because"], email["to"]) == ("fell_back", "skipped", "sms")
    assert email["reason"].startswith("template rendered empty: help.email.j2 (subject blank or missing)")
    assert fell_to["fallback_for"] == "email"


# --- a push whose every token is dead --------------------------------------------------------------------

DEAD_TOKEN = "dGVzdC1waG9uZS10b2tlbjpBUEE5MWJIdGVzdHRva2VuMDAx"
CART_RULES = cart_nudge_rules("""\
      - channel: push
        template: cart_nudge.push.j2
        fallback: [{channel: email, template: cart_nudge.email.j2}]
""")


def cart_mappings(tmp_path: Path) -> Path:
    """The shipped mappings with one rule: push, else email."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "triggers.yaml").write_text(CART_RULES)
    (mappings / "templates" / "cart_nudge.push.j2").write_text(
        "{% block title %}Still thinking?{% endblock %}{% block body %}Your cart is saved.{% endblock %}")
    (mappings / "templates" / "cart_nudge.email.j2").write_text(
        "{% block subject %}Your cart is saved, {{ profile.first_name }}{% endblock %}"
        "{% block text %}Come back to your cart.{% endblock %}")
    return mappings


def cart_left(hub: RunningHub, **traits: Any) -> None:
    hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "first_name": "Ana", **traits}),
             message(userId="u-ana", event="App Opened", context={"device": {"token": DEAD_TOKEN}}),
             message(userId="u-ana", event="Cart Viewed"))
    hub.settle()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_push_whose_every_token_fcm_calls_dead_falls_back_to_the_email_the_rule_names(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """Ana's only push token was an uninstalled app's: FCM answered UNREGISTERED and the hub took the token off
    her profile, but routing falls back only while planning, when it still saw the token, so the email the
    rule names for a person without a push token was never planned and Ana, reachable by email, heard nothing."""
    sandbox.fcm.unregistered.add(DEAD_TOKEN)
    settings = make_settings(tmp_path, database_url=database_url, mappings_dir=cart_mappings(tmp_path),
                             **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub)
        deliveries = {d["channel"]: d for d in hub.admin("/api/deliveries")["deliveries"]}
        explained = hub.admin(f"/api/decisions/{deliveries['push']['decision_id']}")
    assert deliveries["push"]["status"] == "failed"
    assert deliveries["email"]["status"] == "sent"
    [email] = sandbox.smtp.received
    assert email.message["Subject"] == "Your cart is saved, Ana"
    push, fell_to = explained["actions"]
    assert (push["fate"], push["because"], push["to"]) == ("fell_back", "failed", "email")
    assert push["reason"].startswith("every push_token it went to turned out dead and left the profile (fcm.UNREGISTERED")
    assert (fell_to["fate"], fell_to["fallback_for"]) == ("planned", "push")


def test_the_fallback_of_a_dead_push_keeps_to_the_persons_consent(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """The fallback planned after the push failed is routed as at planning: Ana, who said no to email, gets
    none, and the decision says why."""
    sandbox.fcm.unregistered.add(DEAD_TOKEN)
    settings = make_settings(tmp_path, mappings_dir=cart_mappings(tmp_path), **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub, consent={"email": False})
        [push] = hub.admin("/api/deliveries")["deliveries"]
        explained = hub.admin(f"/api/decisions/{push['decision_id']}")
    assert push["status"] == "failed" and sandbox.smtp.received == []
    assert [fate["fate"] for fate in explained["actions"]] == ["fell_back", "blocked_by_consent"]
