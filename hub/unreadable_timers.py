"""Timers the hub cannot read: found one by one after a claim, or the look for the next due time, failed on them,
and settled `failed` so that the timers behind them fire.

Apart from the timer engine (`hub.absence`), which decides and fires timers, because none of this runs on its
path: a row that cannot be read at all (a due time SQLite holds as written and no calendar has, written by hand
or by an older version) failed every claim, or every look for the next due time, and no timer fired again. Only
then does the worker come here (`ClaimsAfterFailure`), one savepoint per timer; the batch claim stays one
statement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection

from hub.model import WaitEnded
from hub.store import timers
from hub.store.savepoints import each_or_set_aside, is_row_fault, set_aside_reason
from hub.store.timers import DueTimer, Settlement, TimerKey

log = structlog.get_logger(__name__)

# What a timer set aside as unreadable (settled `failed`) says to do.
UNREADABLE_TIMER = "the hub could not read this timer's row; it will not fire: mend the row and set it pending to fire it"


def next_due(connection: Connection, now: datetime) -> tuple[bool, datetime | None]:
    """Whether the next timer's due time could be read, and it (`timers.next_due`)."""
    try:
        return True, timers.next_due(connection, now)
    except Exception as exc:
        if not is_row_fault(exc):  # the database's own refusal: the worker's to back off from
            raise
        log.warning("the next timer's due time could not be read; it is read alone, to set it aside", exc_info=True)
        return False, None


def claim_one_by_one(
    connection: Connection, limit: int, now: datetime, lease: timedelta, seen_until: datetime
) -> tuple[list[DueTimer], list[TimerKey], tuple[Settlement, ...]]:
    """The due timers `timers.claim_due` would take, claimed one by one after a claim that raised, with the keys
    read and the settlements of those set aside."""
    keys = timers.due_keys(connection, limit, now, seen_until)
    due, set_aside = _one_by_one(
        connection, keys, lambda timer_id: timers.claim_one(connection, timer_id, now, lease, seen_until), now
    )
    return due, keys, set_aside


def set_aside_first(connection: Connection, now: datetime) -> tuple[list[TimerKey], tuple[Settlement, ...]]:
    """Set aside the timer `timers.next_due` could not read, if it cannot be read alone either (the error may have
    been the database's); its key, and its settlement if it was. Left pending, it failed every look."""
    keys = timers.first_pending_key(connection, now)
    _, set_aside = _one_by_one(connection, keys, lambda timer_id: timers.read_one(connection, timer_id), now)
    return keys, set_aside


def _one_by_one(
    connection: Connection, keys: Sequence[TimerKey], take: Callable[[str], DueTimer | None], now: datetime
) -> tuple[list[DueTimer], tuple[Settlement, ...]]:
    """`take` each timer (claim or read it) in a savepoint of its own; one that raises is settled `failed`, its
    reason naming the error, as a timer whose firing keeps failing is."""
    set_aside: list[Settlement] = []

    def settle_failed(key: TimerKey, error: Exception) -> None:
        log.error("a timer the hub cannot read is set aside", timer_id=key.timer_id, exc_info=error)
        set_aside.append(Settlement.ended(key.timer_id, WaitEnded("failed", set_aside_reason(error, UNREADABLE_TIMER))))

    taken = each_or_set_aside(connection, keys, lambda key: [timer] if (timer := take(key.timer_id)) else [], settle_failed)
    timers.settle(connection, set_aside, now)
    return taken, tuple(set_aside)
