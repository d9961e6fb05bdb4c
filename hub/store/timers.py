"""Durable absence timers: armed by one event, cancelled by its follow-up, fired once when due.

A timer lives in the store, not in memory, so it survives restarts. Workers
claim due timers with a lease like outbox rows; firing (decision, planned
deliveries, `fired` status) commits in one transaction, so a timer fires
exactly once even if a worker dies holding it: the lease runs out and
another worker fires it instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, func, or_, select, update

from hub.model import derived_id
from hub.store import sql
from hub.store.schema import UTCDateTime, timers
from hub.store.sql import insert_ignoring_conflicts


@dataclass(frozen=True, slots=True)
class DueTimer:
    timer_id: str
    rule_id: str
    profile_id: str
    touchpoint_id: str
    anchor_at: datetime
    due_at: datetime


# Built once with bind parameters: the pipeline runs these for most events.
_SUPERSEDE = (
    update(timers)
    .where(
        timers.c.profile_id == bindparam("p_profile_id"), timers.c.rule_id == bindparam("p_rule_id"),
        timers.c.status == "pending", timers.c.anchor_at <= bindparam("p_at", type_=UTCDateTime),
        timers.c.touchpoint_id != bindparam("p_touchpoint_id"),
    )
    .values(status="superseded", settled_at=bindparam("p_now", type_=UTCDateTime))
)
_CANCEL = (
    update(timers)
    .where(
        timers.c.profile_id == bindparam("p_profile_id"), timers.c.rule_id.in_(bindparam("p_rule_ids", expanding=True)),
        timers.c.status == "pending", timers.c.anchor_at <= bindparam("p_at", type_=UTCDateTime),
        timers.c.due_at >= bindparam("p_at", type_=UTCDateTime), timers.c.touchpoint_id != bindparam("p_touchpoint_id"),
    )
    .values(status="cancelled", settled_at=bindparam("p_now", type_=UTCDateTime))
)

_SETTLE = (
    update(timers)
    .where(timers.c.timer_id == bindparam("p_timer_id"))
    .values(status=bindparam("p_status"), settled_at=bindparam("p_now", type_=UTCDateTime), claimed_until=None,
            decision_id=bindparam("p_decision_id"))
)

_NEXT_DUE = (  # each pass of the timer worker
    select(timers.c.due_at)
    .where(
        timers.c.status == "pending",
        or_(timers.c.claimed_until.is_(None), timers.c.claimed_until < bindparam("p_now", type_=UTCDateTime)),
    )
    .order_by(timers.c.due_at)
    .limit(1)
)


def arm(
    connection: Connection, rule_id: str, profile_id: str, touchpoint_id: str, anchor_at: datetime, due_at: datetime,
    now: datetime,
) -> bool:
    """Start waiting; a newer `after` event replaces the profile's pending timer of the rule (the wait restarts)."""
    connection.execute(
        _SUPERSEDE,
        {"p_profile_id": profile_id, "p_rule_id": rule_id, "p_at": anchor_at, "p_touchpoint_id": touchpoint_id, "p_now": now},
    )
    row = {
        "timer_id": derived_id("timer", rule_id, touchpoint_id),
        "rule_id": rule_id,
        "profile_id": profile_id,
        "touchpoint_id": touchpoint_id,
        "anchor_at": anchor_at,
        "due_at": due_at,
        "status": "pending",
        "created_at": now,
    }
    return insert_ignoring_conflicts(connection, timers, [row], ["timer_id"]) == 1


def cancel(
    connection: Connection, rule_ids: list[str], profile_id: str, touchpoint_id: str, occurred_at: datetime, now: datetime
) -> int:
    """The awaited follow-up happened: pending timers it falls inside of are cancelled."""
    if not rule_ids:
        return 0
    return connection.execute(
        _CANCEL,
        {"p_profile_id": profile_id, "p_rule_ids": rule_ids, "p_at": occurred_at, "p_touchpoint_id": touchpoint_id, "p_now": now},
    ).rowcount


def claim_due(connection: Connection, limit: int, now: datetime, lease: timedelta) -> list[DueTimer]:
    columns = (timers.c.rule_id, timers.c.profile_id, timers.c.touchpoint_id, timers.c.anchor_at, timers.c.due_at)
    rows = sql.claim_due(
        connection, timers.c.timer_id, columns, timers.c.status == "pending", timers.c.due_at,
        limit=limit, now=now, lease=lease,
    )
    return [DueTimer(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a claimed timer ended: `fired` (with its decision), `lapsed` (rule, anchor or profile gone) or `cancelled`
    (the follow-up happened after all, or the rule's other conditions no longer hold)."""

    timer_id: str
    status: str
    decision_id: str | None = None


def settle(connection: Connection, settlements: Sequence[Settlement], now: datetime) -> None:
    """Mark claimed timers settled, all in one statement."""
    if settlements:
        connection.execute(_SETTLE, [
            {"p_timer_id": s.timer_id, "p_status": s.status, "p_now": now, "p_decision_id": s.decision_id} for s in settlements
        ])


def next_due(connection: Connection, now: datetime) -> datetime | None:
    """When the earliest pending timer no worker holds is (or was) due: when the timer worker has work next.

    A walk down the (status, due_at) index that stops at the first timer not
    held, however many wait; a held timer whose lease runs out is picked up at
    the worker's next poll.
    """
    return connection.execute(_NEXT_DUE, {"p_now": now}).scalar_one_or_none()


def pending_due(connection: Connection, now: datetime) -> int:
    """Timers whose time has come and which have not fired yet (the hub is not idle while any exist)."""
    return connection.execute(
        select(func.count()).select_from(timers).where(timers.c.status == "pending", timers.c.due_at <= now)
    ).scalar_one()


def for_profile(connection: Connection, profile_id: str) -> list[dict]:
    return [dict(row) for row in connection.execute(
        select(timers).where(timers.c.profile_id == profile_id).order_by(timers.c.created_at)
    ).mappings()]
