"""Delivery engine defects earlier sessions left alone: a claim the database keeps refusing, a node without a
destination's settings in a rolling deploy (and deliveries no node has settings for), and rate-limit tokens spent
behind an open circuit breaker."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from connectors.sandbox.providers import SandboxProviders
from hub import delivery_attempts
from hub.clock import utcnow
from hub.model import PlannedDelivery
from hub.runtime import Hub
from hub.store import Store, outbox
from hub.store.schema import deliveries
from hub.throttle import CircuitBreaker
from tests.conftest import logs_of, make_settings
from tests.test_delivery_robustness import delivery_log, drive, statuses

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


def plan(store: Store, destination_id: str, channel: str, *targets: str, at: datetime | None = None) -> None:
    """Deliveries to `targets`, planned (and due) `at` (now)."""
    with store.write() as connection:
        outbox.plan(connection, [
            PlannedDelivery(f"{destination_id}-{target}", f"decision-{target}", PROFILE, channel, destination_id,
                            target, {"body": "Still deciding?", "template": "t.j2", "rule_id": "r1", "params": {}})
            for target in targets
        ], at or utcnow())


def due_at(store: Store) -> dict[str, datetime]:
    with store.read() as connection:
        return dict(connection.execute(select(deliveries.c.delivery_id, deliveries.c.next_attempt_at)).all())


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
        errors = drive(hub.delivery, seconds=0, until=lambda: statuses(hub.store)["outbound_webhook-slow"] != "pending")
        log = delivery_log(hub.store)
    finally:
        closed(hub)
    assert errors and all("claims refused" in str(error) for error in errors)
    assert sandbox.webhooks.count == 1
    slow, waiting = log["outbound_webhook-slow"], log["outbound_webhook-next"]
    assert (slow["status"], [attempt["outcome"] for attempt in slow["attempt_log"]]) == ("sent", ["sent"])
    assert (waiting["status"], waiting["attempt_log"]) == ("pending", [])


# 2. A node leaves the deliveries of a destination it has no settings for to a node that has them, for a while.

@BOTH_DATABASES
def test_a_node_without_a_destinations_settings_leaves_its_deliveries_to_a_node_that_has_them(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid rolling deploy, a node that had not yet got the chat webhook's settings claimed the chat offers the
    updated node planned and dead-lettered them (config.unknown_destination): they never went, unless someone
    replayed them. It puts them back for a minute, no attempt spent, and says so once."""
    everything = sandbox.settings_overrides()
    not_yet = {key: value for key, value in everything.items() if not key.startswith("chat_webhook_")}
    old_node = Hub(make_settings(tmp_path, **not_yet, database_url=database_url))
    new_node = Hub(make_settings(tmp_path, **everything, database_url=database_url))
    plan(new_node.store, "chat_webhook", "chat", "offer", "other")
    try:
        with logs_of(monkeypatch, delivery_attempts) as logs:
            for _ in range(3):
                old_node.delivery.run_once()
        left, put_back_until, seen_at = delivery_log(old_node.store), due_at(old_node.store), utcnow()
        with new_node.store.write() as connection:  # the minute passes
            connection.execute(update(deliveries).values(next_attempt_at=utcnow()))
        errors = drive(new_node.delivery, seconds=0, until=lambda: set(statuses(new_node.store).values()) == {"sent"})
        log = delivery_log(new_node.store)
    finally:
        closed(old_node, new_node)
    assert [(item["status"], item["attempt_log"]) for item in left.values()] == [("pending", [])] * 2
    assert all(until > seen_at + timedelta(seconds=50) for until in put_back_until.values())  # not looked at each poll
    assert [entry["destination"] for entry in logs if "not configured in this process" in entry["event"]] == ["chat_webhook"]
    assert errors == []
    assert [[attempt["outcome"] for attempt in item["attempt_log"]] for item in log.values()] == [["sent"]] * 2
    assert [request["name"] for request in sandbox.webhooks.received] == ["chat"] * 2


def test_deliveries_waiting_for_an_unconfigured_destination_do_not_slow_every_claim(tmp_path: Path) -> None:
    """A hub without Salesforce settings (the quick start; the shipped post_purchase_support rule updates the
    CRM) left each CRM update pending and due, never claimed: at the head of ix_deliveries_due, every claim and
    every empty look (each poll) walked all of them first, a cost growing with every ticket ever taken."""
    hub = Hub(make_settings(tmp_path))
    assert "salesforce" not in hub.destinations

    def claim_cost() -> int:
        """SQLite VM steps (in thousands) the claim of an idle outbox takes: no timing."""
        steps = [0]
        with hub.store.write() as connection:
            raw = connection.connection.dbapi_connection
            raw.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1) or 0, 1000)
            try:
                claimed = outbox.claim_due(connection, 64, utcnow(), timedelta(seconds=30))
            finally:
                raw.set_progress_handler(None, 0)
        assert claimed == []
        return steps[0]

    try:
        idle = claim_cost()
        plan(hub.store, "salesforce", "crm", *(f"ticket-{n}" for n in range(5000)))
        while hub.delivery.run_once():  # the worker's polls
            pass
        stranded = claim_cost()
        left = set(statuses(hub.store).values())
    finally:
        closed(hub)
    assert left == {"pending"}
    assert stranded <= idle + 5, (idle, stranded)


def test_a_delivery_no_process_had_settings_for_until_its_max_age_is_dead_lettered_saying_what_to_set(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """With no process ever configured for its destination, a delivery stayed pending and due for ever: never
    sent, never in the dead-letter queue for anyone to see. Past HUB_DELIVERY_MAX_AGE_SECONDS it goes there."""
    without_chat = {key: value for key, value in sandbox.settings_overrides().items() if not key.startswith("chat_")}
    hub = Hub(make_settings(tmp_path, **without_chat, delivery_max_age_seconds=3600))
    plan(hub.store, "chat_webhook", "chat", "yesterday", at=utcnow() - timedelta(hours=2))
    plan(hub.store, "chat_webhook", "chat", "today")
    try:
        hub.delivery.run_once()
        log = delivery_log(hub.store)
    finally:
        closed(hub)
    old, young = log["chat_webhook-yesterday"], log["chat_webhook-today"]
    assert (young["status"], young["attempt_log"]) == ("pending", [])
    [attempt] = old["attempt_log"]
    assert (old["status"], attempt["error_class"]) == ("dead", "config.unknown_destination")
    assert "'chat_webhook'" in attempt["error_message"] and "HUB_DELIVERY_MAX_AGE_SECONDS" in attempt["error_message"]
    assert sandbox.webhooks.count == 0


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
        errors = drive(hub.delivery, seconds=0, until=lambda: sandbox.twilio.message_count == 2)
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
