"""An SMS that Twilio refuses at send because it cannot reach the person at that number: its rule's fallback,
as for one Twilio takes and later reports undelivered; Twilio's or the sender's own refusals plan none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.serving import bind_socket, socket_url
from tests.conftest import RunningHub, make_settings, serve_hub
from tests.test_fallbacks22 import SMS_ELSE_EMAIL, mappings_with
from tests.test_sms_reports23 import EMAIL, by_channel, cart_left

MAX_ATTEMPTS = 2  # a Twilio 5xx dead-letters the text after this many tries


@pytest.fixture
def hub(tmp_path: Path, database_url: str, sandbox: SandboxProviders) -> Iterator[RunningHub]:
    """A hub whose one rule texts, else emails, a Cart Viewed."""
    sock = bind_socket()
    settings = make_settings(
        tmp_path, database_url=database_url, mappings_dir=mappings_with(tmp_path, SMS_ELSE_EMAIL),
        public_base_url=socket_url(sock), delivery_max_attempts=MAX_ATTEMPTS, **sandbox.settings_overrides(),
    )
    with serve_hub(settings, sandbox, sock) as running:
        yield running


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_an_sms_twilio_refuses_as_a_landline_emails_the_person_once(hub: RunningHub) -> None:
    """Twilio refused Dee's text at send with 21614 (her number is a landline): the hub failed the SMS and
    planned no fallback, as her phone stayed on the profile and she had not opted out, so she heard nothing,
    where the same landline reported by callback (30006) emails her."""
    hub.sandbox.twilio.fail_next(400, code=21614, message="'To' number is not a valid mobile number")
    cart_left(hub)
    deliveries = by_channel(hub)
    explained = hub.admin(f"/api/decisions/{deliveries['sms']['decision_id']}")
    assert (deliveries["sms"]["status"], deliveries["email"]["status"]) == ("failed", "sent")
    sms, email = explained["actions"]
    assert (sms["fate"], sms["to"], email["fate"]) == ("fell_back", "email", "planned")
    assert sms["reason"].startswith("the provider cannot reach the person at this address (twilio.21614")
    assert [r.rcpt_tos for r in hub.sandbox.smtp.received] == [[EMAIL]]
    assert len(hub.admin("/api/deliveries")["deliveries"]) == 2


@pytest.mark.parametrize("code, says", [
    (21211, "The 'To' number +14155550123 is not a valid phone number."),
    (21612, "The 'To' phone number is not currently reachable via SMS."),
])
def test_each_refusal_at_send_for_a_number_sms_cannot_reach_falls_back(hub: RunningHub, code: int, says: str) -> None:
    """A number Twilio finds invalid (21211) or cannot text (21612) failed the SMS for good with no email
    planned, though the rule names one for a person the text cannot reach."""
    hub.sandbox.twilio.fail_next(400, code=code, message=says)
    cart_left(hub)
    assert by_channel(hub)["email"]["status"] == "sent"
    assert [r.rcpt_tos for r in hub.sandbox.smtp.received] == [[EMAIL]]


def test_a_region_the_account_may_not_text_plans_no_fallback(hub: RunningHub) -> None:
    """21408 (the account's Geo Permissions leave the number's country out) is the sender's setup, not the
    person's phone: every text to that country fails alike, and emailing instead would hide it from ops."""
    hub.sandbox.twilio.fail_next(400, code=21408, message="Permission to send an SMS has not been enabled for the "
                                 "region indicated by the 'To' number")
    cart_left(hub)
    assert by_channel(hub)["sms"]["status"] == "failed"
    assert set(by_channel(hub)) == {"sms"} and hub.sandbox.smtp.received == []


def test_a_text_twilio_fails_with_500_is_dead_lettered_without_a_fallback(hub: RunningHub) -> None:
    """Twilio's own failure says nothing about the person: the text waits in the dead-letter queue for a
    replay once Twilio is back, and no email goes meanwhile."""
    hub.sandbox.twilio.fail_next(500, code=20500, message="Internal Server Error", times=MAX_ATTEMPTS)
    cart_left(hub)
    assert by_channel(hub)["sms"]["status"] == "dead"
    assert set(by_channel(hub)) == {"sms"} and hub.sandbox.smtp.received == []
