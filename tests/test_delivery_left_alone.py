"""Delivery engine defects earlier sessions left alone: a claim the database keeps refusing, a node without a
destination's settings in a rolling deploy, and rate-limit tokens spent behind an open circuit breaker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub import delivery as delivery_module
from hub.delivery import DeliveryEngine
from hub.model import PlannedDelivery
from hub.runtime import Hub
from hub.store import Store, outbox
from hub.store.delivery_log import search as search_delivery_log
from hub.store.schema import deliveries
from hub.throttle import CircuitBreaker
from tests.conftest import logs_of, make_settings

BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
PROFILE = "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ"
# The database refuses to lease a delivery (the claim, and a renewal of a lease), as it refuses a claim
# transaction when it is locked or the connection is lost; it still takes the records, which free a lease.
REFUSE_CLAIMS = {
    "sqlite": [
        "CREATE TRIGGER refuse_claims BEFORE UPDATE OF claimed_until ON deliveries "
        "WHEN NEW.claimed_until IS NOT NULL BEGIN SELECT RAISE(ABORT, 'claims refused'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_claims() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RAISE EXCEPTION 'claims refused'; END $$",
        "CREATE TRIGGER refuse_claims BEFORE UPDATE OF claimed_until ON deliveries FOR EACH ROW "
        "WHEN (NEW.claimed_until IS NOT NULL) EXECUTE FUNCTION refuse_claims()",
    ],
}


def plan(store: Store, destination_id: str, channel: str, *targets: str) -> None:
    with store.write() as connection:
        outbox.plan(connection, [
            PlannedDelivery(f"{destination_id}-{target}", f"decision-{target}", PROFILE, channel, destination_id,
                            target, {"body": "Still deciding?", "template": "t.j2", "rule_id": "r1", "params": {}})
            for target in targets
        ], utcnow())


def drive(engine: DeliveryEngine, until: Callable[[], bool], seconds: float = 5.0) -> list[Exception]:
    """Call the engine's step as its worker does (a failing step is kept and retried) until `until()` holds,
    `seconds` at most; the errors its steps raised."""
    errors: list[Exception] = []
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        try:
            engine.run_once()
        except Exception as exc:  # noqa: BLE001 - the worker's loop does the same
            errors.append(exc)
        time.sleep(0.01)
    return errors


def delivery_log(store: Store) -> dict[str, dict[str, Any]]:
    with store.read() as connection:
        return {item["delivery_id"]: item for item in search_delivery_log(connection, limit=100)}


def statuses(store: Store) -> dict[str, str]:
    with store.read() as connection:
        return dict(connection.execute(select(deliveries.c.delivery_id, deliveries.c.status)).all())


def closed(*hubs: Hub) -> None:
    for hub in hubs:
        hub.delivery.close()
        hub.store.dispose()


# 1. A send that finishes while the claims fail is recorded all the same.

@BOTH_DATABASES
def test_a_send_that_finishes_while_the_database_refuses_claims_is_recorded(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """A run whose last claim had failed claimed again before it waited for its sends in flight and recorded
    them: while the database kept refusing the claim, every run raised first, and the webhook the receiver had
    taken was never recorded, to be sent again once its lease ran out (a duplicate message)."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides(), database_url=database_url))
    sandbox.webhooks.delay_seconds = 0.5  # a receiver slower than a run's wait: the send carries over
    plan(hub.store, "outbound_webhook", "webhook", "slow")
    try:
        assert hub.delivery.run_once() == 1  # "slow" claimed and in flight
        with hub.store.write() as connection:
            for statement in REFUSE_CLAIMS[hub.store.engine.dialect.name]:
                connection.exec_driver_sql(statement)
        plan(hub.store, "outbound_webhook", "webhook", "next")  # due: every claim from now on is refused
        errors = drive(hub.delivery, until=lambda: statuses(hub.store)["outbound_webhook-slow"] != "pending")
        log = delivery_log(hub.store)
    finally:
        closed(hub)
    assert errors and all("claims refused" in str(error) for error in errors)
    assert sandbox.webhooks.count == 1
    slow, waiting = log["outbound_webhook-slow"], log["outbound_webhook-next"]
    assert (slow["status"], [attempt["outcome"] for attempt in slow["attempt_log"]]) == ("sent", ["sent"])
    assert (waiting["status"], waiting["attempt_log"]) == ("pending", [])


