"""A destination's own word holds back every delivery to it (audit 23), as Svix and Novu pause an endpoint: a
Retry-After (429 / 503) until the time it named, an hour at most; a webhook's 410 Gone parks the later deliveries
without a call until a replay.

The receiver is the sandbox's (`FakeWebhookReceiver`), driven through a hub's own delivery engine.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.retry import LONGEST_PROVIDER_WAIT_SECONDS
from hub.runtime import Hub
from hub.store import delivery_replay
from hub.store.delivery_log import unrouted
from hub.throttle import ProviderWait
from tests.conftest import make_settings
from tests.test_delivery_left_alone import closed, due_at, plan
from tests.test_delivery_policy import Clock
from tests.test_delivery_robustness import delivery_log, drive, statuses
from tests.test_webhooks22 import GONE_ADVICE

BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
WEBHOOK = "outbound_webhook"
LATER = ("second", "third", "fourth")


def held_back(reason: str) -> float:
    return REGISTRY.get_sample_value("hub_deliveries_held_back_total", {"destination": WEBHOOK, "reason": reason}) or 0.0


def first_refused_then_three_more(hub: Hub, sandbox: SandboxProviders) -> None:
    """The receiver refuses the first delivery as queued on it; three more are planned once that is recorded, and the
    engine runs for a while."""
    plan(hub.store, WEBHOOK, "webhook", "first")
    assert drive(hub.delivery, seconds=0, until=lambda: statuses(hub.store)[f"{WEBHOOK}-first"] != "pending") == []
    plan(hub.store, WEBHOOK, "webhook", *LATER)
    assert drive(hub.delivery, seconds=0.3) == []


@pytest.mark.parametrize(("status", "retry_after"), [(429, 30), (503, 30)])
def test_a_retry_after_holds_back_every_delivery_to_the_destination_until_then(
    tmp_path: Path, sandbox: SandboxProviders, status: int, retry_after: int
) -> None:
    """A Retry-After delayed only the delivery it answered: each other delivery to the receiver still called it, got
    its own 429 and spent its retry budget on a provider that had asked for quiet."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides()))
    sandbox.webhooks.fail_next(status, times=4, retry_after=retry_after)
    before = held_back("provider_asked_wait")
    try:
        first_refused_then_three_more(hub, sandbox)
        log, due, now = delivery_log(hub.store), due_at(hub.store), utcnow()
    finally:
        closed(hub)
    assert sandbox.webhooks.count == 1
    assert log[f"{WEBHOOK}-first"]["status"] == "retrying"
    for target in LATER:
        assert (log[f"{WEBHOOK}-{target}"]["status"], log[f"{WEBHOOK}-{target}"]["attempt_log"]) == ("pending", [])
        assert timedelta(seconds=retry_after - 5) < due[f"{WEBHOOK}-{target}"].replace(tzinfo=now.tzinfo) - now
    assert held_back("provider_asked_wait") - before == len(LATER)


def test_a_bogus_retry_after_holds_the_destination_back_an_hour_at_most(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """Held for as long as any Retry-After said, a receiver answering "Retry-After: 99999999" (three years) would stall
    every delivery to it for good."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides()))
    sandbox.webhooks.fail_next(503, retry_after=99999999)
    try:
        first_refused_then_three_more(hub, sandbox)
        due, now = due_at(hub.store), utcnow()
    finally:
        closed(hub)
    assert sandbox.webhooks.count == 1
    for target in LATER:
        held_for = due[f"{WEBHOOK}-{target}"].replace(tzinfo=now.tzinfo) - now
        assert timedelta(minutes=59) < held_for <= timedelta(seconds=LONGEST_PROVIDER_WAIT_SECONDS)


def test_a_shorter_retry_after_asked_later_does_not_shorten_the_wait_in_force() -> None:
    """A receiver that asked for ten minutes, then answered one last request with "Retry-After: 5", would be called
    again after five seconds, nine minutes and more before the time it had first named."""
    clock = Clock()
    wait = ProviderWait(WEBHOOK, longest=3600, clock=clock)
    assert wait.remaining() == 0
    wait.ask(600)
    clock.now += 10
    wait.ask(5)
    assert wait.remaining() == pytest.approx(590)
    wait.ask(7200)
    assert wait.remaining() == pytest.approx(3600)
    clock.now += 3600
    assert wait.remaining() == 0


@BOTH_DATABASES
def test_deliveries_to_a_receiver_that_answered_410_are_parked_without_a_call_until_replayed(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """Each delivery to a receiver that had answered 410 Gone made its own call and got its own 410, where Standard
    Webhooks asks a sender to stop (Svix disables the endpoint). They are parked, dead-lettered with the same advice,
    and a replay sends them once the receiver is back."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides(), database_url=database_url))
    sandbox.webhooks.fail_next(410)
    before = held_back("destination_gone")
    try:
        first_refused_then_three_more(hub, sandbox)
        parked = delivery_log(hub.store)
        with hub.store.write() as connection:  # ops replay the dead-letter queue once the receiver is back
            for delivery_id in parked:
                assert delivery_replay.replay(connection, delivery_id, utcnow(), unrouted) == "dead"
        errors = drive(hub.delivery, seconds=0, until=lambda: set(statuses(hub.store).values()) == {"sent"})
        replayed = statuses(hub.store)
    finally:
        closed(hub)
    assert errors == []
    assert {item["status"] for item in parked.values()} == {"dead"}
    first_id = f"{WEBHOOK}-first"
    assert parked[first_id]["attempt_log"][0]["error_class"] == "http.410"
    for target in LATER:
        [attempt] = parked[f"{WEBHOOK}-{target}"]["attempt_log"]
        assert attempt["error_class"] == "hub.destination_gone"
        assert f"answered an earlier delivery ({first_id})" in attempt["error_message"]
        assert attempt["error_message"].endswith(GONE_ADVICE.replace("CHAT_WEBHOOK", "OUTBOUND_WEBHOOK")
                                                 .replace("chat_webhook", WEBHOOK))
    assert held_back("destination_gone") - before == len(LATER)
    assert set(replayed.values()) == {"sent"}
    assert sandbox.webhooks.count == 1 + 4  # the 410, then each delivery once, on its replay


def test_a_replay_the_receiver_still_answers_410_parks_the_rest_of_the_replay_without_a_call(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """A replay is sent (ops asked for it), but a receiver still gone answers it 410 again: the other replayed
    deliveries are parked again on that answer, not each sent to hear it."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides(), delivery_batch_size=1))
    sandbox.webhooks.fail_next(410, times=2)
    try:
        first_refused_then_three_more(hub, sandbox)
        with hub.store.write() as connection:
            for target in ("first", *LATER):
                delivery_replay.replay(connection, f"{WEBHOOK}-{target}", utcnow(), unrouted)
        assert drive(hub.delivery, seconds=0.3) == []
        left = statuses(hub.store)
    finally:
        closed(hub)
    assert set(left.values()) == {"dead"}
    assert sandbox.webhooks.count == 2  # the first 410, and the one the first replayed delivery heard
