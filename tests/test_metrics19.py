"""What /metrics serves beyond this process's counters: the store's backlog, outbox and timers read at each
scrape, the circuit breakers' state, and deliveries held back without a call counted apart from attempts."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from hub import metrics
from hub.store import Store
from hub.throttle import CircuitBreaker
from tests.conftest import RunningHub, message, support_ticket, wait_for

BOTH_STORES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def scraped(store: Store) -> dict[tuple[str, frozenset], float]:
    """Every sample `metrics.exposition` serves, keyed by name and labels."""
    text = metrics.exposition(store).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def outbox(store: Store, status: str) -> float:
    return scraped(store).get(
        ("hub_outbox_unsent", frozenset({"destination": "twilio_sms", "channel": "sms", "status": status}.items())), 0
    )


@BOTH_STORES
@pytest.mark.hub_settings(workers="timers,delivery")
def test_the_inbox_backlog_and_its_age_are_scraped_from_the_store(running_hub: RunningHub) -> None:
    """Before, /metrics had only this process's counters: three events waiting for a stopped pipeline showed nowhere."""
    assert running_hub.send(*(message(userId=f"u-{n}", event="Product Viewed") for n in range(3))).json()["accepted"] == 3
    time.sleep(0.05)
    samples = scraped(running_hub.hub.store)
    assert samples[("hub_inbox_pending", frozenset())] == 3
    assert samples[("hub_inbox_oldest_pending_age_seconds", frozenset())] > 0


@BOTH_STORES
@pytest.mark.hub_settings(delivery_max_attempts=2)
def test_a_dead_lettered_delivery_is_scraped_by_destination_and_status_from_any_process(running_hub: RunningHub) -> None:
    """Before, a delivery in the dead-letter queue showed only as retryable attempts of its channel, and only in
    the memory of the process that sent it (a `touchhub worker` serves no /metrics): the gauge is read from the
    store, so a scrape of any process (here one with a store of its own) sees it."""
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="down", times=10)
    running_hub.send(*support_ticket("u-dead", {"phone": "+14155550100"}, datetime.now(timezone.utc)))
    running_hub.settle()
    elsewhere = Store(running_hub.hub.settings.database_url)
    try:
        assert outbox(elsewhere, "dead") == 1
    finally:
        elsewhere.dispose()


def test_the_circuit_gauge_follows_the_breaker_open_and_closed() -> None:
    """Before, a breaker's state lived only in memory and in a log line."""
    now = [0.0]
    breaker = CircuitBreaker("g2-gauge-test", failure_threshold=1, reset_after=10, clock=lambda: now[0])

    def circuit_open() -> float | None:
        return REGISTRY.get_sample_value("hub_circuit_open", {"destination": "g2-gauge-test"})

    assert circuit_open() == 0
    breaker.record(healthy=False)
    assert circuit_open() == 1
    now[0] = 11
    assert breaker.admit() == 0  # the probe
    breaker.record(healthy=True)
    assert circuit_open() == 0


@pytest.mark.hub_settings(breaker_failure_threshold=1, breaker_reset_seconds=600, delivery_max_attempts=20)
def test_a_delivery_held_back_by_an_open_circuit_is_no_attempt(running_hub: RunningHub) -> None:
    """Before, each hold-back counted in hub_delivery_attempts_total as a call (outcome="held_back") though the
    hub made none; it had no count of its own."""

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    attempts_before = sum(sample("hub_delivery_attempts_total", channel="sms", outcome=o) for o in ("retryable", "held_back"))
    held_before = sample("hub_deliveries_held_back_total", destination="twilio_sms", reason="circuit_open")
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="down", times=1)
    running_hub.send(*support_ticket("u-held", {"phone": "+14155550100"}, datetime.now(timezone.utc)))
    wait_for(lambda: len(running_hub.sandbox.twilio.requests) >= 1)
    time.sleep(1.0)  # the retry comes due (backoff 0.01-0.05 s), meets the open circuit and is held back
    attempts = sum(sample("hub_delivery_attempts_total", channel="sms", outcome=o) for o in ("retryable", "held_back"))
    assert attempts - attempts_before == len(running_hub.sandbox.twilio.requests) == 1
    assert sample("hub_deliveries_held_back_total", destination="twilio_sms", reason="circuit_open") > held_before