# 2. A node leaves the deliveries of a destination it has no settings for to a node that has them.

@BOTH_DATABASES
def test_a_node_without_a_destinations_settings_leaves_its_deliveries_to_a_node_that_has_them(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid rolling deploy, a node that had not yet got the chat webhook's settings claimed the chat offers the
    updated node planned and dead-lettered them (config.unknown_destination): they never went, unless someone
    replayed them."""
    everything = sandbox.settings_overrides()
    not_yet = {key: value for key, value in everything.items() if not key.startswith("chat_webhook_")}
    old_node = Hub(make_settings(tmp_path, **not_yet, database_url=database_url))
    new_node = Hub(make_settings(tmp_path, **everything, database_url=database_url))
    plan(new_node.store, "chat_webhook", "chat", "offer")
    try:
        with logs_of(monkeypatch, delivery_module) as logs:
            for _ in range(3):
                old_node.delivery.run_once()
        left = statuses(old_node.store)
        errors = drive(new_node.delivery, until=lambda: statuses(new_node.store)["chat_webhook-offer"] == "sent")
        log = delivery_log(new_node.store)
    finally:
        closed(old_node, new_node)
    assert left == {"chat_webhook-offer": "pending"}
    [said] = [entry for entry in logs if entry["event"].startswith("claiming deliveries only to the destinations")]
    assert "chat_webhook" not in said["destinations"] and "twilio_sms" in said["destinations"]
    assert errors == []
    assert [attempt["outcome"] for attempt in log["chat_webhook-offer"]["attempt_log"]] == ["sent"]
    assert [request["name"] for request in sandbox.webhooks.received] == ["chat"]


# 3. A delivery an open circuit breaker holds back spends none of the rate limit.

def test_sms_held_back_by_an_open_breaker_spend_none_of_twilios_rate_limit(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """Each SMS due while Twilio's breaker was open took a token of its rate limit before the breaker held it
    back: once Twilio was back and the breaker closed, the burst it had left was gone, and the SMS waited for
    tokens the limit had never spent on a send (here 100 s each)."""
    (mappings_dir / "delivery.yaml").write_text(
        "destinations:\n"
        "  twilio_sms:\n"
        "    retry: {max_attempts: 1}\n"
        "    circuit_breaker: {failure_threshold: 1, reset_after: 0.3s}\n"
        "    rate_limit: {per_second: 0.01, burst: 3}\n"
    )
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides(), mappings_dir=mappings_dir))
    sandbox.twilio.fail_next(503, code=20500, message="Service unavailable")
    plan(hub.store, "twilio_sms", "sms", "+14155550100")
    try:
        hub.delivery.run_once()  # Twilio's 503 spends a token and opens the breaker
        plan(hub.store, "twilio_sms", "sms", "+14155550101", "+14155550102", "+14155550103")
        errors = drive(hub.delivery, until=lambda: sandbox.twilio.message_count == 2)
        time.sleep(0.3)  # long enough for a third SMS the limit would let through to go
        hub.delivery.run_once()
        left = statuses(hub.store)
    finally:
        closed(hub)
    assert errors == []
    assert sorted(left.values()) == ["dead", "pending", "sent", "sent"]  # the burst's other two went, then the limit
    assert sandbox.twilio.message_count == 2


def test_a_probe_the_rate_limit_holds_back_is_given_back_and_the_next_delivery_probes() -> None:
    """Asked first, the breaker may admit a delivery as its probe that the rate limit then holds back; left
    pending, that probe held every delivery back until `reset_after` abandoned it."""
    now = [1000.0]
    breaker = CircuitBreaker("twilio_sms", failure_threshold=1, reset_after=10, clock=lambda: now[0])
    breaker.record(healthy=False)
    now[0] += 10
    assert breaker.admit() == 0 and breaker.state == "half_open"  # the probe, held back by the rate limit
    breaker.release()
    assert breaker.state == "open"
    assert breaker.admit() == 0 and breaker.state == "half_open"  # the next delivery probes at once
    breaker.record(healthy=True)
    assert breaker.state == "closed"
