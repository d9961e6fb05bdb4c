"""One row the hub cannot read or check (a "poison pill", written by hand or by an older version) is set aside
with its reason; it no longer holds back every other row of its worker's queue."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, text, update

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.model import PlannedDelivery
from hub.runtime import Hub
from hub.store import delivery_replay, outbox
from hub.store.delivery_log import unrouted
from hub.store.schema import deliveries
from hub.store.schema import timers as timers_table
from tests.conftest import make_settings
from tests.test_absence_timers import accept, carts_of, hub_on, profile_of

BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
GOOD_PHONES = ("+14155550101", "+14155550102", "+14155550103")
POISON = "poison"


@pytest.fixture
def hub(tmp_path: Path, database_url: str, sandbox: SandboxProviders) -> Iterator[Hub]:
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides(), database_url=database_url, lease_seconds=0.5))
    try:
        yield hub
    finally:
        hub.delivery.close()
        hub.store.dispose()


def drive(step: Callable[[], Any], until: Callable[[], bool], seconds: float = 15.0) -> list[BaseException]:
    """Call a worker's step again and again, as its worker does (a failing step is kept, and called again), until
    `until()` holds, `seconds` at most; the errors it raised."""
    errors: list[BaseException] = []
    give_up = time.monotonic() + seconds
    while not until() and time.monotonic() < give_up:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the worker's loop does the same
            errors.append(exc)
        time.sleep(0.01)
    return errors


def plan_sms_behind_a_poisoned_one(hub: Hub, poison: Callable[[Connection], None]) -> None:
    """Three SMS due now, and before them (the oldest, so first in every claim) one that `poison` then spoils."""
    now = utcnow()
    planned = [PlannedDelivery(POISON, "decision-poison", "profile-poison", "sms", "twilio_sms", "+14155550100",
                               {"body": "Hi"}, not_before=now - timedelta(minutes=1))]
    planned += [PlannedDelivery(f"good-{n}", f"decision-{n}", f"profile-{n}", "sms", "twilio_sms", phone, {"body": "Hi"})
                for n, phone in enumerate(GOOD_PHONES)]
    with hub.store.write() as connection:
        outbox.plan(connection, planned, now)
        poison(connection)


def content_of_poison(content: Any) -> Callable[[Connection], None]:
    return lambda connection: connection.execute(
        update(deliveries).where(deliveries.c.delivery_id == POISON).values(content=content)
    )


def delivery_row(hub: Hub, delivery_id: str) -> tuple[str, str | None]:
    with hub.store.read() as connection:
        row = connection.execute(
            select(deliveries.c.status, deliveries.c.last_error).where(deliveries.c.delivery_id == delivery_id)
        ).one()
    return row.status, row.last_error


POISONS = {
    # A send-by time that is no time: the claim's check of it raised.
    "send_by": (content_of_poison({"body": "Hi", "send_by": "tomorrow"}), "ValueError"),
    # A payload that is a JSON list, not an object: the quiet-hours check raised reading it.
    "not_an_object": (content_of_poison(["Hi"]), "AttributeError"),
}


@BOTH_DATABASES
@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_delivery_the_claim_cannot_check_is_dead_lettered_and_the_others_go(hub: Hub, sandbox: SandboxProviders,
                                                                               poison: str) -> None:
    """A delivery whose row the claim checks tripped over failed the whole claim's transaction: the next claim
    took the same batch, oldest first, so no SMS of the hub ever went and the worker raised at every poll."""
    spoil, error_type = POISONS[poison]
    plan_sms_behind_a_poisoned_one(hub, spoil)
    errors = drive(hub.delivery.run_once, until=lambda: len(sandbox.twilio.messages) == len(GOOD_PHONES))
    assert sorted(message["to"] for message in sandbox.twilio.messages) == sorted(GOOD_PHONES)
    status, reason = delivery_row(hub, POISON)
    assert status == "dead"
    assert reason is not None and reason.startswith(f"hub.internal: {error_type}: ") and "replay" in reason
    assert errors == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL's timestamptz refuses such a value
def test_a_delivery_whose_due_time_cannot_be_read_is_dead_lettered_and_replayable_once_mended(
    hub: Hub, sandbox: SandboxProviders
) -> None:
    """A first due time SQLite holds as written and no calendar has (30 February) failed the claim as it read
    the row: no SMS of the hub went. Set aside, it goes once its row is mended and it is replayed."""
    plan_sms_behind_a_poisoned_one(hub, lambda connection: connection.execute(
        text("UPDATE deliveries SET first_due_at = '2026-02-30 09:00:00.000000' WHERE delivery_id = :id"), {"id": POISON}
    ))
    errors = drive(hub.delivery.run_once, until=lambda: len(sandbox.twilio.messages) == len(GOOD_PHONES))
    assert sorted(message["to"] for message in sandbox.twilio.messages) == sorted(GOOD_PHONES)
    status, reason = delivery_row(hub, POISON)
    assert status == "dead" and reason is not None and reason.startswith("hub.internal: ValueError: day is out of range")
    with hub.store.write() as connection:
        connection.execute(update(deliveries).where(deliveries.c.delivery_id == POISON).values(first_due_at=utcnow()))
        assert delivery_replay.replay(connection, POISON, utcnow(), unrouted) == "dead"  # its person is no profile here
    errors += drive(hub.delivery.run_once, until=lambda: delivery_row(hub, POISON)[0] == "sent")
    assert delivery_row(hub, POISON)[0] == "sent" and len(sandbox.twilio.messages) == 4
    assert errors == []


PEOPLE = ("amy", "bob", "cat", "dan")
TIMER_POISONS = {
    # A due time written as a Unix timestamp: SQLite sorts a number before every text, so it was the next due
    # timer at every look, and the look raised.
    "due_at": "1733600000",
    # A time armed that no calendar has: the claim raised as it read the row.
    "created_at": "'2026-02-30 09:00:00.000000'",
}


def timer_fates(hub: Hub) -> dict[str, tuple[str, str | None]]:
    """Each person's timer's status and reason, read as text: the hub's own reads of a row it cannot read raise."""
    with hub.store.read() as connection:
        return {name: tuple(connection.execute(select(timers_table.c.status, timers_table.c.reason).where(
            timers_table.c.profile_id == profile_of(connection, name))).one()) for name in PEOPLE}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL's timestamptz refuses such values
