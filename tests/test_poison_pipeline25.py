"""One row the hub cannot read (a "poison pill", written by hand or by an older version) no longer stops the
pipeline's queue, nor the timer worker's reads beside its claim: the inbox row is quarantined and failed with its
reason, a timer's row is left to its claim to set aside, and every other row goes.

SQLite only: PostgreSQL's json and timestamptz columns refuse such values as they are written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from hub.clock import utcnow
from hub.model import RawEvent
from hub.runtime import Hub
from hub.store import Store, inbox
from hub.store.schema import inbox as inbox_table
from hub.store.schema import quarantine
from tests.conftest import message
from tests.test_absence_timers import ORDER_NUDGE, accept, carts_of, copied_mappings, hub_on, profile_of, reload_rules
from tests.test_poison25 import PEOPLE, drive, timer_fates

NO_CALENDAR_HAS = "'2026-02-30 09:00:00.000000'"  # SQLite keeps the text as written; the driver cannot parse it
INBOX_POISONS = {  # column: (value written by SQL, the error the claim's read raised)
    "payload": ("'{\"type\": \"track\", \"event\": '", "JSONDecodeError"),  # JSON text cut short
    "received_at": (NO_CALENDAR_HAS, "ValueError"),
}


@contextmanager
def opened(hub: Hub) -> Iterator[Hub]:
    try:
        yield hub
    finally:
        hub.delivery.close()
        hub.store.dispose()


def take_in(hub: Hub, messages: list[dict]) -> None:
    """The messages accepted (in this order: the first is the first claimed), not yet processed."""
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], utcnow())


def spoil_inbox_row(hub: Hub, message_id: str, column: str, value: str) -> None:
    with hub.store.write() as connection:
        connection.execute(text(f"UPDATE inbox SET {column} = {value} WHERE message_id = :id"), {"id": message_id})


def inbox_fates(hub: Hub) -> dict[str, tuple[str, str | None]]:
    """Each inbox row's status and error by message id (read without the columns a poisoned row spoils)."""
    with hub.store.read() as connection:
        rows = connection.execute(select(inbox_table.c.message_id, inbox_table.c.status, inbox_table.c.error))
        return {message_id: (status, error) for message_id, status, error in rows}


def identifies(*names: str) -> list[dict]:
    return [message("identify", userId=name, traits={"email": f"{name}@example.com"}) for name in names]


@pytest.mark.parametrize("column", sorted(INBOX_POISONS))
def test_an_inbox_row_the_claim_cannot_read_is_quarantined_and_the_others_are_processed(tmp_path: Path,
                                                                                        column: str) -> None:
    """A payload that is not JSON text, or a received time no calendar has, failed the pipeline's claim as it
    read the row: every claim took it first again, no event of the hub was processed, and every step raised."""
    value, error_type = INBOX_POISONS[column]
    with opened(hub_on(tmp_path)) as hub:
        poison, *good = identifies("zed", *PEOPLE)
        take_in(hub, [poison, *good])
        spoil_inbox_row(hub, poison["messageId"], column, value)
        errors = drive(hub.pipeline.run_once, until=lambda: "pending" not in {s for s, _ in inbox_fates(hub).values()},
                       seconds=5)
        fates = inbox_fates(hub)
        assert {fates[m["messageId"]][0] for m in good} == {"done"}
        status, reason = fates[poison["messageId"]]
        assert status == "failed"
        assert re.fullmatch(rf"hub\.internal: {error_type}: .*mend the row.*replay.*", reason or "")
        with hub.store.read() as connection:
            [kept] = connection.execute(select(quarantine).where(quarantine.c.inbox_id == inbox_id_of(hub, poison))).mappings()
        assert kept["stage"] == "pipeline" and kept["reason"] == reason
        assert [problem["field"] for problem in kept["problems"]] == [column]
        assert b'"type"' in kept["raw_body"]  # the body as stored, for ops to mend
        assert errors == []


def test_two_unreadable_inbox_rows_with_nothing_else_due_are_both_set_aside(tmp_path: Path) -> None:
    """A failure of every row tried was taken for a fault of the hub's and raised, so two bad rows and nothing
    else due (or a first claim's window all written badly by an older version) stopped the pipeline for good."""
    with opened(hub_on(tmp_path)) as hub:
        first, second = identifies("zed", "yan")
        take_in(hub, [first, second])
        for sent in (first, second):
            spoil_inbox_row(hub, sent["messageId"], "payload", INBOX_POISONS["payload"][0])
        drive(hub.pipeline.run_once, until=lambda: "pending" not in {s for s, _ in inbox_fates(hub).values()}, seconds=5)
        assert {status for status, _ in inbox_fates(hub).values()} == {"failed"}


