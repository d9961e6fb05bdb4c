"""Durable absence timers: armed by one event, cancelled by its follow-up, fired once when due.

A timer lives in the store, not in memory, so it survives restarts. Workers
claim due timers with a lease like outbox rows; firing (decision, planned
deliveries, `fired` status) commits in one transaction, so a timer fires
exactly once even if a worker dies holding it: the lease runs out and
another worker fires it instead. A timer that ends without firing keeps why
(`reason`, a `model.WaitEnded`), and one whose firing keeps raising is given
up on (`failed`) after a few attempts, as inbox rows are.

This module is the timer worker's side (claim, settle, look at neighbours);
events arm and end timers through `hub.store.timer_arming`, and rule edits
that shorten a wait are found through `hub.store.timer_waits`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update

from hub.clock import END_OF_TIME
from hub.model import FOLLOWED_UP_BY, RESTARTED_BY, WaitEnded
from hub.store import precompiled, sql
from hub.store.schema import UTCDateTime, decisions, timers


# Why a timer was superseded by an earlier timer's nudge, before that nudge's decision id (`ended_by` reads it back).
ALREADY_FIRED_BY = "an earlier event's timer already fired for this wait: decision "


@dataclass(frozen=True, slots=True)
class DueTimer:
    timer_id: str
    rule_id: str
    profile_id: str
    touchpoint_id: str
    anchor_at: datetime
    due_at: datetime
    attempts: int  # firings of it that raised before this claim
    created_at: datetime  # when a pipeline armed it, by that node's clock
    rule_version: str | None  # of the rule that armed it (`RuleSpec.version`); None if not known (armed before i20)


_SETTLE = precompiled.Precompiled(  # each set the timer worker fires, one row per timer (executemany)
    update(timers)
    .where(timers.c.timer_id == bindparam("p_timer_id"))
    .values(status=bindparam("p_status"), settled_at=bindparam("p_now", type_=UTCDateTime), claimed_until=None,
            decision_id=bindparam("p_decision_id"), reason=bindparam("p_reason"))
)

_NEXT_DUE = precompiled.Precompiled(  # each pass of the timer worker, idle ones too
    select(timers.c.due_at)
    .where(
        timers.c.status == "pending",
        or_(timers.c.claimed_until.is_(None), timers.c.claimed_until < bindparam("p_now", type_=UTCDateTime)),
    )
    .order_by(timers.c.due_at)
    .limit(1)
)


_WAIT_UNTIL = precompiled.Precompiled(  # pending only: a timer settled since it was read keeps its record
    update(timers)
    .where(timers.c.timer_id == bindparam("p_timer_id"), timers.c.status == "pending")
    .values(due_at=bindparam("p_due_at", type_=UTCDateTime), claimed_until=None)
)


_ANCHORED_SINCE = precompiled.InLists(lambda profiles, rules: select(
    timers.c.timer_id, timers.c.profile_id, timers.c.rule_id, timers.c.touchpoint_id, timers.c.anchor_at,
    timers.c.decision_id, decisions.c.status,
).select_from(
    timers.outerjoin(decisions, decisions.c.decision_id == timers.c.decision_id)  # a fired timer's decision
).where(
    timers.c.profile_id.in_(profiles), timers.c.rule_id.in_(rules),
    timers.c.anchor_at >= bindparam("p_since", type_=UTCDateTime),  # a profile's older timers stay in the store
))


@dataclass(frozen=True, slots=True)
class _Neighbour:
    """A timer of a firing timer's rule and profile, as `ended_by_neighbours` reads it."""

    timer_id: str
    touchpoint_id: str
    anchor_at: datetime
    decision_id: str | None  # what it decided, if it fired
    decided: str | None  # that decision's status: `fired` (it reached the person), `unreached` or `capped`


