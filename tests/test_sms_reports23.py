"""An SMS that Twilio took but later reported undelivered: its rule's fallback, once, however the reports come."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.serving import bind_socket, socket_url
from tests.conftest import RunningHub, make_settings, message, serve_hub, wait_for
from tests.test_fallbacks22 import SMS_ELSE_EMAIL, mappings_with

PHONE, EMAIL = "+14155550123", "dee@example.com"


@pytest.fixture
def hub(tmp_path: Path, database_url: str, sandbox: SandboxProviders) -> Iterator[RunningHub]:
    """A hub whose one rule texts, else emails, a Cart Viewed; Twilio's status callbacks reach it."""
    sock = bind_socket()
    settings = make_settings(
        tmp_path, database_url=database_url, mappings_dir=mappings_with(tmp_path, SMS_ELSE_EMAIL),
        public_base_url=socket_url(sock), **sandbox.settings_overrides(),
    )
    with serve_hub(settings, sandbox, sock) as running:
        yield running


def cart_left(hub: RunningHub) -> None:
    hub.send(message("identify", userId="u-dee", traits={"email": EMAIL, "phone": PHONE, "first_name": "Dee"}),
             message(userId="u-dee", event="Cart Viewed"))
    hub.settle()


def by_channel(hub: RunningHub) -> dict[str, dict]:
    return {d["channel"]: d for d in hub.admin("/api/deliveries")["deliveries"]}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_an_sms_reported_undelivered_to_an_unknown_number_emails_the_person_once(hub: RunningHub) -> None:
    """Twilio took Dee's text, then reported it undelivered (30005: the number no longer exists): the hub
    failed the SMS but planned no fallback, where a refusal at send (21610) emails her, so she heard nothing.
    The report posted again, and a late `sent` after it, must not email her a second time."""
    cart_left(hub)
    twilio = hub.sandbox.twilio
    [sms] = twilio.messages
    for status, code in [("undelivered", 30005), ("undelivered", 30005), ("sent", None)]:
        assert twilio.post_status(sms["sid"], status, error_code=code).status_code == 200
    wait_for(lambda: len(hub.sandbox.smtp.received) == 1)
    hub.settle()
    deliveries = by_channel(hub)
    explained = hub.admin(f"/api/decisions/{deliveries['sms']['decision_id']}")
    assert (deliveries["sms"]["status"], deliveries["sms"]["provider_status"]) == ("failed", "undelivered")
    assert deliveries["email"]["status"] == "sent"
    sent_sms, email = explained["actions"]
    assert (sent_sms["fate"], sent_sms["to"], email["fate"]) == ("fell_back", "email", "planned")
    assert "twilio.30005" in sent_sms["reason"]
    assert [r.rcpt_tos for r in hub.sandbox.smtp.received] == [[EMAIL]]
    assert len(hub.admin("/api/deliveries")["deliveries"]) == 2


@pytest.mark.parametrize("code", [30003, 30004, 30006, 30007])
def test_each_twilio_code_for_a_person_sms_cannot_reach_falls_back(hub: RunningHub, code: int) -> None:
    """A handset off or out of coverage (30003), a block (30004), a landline (30006) or a carrier's filter
    (30007): Twilio does not try again, the text never reaches the person, and the email the rule names must."""
    cart_left(hub)
    assert hub.sandbox.twilio.post_status(hub.sandbox.twilio.messages[0]["sid"], "undelivered", error_code=code).status_code == 200
    wait_for(lambda: len(hub.sandbox.smtp.received) == 1)


@pytest.mark.parametrize("status, code", [("failed", 30001), ("undelivered", 30008), ("failed", 30034), ("failed", None)])
def test_a_failure_of_twilio_or_the_sender_plans_no_fallback(hub: RunningHub, status: str, code: int | None) -> None:
    """A queue overflow (30001), an unknown error (30008) or an unregistered sender (30034) is no word about
    the person's phone: every text of the account fails alike, and emailing instead would hide it."""
    cart_left(hub)
    assert hub.sandbox.twilio.post_status(hub.sandbox.twilio.messages[0]["sid"], status, error_code=code).status_code == 200
    hub.settle()
    assert set(by_channel(hub)) == {"sms"} and hub.sandbox.smtp.received == []


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_an_undelivered_report_that_comes_before_the_send_is_recorded_falls_back_too(hub: RunningHub) -> None:
    """Twilio's report can outrun the worker's record of the send; held, and applied when the send is recorded,
    it failed the SMS there with no fallback planned."""
    hub.sandbox.twilio.reports_before_answer = [("undelivered", 30005)]
    cart_left(hub)
    wait_for(lambda: len(hub.sandbox.smtp.received) == 1)
    hub.settle()
    assert by_channel(hub)["sms"]["status"] == "failed"
    assert [r.rcpt_tos for r in hub.sandbox.smtp.received] == [[EMAIL]]
