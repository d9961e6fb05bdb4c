"""The inbox: raw events committed before the sender gets its 2xx."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from sqlalchemy import Connection, Text, and_, bindparam, cast, func, select, update

from hub.errors import ItemProblem
from hub.model import RawEvent
from hub.store import precompiled, quarantine, sql
from hub.store.schema import UTCDateTime, inbox

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    source_id: str
    message_id: str
    payload: dict[str, Any]
    received_at: datetime
    attempts: int


# The error of a done row a mapping dropped (`mark_dropped`): never an error of a touchpoint's row, which is None.
DROPPED = "dropped by its mapping: "
_APPEND = sql.NewRows(inbox.c.dedup_key)  # each ingest request's events, in one insert that names the new ones


def append(connection: Connection, events: Sequence[RawEvent], received_at: datetime) -> int:
    """Store new events; returns how many were new (the rest were duplicates)."""
    return len(_APPEND(connection, [
        {
            "dedup_key": event.dedup_key,
            "source_id": event.source_id,
            "message_id": event.message_id,
            "payload": event.payload,
            "received_at": received_at,
            "status": "pending",
            "attempts": 0,
            "available_at": received_at,
        }
        for event in events
    ]))


# Each pipeline batch: the rows it takes, pushed back by the lease and counted as an attempt, in one statement.
# Picked in (available_at, id) order, the order of ix_inbox_status_available (SQLite's indexes end in the rowid):
# by id alone, every claim sorted the whole backlog first (a claim of 25: 7.7 ms at 100,000 pending, now 0.2 ms).
# The lease gives the picked rows one available_at, so they come back, and are processed, in id order.
_READY = and_(inbox.c.status == "pending", inbox.c.available_at <= bindparam("p_now", type_=UTCDateTime))
_ORDER = (inbox.c.available_at, inbox.c.id)
_CLAIMED_COLUMNS = (inbox.c.id, inbox.c.source_id, inbox.c.message_id, inbox.c.payload, inbox.c.received_at, inbox.c.attempts)
_LEASE = {"available_at": bindparam("p_until", type_=UTCDateTime), "attempts": inbox.c.attempts + 1}
_CLAIM = sql.Claim(inbox.c.id, _CLAIMED_COLUMNS, _READY, _ORDER, _LEASE)
_CLAIM_ONE = sql.Claim(inbox.c.id, _CLAIMED_COLUMNS, and_(_READY, inbox.c.id == bindparam("p_id")), _ORDER, _LEASE)


def claim(connection: Connection, limit: int, now: datetime, lease: timedelta) -> list[InboxRow]:
    """Take up to `limit` pending rows for this worker; they come back to the queue after `lease`.

    Must run in a write transaction: on SQLite the transaction holds the write
    lock, so two workers never claim the same row. Each row's `attempts` are
    those made before this claim (RETURNING shows the count it raised).
    """
    return _rows(_CLAIM(connection, limit, p_now=now, p_until=now + lease))


def _rows(claimed: list[tuple[Any, ...]]) -> list[InboxRow]:
    """The claimed rows, each with the attempts made before its claim."""
    return [InboxRow(*row[:-1], attempts=row[-1] - 1) for row in claimed]


def due_ids(connection: Connection, limit: int, now: datetime) -> list[int]:
    """The ids of the rows `claim` would take, read and not leased: only the key is read, so a row whose other
    columns cannot be read (a payload that is not JSON text, a time written by hand) is among them, for the
    caller to claim one by one (`claim_one`) and set aside (`set_aside`). Not a hot path: only after a claim
    failed."""
    query = select(inbox.c.id).where(_READY).order_by(*_ORDER).limit(limit)
    return list(connection.execute(query, {"p_now": now}).scalars())


def claim_one(connection: Connection, inbox_id: int, now: datetime, lease: timedelta) -> InboxRow | None:
    """`claim` of one row, by its id; None if it is no longer pending and available, or another worker took it."""
    claimed = _rows(_CLAIM_ONE(connection, 1, p_now=now, p_until=now + lease, p_id=inbox_id))
    return claimed[0] if claimed else None


def set_aside(connection: Connection, inbox_id: int, now: datetime, reason: str) -> None:
    """Fail a row whose claim raised (its savepoint rolled back) and quarantine it as stored, `reason` its error:
    left pending, it failed every claim that took it, and held back every event behind it. The quarantine's
    problem names each column that cannot be read, and its body is the payload's text, however malformed."""
    source_id, body = connection.execute(
        select(inbox.c.source_id, cast(inbox.c.payload, Text)).where(inbox.c.id == inbox_id)
    ).one()
    unreadable = _unreadable_columns(connection, inbox_id) or ["(event)"]
    give_up(connection, inbox_id, source_id, body.encode("utf-8"), "pipeline", reason,
            [ItemProblem(None, column, reason) for column in unreadable], now)