def ended_by_neighbours(connection: Connection, firing: Sequence[DueTimer]) -> dict[str, WaitEnded]:
    """The firing timers (by id) whose wait another timer of their rule and profile settles, and how: in one
    read of those profiles' timers of those rules.

    A later event within the wait started it again (a timer anchored after
    it, by its due time): the pipeline supersedes such a timer when the
    later event comes in, and this catches those it cannot see then (an
    earlier cart taken in after the later one, or the cart of a profile
    merged in since: a merge moves its timers to the survivor). A timer
    anchored no later (the pipeline supersedes one at the same instant, too)
    whose nudge reached the person for a wait this one's event fell inside
    already decided it: taken in order, this event would have superseded
    that timer and fired alone; taken in after it fired, it must not fire a
    second nudge for the one wait. One whose decision reached nobody
    (`unreached`: no address yet, as for an anonymous cart) or was `capped`
    sent nothing, and decides nothing here: the person's own cart, merged
    with it since, still gets its nudge. Each firing timer's wait is its due
    time's distance from its anchor: its rule's as in force.
    """
    if not firing:
        return {}
    neighbours: dict[tuple[str, str], list[_Neighbour]] = {}
    rows = _ANCHORED_SINCE.execute(
        connection, sorted({t.profile_id for t in firing}), sorted({t.rule_id for t in firing}),
        p_since=min(t.anchor_at - (t.due_at - t.anchor_at) for t in firing),
    )
    for timer_id, profile_id, rule_id, touchpoint_id, anchor_at, decision_id, decided in rows:
        neighbours.setdefault((profile_id, rule_id), []).append(
            _Neighbour(timer_id, touchpoint_id, anchor_at, decision_id, decided)
        )
    ended = {timer.timer_id: _ended_by(timer, neighbours.get((timer.profile_id, timer.rule_id), ())) for timer in firing}
    return {timer_id: wait_ended for timer_id, wait_ended in ended.items() if wait_ended is not None}


def _ended_by(timer: DueTimer, neighbours: Sequence[_Neighbour]) -> WaitEnded | None:
    """How one of `neighbours` ends the firing timer's wait, if one does (`ended_by_neighbours`). A fired one at
    the same instant counts as earlier, as `timer_arming.follow_event` supersedes a pending one: a cart resent under a new
    message id, taken in after the first one's nudge went, must not send a second."""
    wait = timer.due_at - timer.anchor_at
    for other in neighbours:
        if other.timer_id == timer.timer_id:
            continue
        if timer.anchor_at < other.anchor_at <= timer.due_at:
            return WaitEnded.restarted(other.touchpoint_id)
        if other.decided == "fired" and other.anchor_at <= timer.anchor_at <= other.anchor_at + wait:
            return WaitEnded("superseded", f"{ALREADY_FIRED_BY}{other.decision_id}")
    return None


def wait_until(connection: Connection, later: Sequence[tuple[str, datetime]]) -> None:
    """Pending timers to come due when given (timer id, due at): claimed ones whose rule now waits longer,
    released, or those a shortened wait brings forward. One settled since its caller read it (it fired between
    `ShortenedWaits`' read and its write) is left as it ended."""
    if later:
        _WAIT_UNTIL.execute(connection, [{"p_timer_id": timer_id, "p_due_at": due_at} for timer_id, due_at in later])


_SEEN_UNTIL = bindparam("p_seen_until", type_=UTCDateTime)
_DUE_TIMER_COLUMNS = (  # a `DueTimer` after its id
    timers.c.rule_id, timers.c.profile_id, timers.c.touchpoint_id, timers.c.anchor_at, timers.c.due_at, timers.c.attempts,
    timers.c.created_at, timers.c.rule_version,
)
_WAITING = and_(timers.c.status == "pending", timers.c.created_at < _SEEN_UNTIL)
_CLAIM_DUE = sql.due_claim(timers.c.timer_id, _DUE_TIMER_COLUMNS, _WAITING, timers.c.due_at)  # each pass that finds work
_CLAIM_ONE = sql.due_claim(  # after a claim that failed (`claim_one`)
    timers.c.timer_id, _DUE_TIMER_COLUMNS, and_(_WAITING, timers.c.timer_id == bindparam("p_id")), timers.c.due_at,
)
ALL_SEEN = END_OF_TIME  # `seen_until` when no event waits in the inbox


