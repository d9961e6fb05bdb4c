"""Consent at the delivery claim: an opt-out an event says right after a message was planned stops it, whatever
node or process claims it; a trait change that leaves consent alone, or an opt-out taken back, stops nothing.

The pipeline and the delivery engine are two nodes on one database (as on two machines, or a `touchhub worker`
beside `touchhub serve`), their workers not started, so each test drives each step.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub import claim_checks
from hub.clock import utcnow
from hub.runtime import Hub
from hub.store import delivery_log
from tests.conftest import message, support_ticket
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on

PHONE = "+14155550142"
WITHDRAWN = "not sent: consent was revoked after it was planned"


@pytest.fixture(autouse=True)
def claimed_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every claim here comes soon after the planning, however slow the machine: messages planned a while ago,
    whose consent is always read again, are those planned over an hour ago."""
    monkeypatch.setattr(claim_checks, "CONSENT_RECHECK_AFTER", timedelta(hours=1))


def identify(traits: dict[str, Any]) -> dict[str, Any]:
    """What the person's app says next, stamped now (after the support ticket's identify, two days ago)."""
    return message("identify", userId="u-sam", traits=traits, timestamp=utcnow().isoformat())


def sms_after(tmp_path: Path, database_url: str, sandbox: SandboxProviders, *follow_ups: dict[str, Any]) -> dict[str, Any]:
    """The support SMS the pipeline node plans, once it has taken in `follow_ups` and the delivery node has
    claimed it, as the delivery log shows it."""
    pipeline_node, delivery_node = nodes = [
        hub_on(tmp_path / name, **sandbox.settings_overrides(), database_url=database_url) for name in ("pipeline", "delivery")
    ]
    try:
        accept(pipeline_node, *support_ticket("u-sam", {"phone": PHONE}))
        accept(pipeline_node, *follow_ups)
        return claimed_sms(delivery_node)
    finally:
        for node in nodes:
            node.store.dispose()


def claimed_sms(node: Hub) -> dict[str, Any]:
    while node.delivery.run_once():
        pass
    node.delivery.close()
    with node.store.read() as connection:
        [sms] = delivery_log.search(connection, limit=10, channel="sms")
    return sms


@BOTH_DATABASES
@pytest.mark.parametrize("opt_out", [{"sms_opt_out": True}, {"consent": {"sms": False}}], ids=["sms_opt_out", "consent.sms"])
def test_an_opt_out_an_event_says_right_after_the_sms_was_planned_stops_it(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders, opt_out: dict[str, Any]
) -> None:
    """Consent was read again at the claim only for messages planned over 2 s before, or for people who had
    revoked it through a provider since: an identify saying `sms_opt_out: true` left no mark but the trait, and
    the SMS claimed within those seconds went to the person who had just opted out."""
    sms = sms_after(tmp_path, database_url, sandbox, identify(opt_out))
    assert sandbox.twilio.messages == []
    assert (sms["status"], sms["attempts"], sms["last_error"]) == ("failed", 0, WITHDRAWN)


@BOTH_DATABASES
def test_a_trait_change_that_leaves_sms_consent_alone_withdraws_nothing(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """A profile changed since the SMS was planned is read again; only a revoked consent to its own channel
    withdraws it."""
    sms = sms_after(tmp_path, database_url, sandbox, identify({"plan": "gold", "email_opt_out": True, "sms_opt_out": "false"}))
    assert [m["to"] for m in sandbox.twilio.messages] == [PHONE]
    assert (sms["status"], sms["attempts"]) == ("sent", 1)


@BOTH_DATABASES
def test_an_opt_out_taken_back_before_the_claim_lets_the_sms_go(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """The claim judges consent as it stands then, not that it changed since the SMS was planned."""
    sms = sms_after(tmp_path, database_url, sandbox, identify({"sms_opt_out": True}), identify({"sms_opt_out": False}))
    assert [m["to"] for m in sandbox.twilio.messages] == [PHONE]
    assert (sms["status"], sms["attempts"]) == ("sent", 1)