def inbox_id_of(hub: Hub, sent: dict) -> int:
    with hub.store.read() as connection:
        return connection.execute(select(inbox_table.c.id).where(inbox_table.c.message_id == sent["messageId"])).scalar_one()


def test_a_waiting_event_whose_received_time_cannot_be_read_holds_the_timers_back_without_raising(tmp_path: Path) -> None:
    """The timer worker reads when the oldest waiting event was received, before each claim: one the driver
    could not parse made every timer step raise (and the worker back off, up to 30 s), while the pipeline was
    behind. Its time unknown, it may be any timer's follow-up: the timers wait until the pipeline has set it
    aside, then fire."""
    with opened(hub_on(tmp_path)) as hub:
        accept(hub, *carts_of(*PEOPLE))  # one due timer each
        [late] = identifies("zed")
        take_in(hub, [late])
        spoil_inbox_row(hub, late["messageId"], "received_at", NO_CALENDAR_HAS)
        errors = drive(hub.timers.run_once, until=lambda: False, seconds=0.5)
        assert errors == []
        assert {status for status, _ in timer_fates(hub).values()} == {"pending"}
        assert drive(hub.pipeline.run_once, until=lambda: inbox_fates(hub)[late["messageId"]][0] == "failed") == []
        errors = drive(hub.timers.run_once, until=lambda: "pending" not in {s for s, _ in timer_fates(hub).values()})
        assert [status for status, _ in timer_fates(hub).values()] == ["fired"] * len(PEOPLE)
        assert errors == []


def test_a_timer_whose_anchor_cannot_be_read_does_not_stop_a_shortened_wait_bringing_the_others_forward(
    tmp_path: Path,
) -> None:
    """After an edit cut the wait from 30 minutes to 2, the timer worker reads the pending timers' anchors to
    bring them forward: one the driver could not parse made every timer step raise, and no timer fired. It is
    passed over (its claim sets it aside when it comes due); the others fire."""
    rules = tmp_path / "mappings" / "triggers.yaml"
    with opened(hub_on(tmp_path, mappings_dir=copied_mappings(tmp_path, ORDER_NUDGE.replace("WAIT", "30m")))) as hub:
        accept(hub, *carts_of(*PEOPLE))
        assert hub.timers.run_once() == 0  # the worker has seen the 30-minute wait
        with hub.store.write() as connection:
            connection.execute(text(f"UPDATE timers SET anchor_at = {NO_CALENDAR_HAS} WHERE profile_id = :bob"),
                               {"bob": profile_of(connection, "bob")})
        reload_rules(hub, rules, ORDER_NUDGE.replace("WAIT", "2m"))
        others = [name for name in PEOPLE if name != "bob"]
        errors = drive(hub.timers.run_once, until=lambda: {timer_fates(hub)[name][0] for name in others} == {"fired"},
                       seconds=5)
        fates = timer_fates(hub)
        assert {name: fates[name][0] for name in PEOPLE} == {"amy": "fired", "bob": "pending", "cat": "fired", "dan": "fired"}
        assert errors == []


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_rows_claimed_one_by_one_after_a_failed_claim_are_leased_as_a_batch_claim_leases_them(store: Store) -> None:
    """The pipeline's claim row by row (after a claim that failed) takes the rows the batch claim would, oldest
    first, counts the attempt, and leases each: another worker's claim, or a second look, does not take it too."""
    now = utcnow()
    with store.write() as connection:
        inbox.append(connection, [RawEvent("default", str(n), {"n": n}) for n in range(3)], now)
    with store.write() as connection:
        ids = inbox.due_ids(connection, 2, now)
        claimed = [inbox.claim_one(connection, inbox_id, now, timedelta(minutes=1)) for inbox_id in ids]
    assert [row.payload for row in claimed if row] == [{"n": 0}, {"n": 1}] and {row.attempts for row in claimed if row} == {0}
    with store.write() as connection:
        assert inbox.claim_one(connection, ids[0], now, timedelta(minutes=1)) is None
        assert [row.payload for row in inbox.claim(connection, 10, now, timedelta(minutes=1))] == [{"n": 2}]