def claim_due(
    connection: Connection, limit: int, now: datetime, lease: timedelta, seen_until: datetime = ALL_SEEN
) -> list[DueTimer]:
    """Due timers for this worker, leased until `now + lease`: those due, and armed, before `seen_until`.

    `seen_until` is since when the oldest event still in the inbox has waited.
    An event received before a timer came due, or before the event that armed
    it was processed, may be its follow-up: a backlog (the hub catching up
    after an outage, a replay) puts a cart and its checkout in the inbox
    together, and a timer fired between the two pipeline batches would nudge
    a person who bought. Such a timer waits until the pipeline has seen them.
    The due bound is the claim's one range on the (status, due_at) index: a
    second (`due_at < seen_until`) made SQLite range over that one instead,
    and walk every pending timer due later whenever fewer than `limit` were due.
    """
    rows = _CLAIM_DUE(connection, limit, **_claim_values(now, lease, seen_until))
    return [DueTimer(*row) for row in rows]


def _claim_values(now: datetime, lease: timedelta, seen_until: datetime) -> dict[str, datetime]:
    """The bind values of a claim (`claim_due`, `claim_one`): due by `now` and before `seen_until`, leased `lease`."""
    return {"p_now": min(now, seen_until - timedelta(microseconds=1)), "p_until": now + lease, "p_seen_until": seen_until}


@dataclass(frozen=True, slots=True)
class TimerKey:
    """A timer by what names it in the log, read without its times: what the timer worker goes through one by one
    when a claim failed on a row it could not read (`due_keys`, `first_pending_key`)."""

    timer_id: str
    rule_id: str
    profile_id: str


_KEY_COLUMNS = (timers.c.timer_id, timers.c.rule_id, timers.c.profile_id)


def due_keys(connection: Connection, limit: int, now: datetime, seen_until: datetime = ALL_SEEN) -> list[TimerKey]:
    """The timers `claim_due` would take, read and not leased. Not a hot path: only after a claim failed."""
    due_by = min(now, seen_until - timedelta(microseconds=1))
    ready = sql.due_ready(and_(timers.c.status == "pending", timers.c.created_at < seen_until), timers.c.due_at, due_by)
    rows = connection.execute(select(*_KEY_COLUMNS).where(ready).order_by(timers.c.due_at).limit(limit))
    return [TimerKey(*row) for row in rows]


def first_pending_key(connection: Connection, now: datetime) -> list[TimerKey]:
    """The timer `next_due` reads (none, or one), read without its times: after `next_due` failed to read it."""
    unclaimed = or_(timers.c.claimed_until.is_(None), timers.c.claimed_until < now)
    rows = connection.execute(
        select(*_KEY_COLUMNS).where(timers.c.status == "pending", unclaimed).order_by(timers.c.due_at).limit(1)
    )
    return [TimerKey(*row) for row in rows]


def claim_one(
    connection: Connection, timer_id: str, now: datetime, lease: timedelta, seen_until: datetime = ALL_SEEN
) -> DueTimer | None:
    """`claim_due` of one timer, by its id; None if it is no longer due, or another worker holds it."""
    rows = _CLAIM_ONE(connection, 1, p_id=timer_id, **_claim_values(now, lease, seen_until))
    return DueTimer(*rows[0]) if rows else None


