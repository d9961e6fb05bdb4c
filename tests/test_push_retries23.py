"""A push to several devices goes, at each claim after its first soon after planning, only to the devices its
person still holds (audit 23): none left, it falls back unsent.

A hub whose delivery steps the test drives, the real firebase-admin and SMTP client against the sandbox fakes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors.sandbox.providers import SandboxProviders
from hub import claim_checks
from hub.runtime import Hub
from hub.store import decisions
from hub.store.schema import deliveries
from hub.store.withdrawals import WITHDRAWN_DEVICES_GONE
from tests.conftest import message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_crm_push23 import PHONE, TABLET, ana_views_her_cart, attempt_push, bob_signs_in_on, push_row
from tests.test_fallbacks21 import cart_mappings

NEW_PHONE = "bmV3LXBob25lLXRva2VuOkFQQTkxYkgyM3B1c2gwMDAwMDAwMw"


@pytest.fixture
def push_else_email_hub(tmp_path: Path, database_url: str, sandbox: SandboxProviders) -> Iterator[Hub]:
    """A hub whose cart rule pushes, else emails; a person keeps two push tokens at most (the shipped rule keeps
    20), the oldest making room for a new one."""
    mappings = cart_mappings(tmp_path)
    identity = mappings / "identity.yaml"
    identity.write_text(identity.read_text().replace("{type: push_token, limit: 20,", "{type: push_token, limit: 2,"))
    hub = hub_on(tmp_path, mappings_dir=mappings, database_url=database_url, **sandbox.settings_overrides())
    yield hub
    hub.stop()


def push_fate(hub: Hub) -> dict:
    """What the push's decision records of it."""
    with hub.store.read() as connection:
        decision_id, delivery_id = connection.execute(
            select(deliveries.c.decision_id, deliveries.c.delivery_id).where(deliveries.c.channel == "push")
        ).one()
        actions = decisions.get(connection, decision_id)["actions"]
    return next(fate for fate in actions if fate.get("delivery_id") == delivery_id)


def run_deliveries(hub: Hub, seconds: float) -> None:
    """Run the delivery engine for `seconds`: long enough for a retry's wait, and for a fallback to be sent."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hub.delivery.run_once()
        time.sleep(0.02)


@BOTH_DATABASES
def test_a_retried_push_none_of_whose_devices_is_the_persons_any_more_falls_back_to_email_unsent(
    push_else_email_hub: Hub, sandbox: SandboxProviders
) -> None:
    """Ana's phone runs another Firebase project's build and her tablet was over its message rate: the phone's
    token left her profile, then Bob signed in on the tablet. The retry went to the phone alone, which
    "answered" SENDER_ID_MISMATCH as every device had: the push was parked as a wrong service-account key, and
    the email the rule names for a person no push reaches was never planned."""
    ana_views_her_cart(push_else_email_hub, PHONE, TABLET)
    sandbox.fcm.other_senders.add(PHONE)
    sandbox.fcm.rate_limited.add(TABLET)
    assert attempt_push(push_else_email_hub, sandbox) == sorted([PHONE, TABLET])
    bob_signs_in_on(push_else_email_hub, TABLET)
    sent_before = len(sandbox.fcm.requests)

    run_deliveries(push_else_email_hub, 3)  # FCM asked for a second's wait

    assert [r for r in sandbox.fcm.requests[sent_before:] if r["path"].endswith("messages:send")] == []
    with push_else_email_hub.store.read() as connection:
        status, attempts, last_error = connection.execute(
            select(deliveries.c.status, deliveries.c.attempts, deliveries.c.last_error).where(deliveries.c.channel == "push")
        ).one()
    assert (status, attempts, last_error) == ("failed", 1, WITHDRAWN_DEVICES_GONE)
    [email] = sandbox.smtp.received
    assert (email.rcpt_tos, email.message["Subject"]) == (["ana@example.com"], "Your cart is saved, Ana")
    fate = push_fate(push_else_email_hub)
    assert (fate["fate"], fate["reason"]) == (
        "fell_back", "every push_token it went to turned out dead and left the profile (withdrawn unsent at its claim)",
    )


def test_a_push_held_a_while_goes_only_to_the_devices_the_person_still_holds(
    push_else_email_hub: Hub, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push waited in the outbox (a delay, quiet hours, a worker down) while Ana's new phone took the place
    of her oldest device (two at most): its first attempt went to the device she no longer has too."""
    monkeypatch.setattr(claim_checks, "CONSENT_RECHECK_AFTER", timedelta(0))  # every claim comes a while after
    ana_views_her_cart(push_else_email_hub, PHONE, TABLET)
    accept(push_else_email_hub, message(userId="u-ana", event="App Opened", context={"device": {"token": NEW_PHONE}}))

    assert attempt_push(push_else_email_hub, sandbox) == [TABLET]

    assert push_row(push_else_email_hub) == ("sent", 1, [TABLET])
    assert sandbox.smtp.received == []