def give_up(
    connection: Connection, inbox_id: int, source_id: str, raw_body: bytes, stage: str, reason: str,
    problems: list[ItemProblem], now: datetime,
) -> None:
    """Fail the row for good, `reason` its error, its body quarantined at `stage` with `problems`, for ops to see
    and replay once mended."""
    quarantine.add(
        connection, stage=stage, source_id=source_id, reason=reason, problems=problems, raw_body=raw_body,
        content_type="application/json", received_at=now, inbox_id=inbox_id,
    )
    mark_failed(connection, inbox_id, now, reason)


def _unreadable_columns(connection: Connection, inbox_id: int) -> list[str]:
    """The names of the row's claimed columns the hub cannot read as their type (its driver or type raises)."""
    unreadable = []
    for column in _CLAIMED_COLUMNS:
        try:
            connection.execute(select(column).where(inbox.c.id == inbox_id)).all()
        except (ValueError, TypeError):
            unreadable.append(column.name)
    return unreadable


_OLDEST_WAITING = precompiled.Precompiled(  # each pass of the timer worker that finds work: one probe of ix_inbox_status_received
    select(inbox.c.received_at).where(inbox.c.status == "pending").order_by(inbox.c.received_at).limit(1)
)
# What `oldest_waiting` says when the oldest waiting event's time cannot be read: before any timer.
UNREADABLE_RECEIVED_AT = datetime(1970, 1, 1, tzinfo=timezone.utc)


def oldest_waiting(connection: Connection) -> datetime | None:
    """When the oldest event not yet processed was received (None: the pipeline has caught up).

    Received, not `available_at`: a row postponed after a failed attempt, or
    requeued by a replay, is available later but is still an event the timer
    worker must not fire past (`timers.claim_due`): it may be the checkout
    that cancels a cart's timer armed after it was received.

    A received time the driver cannot parse (written by hand or by an older
    version) raised here, at every timer step. Its event may be any timer's
    follow-up, so it counts as received before them all
    (`UNREADABLE_RECEIVED_AT`): timers wait until the pipeline has set the row
    aside (`set_aside`), as they wait for any event the pipeline has not seen.
    """
    try:
        found = _OLDEST_WAITING.execute(connection, {})
    except (ValueError, TypeError):
        log.warning("the oldest waiting event's received time cannot be read; timers wait for the pipeline to set it "
                    "aside")
        return UNREADABLE_RECEIVED_AT
    return found[0][0] if found else None


_MARK_DONE = precompiled.InLists(  # each pipeline batch
    lambda ids: update(inbox).where(inbox.c.id.in_(ids)).values(status="done", processed_at=bindparam("p_now", type_=UTCDateTime), error=None)
)


def mark_done(connection: Connection, inbox_ids: Sequence[int], now: datetime) -> None:
    _MARK_DONE.execute(connection, inbox_ids, p_now=now)


def mark_dropped(connection: Connection, dropped: Sequence[tuple[int, str]]) -> None:
    """Note on rows marked done that a mapping dropped them, and why: the raw body is all that is left of such an
    event, and `forget` finds the ones to wipe among these alone rather than read through the whole inbox."""
    connection.execute(
        update(inbox).where(inbox.c.id == bindparam("p_id")).values(error=bindparam("p_error")),
        [{"p_id": inbox_id, "p_error": f"{DROPPED}{reason}"} for inbox_id, reason in dropped],
    )


def mark_failed(connection: Connection, inbox_id: int, now: datetime, error: str) -> None:
    """Give up on a row for good (it is quarantined by the caller)."""
    connection.execute(update(inbox).where(inbox.c.id == inbox_id).values(status="failed", processed_at=now, error=error))


def postpone(connection: Connection, inbox_id: int, available_at: datetime, error: str) -> None:
    """Put a row back after an unexpected failure, to be tried again at `available_at`."""
    connection.execute(update(inbox).where(inbox.c.id == inbox_id).values(available_at=available_at, error=error))


def count_by_status(connection: Connection) -> dict[str, int]:
    return dict(connection.execute(select(inbox.c.status, func.count()).group_by(inbox.c.status)).all())