def read_one(connection: Connection, timer_id: str) -> DueTimer | None:
    """A timer as `claim_due` reads it, not leased: whether its row can be read."""
    row = connection.execute(select(timers.c.timer_id, *_DUE_TIMER_COLUMNS).where(timers.c.timer_id == timer_id)).first()
    return None if row is None else DueTimer(*row)


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a claimed timer ended: `fired` (with its decision), or without one (`ended`): `cancelled` (the
    follow-up happened after all), `superseded` (a later event started the wait again, or an earlier timer's
    nudge already reached the person for it), `lapsed` (rule, anchor or profile gone, the anchor no longer one
    the rule waits after, or the rule's other conditions or every action's `only_if` do not hold) or `failed`
    (firing kept raising)."""

    timer_id: str
    status: str
    decision_id: str | None = None
    reason: str | None = None

    @classmethod
    def ended(cls, timer_id: str, wait_ended: WaitEnded) -> Settlement:
        """Settled without a decision, keeping why."""
        return cls(timer_id, wait_ended.status, reason=wait_ended.reason)


def settle(connection: Connection, settlements: Sequence[Settlement], now: datetime) -> None:
    """Mark claimed timers settled, all in one statement."""
    if settlements:
        _SETTLE.execute(connection, [
            {"p_timer_id": s.timer_id, "p_status": s.status, "p_now": now, "p_decision_id": s.decision_id, "p_reason": s.reason}
            for s in settlements
        ])


_ATTEMPT_FAILED = precompiled.Precompiled(
    update(timers)
    .where(timers.c.timer_id == bindparam("p_timer_id"))
    .values(attempts=timers.c.attempts + 1, reason=bindparam("p_reason"))
)


def attempt_failed(connection: Connection, timer_id: str, error: str) -> None:
    """Count a firing of a claimed timer that raised, and keep its error; the claim stands until its lease runs out."""
    _ATTEMPT_FAILED.execute(connection, {"p_timer_id": timer_id, "p_reason": error})


def next_due(connection: Connection, now: datetime) -> datetime | None:
    """When the earliest pending timer no worker holds is (or was) due: when the timer worker has work next.

    A walk down the (status, due_at) index that stops at the first timer not
    held, however many wait; a held timer whose lease runs out is picked up at
    the worker's next poll.
    """
    found = _NEXT_DUE.execute(connection, {"p_now": now})
    return found[0][0] if found else None


def pending_due(connection: Connection, now: datetime) -> int:
    """Timers whose time has come and which have not fired yet (the hub is not idle while any exist)."""
    return connection.execute(
        select(func.count()).select_from(timers).where(timers.c.status == "pending", timers.c.due_at <= now)
    ).scalar_one()


def pending_of_rules(connection: Connection, rule_ids: Collection[str]) -> dict[str, int]:
    """How many timers of each of these rules wait (a rule with none is left out). For a rule edit that took
    rules out of force, not a hot path: no index leads with the rule id, so this walks the pending timers, as
    `timer_waits.due_after_their_wait` does."""
    return dict(connection.execute(
        select(timers.c.rule_id, func.count())
        .where(timers.c.status == "pending", timers.c.rule_id.in_(sorted(rule_ids)))
        .group_by(timers.c.rule_id)
    ).all())


def count_by_status(connection: Connection) -> dict[str, int]:
    return dict(connection.execute(select(timers.c.status, func.count()).group_by(timers.c.status)).all())


def for_profile(connection: Connection, profile_id: str) -> list[dict]:
    return [dict(row) for row in connection.execute(
        select(timers).where(timers.c.profile_id == profile_id).order_by(timers.c.created_at)
    ).mappings()]


def ended_by(reason: str | None) -> tuple[str, str] | None:
    """What ended a cancelled or superseded timer, read back from its `reason`: ("touchpoint", id) for a follow-up
    or a restart, ("decision", id) for an earlier timer's nudge; None for any other end.

    The reason is the only place a timer keeps it: an unmerge asks, to reopen
    the timers the other person's event or nudge ended while the two were
    wrongly one profile. A column for it would be cleaner, but would need a
    migration for what only an unmerge reads.
    """
    for prefix, kind in ((FOLLOWED_UP_BY, "touchpoint"), (RESTARTED_BY, "touchpoint"), (ALREADY_FIRED_BY, "decision")):
        if reason and reason.startswith(prefix):
            return kind, reason.removeprefix(prefix)
    return None


def reopen(connection: Connection, timer_ids: Sequence[str]) -> None:
    """Ended timers pending again, their reason and settle time cleared: what ended them no longer counts (an
    unmerge gave it to another profile), and the timer worker judges each afresh, by event time, when due."""
    if timer_ids:
        connection.execute(
            update(timers).where(timers.c.timer_id.in_(timer_ids))
            .values(status="pending", reason=None, settled_at=None, claimed_until=None)
        )