@pytest.mark.parametrize("column", sorted(TIMER_POISONS))
def test_a_timer_the_hub_cannot_read_is_settled_failed_and_the_others_fire(tmp_path: Path, database_url: str,
                                                                           column: str) -> None:
    """One timer row whose time could not be read failed the timer worker's every look or claim: none of the
    set's other timers ever fired, and the worker raised at every poll."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, *carts_of(*PEOPLE))
        with hub.store.write() as connection:
            connection.execute(text(f"UPDATE timers SET {column} = {TIMER_POISONS[column]} WHERE profile_id = :bob"),
                               {"bob": profile_of(connection, "bob")})
        errors = drive(hub.timers.run_once, until=lambda: "pending" not in {status for status, _ in timer_fates(hub).values()})
        fates = timer_fates(hub)
        assert [fates[name][0] for name in PEOPLE] == ["fired", "failed", "fired", "fired"]
        assert re.fullmatch(r"hub\.internal: (TypeError|ValueError): .*mend the row.*", fates["bob"][1])
        assert errors == []
    finally:
        hub.delivery.close()
        hub.store.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_claim_check_failing_for_every_row_is_the_workers_failure_not_a_dead_letter_each(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken one by one after a failed claim, every row a faulty check (a bug, a setting it cannot read) failed
    on was dead-lettered as unreadable: the whole outbox, and the worker never heard of it (no error, no backoff).
    A failure of every row tried is raised, for the worker to log and back off from; the rows stay due."""
    plan_sms_behind_a_poisoned_one(hub, lambda connection: None)

    def broken(connection: Connection, claimed: list, now: Any) -> list:
        if claimed:
            raise RuntimeError("a check that fails whatever the row")
        return claimed

    monkeypatch.setattr(hub.delivery._checks, "may_go", broken)
    errors = drive(hub.delivery.run_once, until=lambda: False, seconds=1.0)
    assert errors and all("whatever the row" in str(error) for error in errors)
    assert {delivery_row(hub, delivery_id)[0] for delivery_id in (POISON, *(f"good-{n}" for n in range(3)))} == {"pending"}
