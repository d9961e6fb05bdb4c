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
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from sqlalchemy import BindParameter, ColumnElement, Connection, and_, bindparam, case, false, func, or_, select, update

from hub.model import derived_id
from hub.store import precompiled, sql
from hub.store.schema import UTCDateTime, absence_waits, timers


@dataclass(frozen=True, slots=True)
class DueTimer:
    timer_id: str
    rule_id: str
    profile_id: str
    touchpoint_id: str
    anchor_at: datetime
    due_at: datetime


_SETTLE = precompiled.Precompiled(  # each set the timer worker fires, one row per timer (executemany)
    update(timers)
    .where(timers.c.timer_id == bindparam("p_timer_id"))
    .values(status=bindparam("p_status"), settled_at=bindparam("p_now", type_=UTCDateTime), claimed_until=None,
            decision_id=bindparam("p_decision_id"))
)

# Per event that starts a wait; a timer armed again by a replayed event is already stored.
_ARM = sql.precompiled_insert_skipping(
    timers, ["timer_id"],
    ["timer_id", "rule_id", "profile_id", "touchpoint_id", "anchor_at", "due_at", "status", "created_at"],
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


def follow_event(
    connection: Connection, profile_id: str, touchpoint_id: str, at: datetime, now: datetime, *,
    cancel: Sequence[str], arm: Sequence[tuple[str, datetime]],
) -> None:
    """What an event at `at` does to its profile's timers: the waits it ends are cancelled, those it starts
    (rule id, due at) restart: in one UPDATE, then one INSERT of the new timers.

    Only waits still running at `at` are touched. One already over (due
    before `at`) held whatever came after it: it fires, even when it has not
    yet (a timer worker behind or down), and an event re-arming its rule
    starts a wait of its own beside it.
    """
    rearm = [rule_id for rule_id, _ in arm]
    if cancel or rearm:
        parameters = {"p_profile_id": profile_id, "p_touchpoint_id": touchpoint_id, "p_at": at, "p_now": now,
                      **precompiled.numbered(cancel, "p_cancel_"), **precompiled.numbered(rearm, "p_rearm_")}
        _settling(len(cancel), len(rearm)).execute(connection, parameters)
    if arm:
        _ARM.execute(connection, [
            {
                "timer_id": derived_id("timer", rule_id, touchpoint_id), "rule_id": rule_id, "profile_id": profile_id,
                "touchpoint_id": touchpoint_id, "anchor_at": at, "due_at": due_at, "status": "pending", "created_at": now,
            }
            for rule_id, due_at in arm
        ])


@lru_cache(maxsize=64)
def _settling(cancels: int, rearms: int) -> precompiled.Precompiled:
    """`follow_event`'s UPDATE for an event cancelling `cancels` rules and arming `rearms`, built once per shape
    and `Precompiled`, as it runs for most events.

    Of the profile's pending timers of those rules whose wait the event falls
    inside of (due no earlier), one of a rule it cancels anchored before it
    is cancelled; one of a rule it arms, anchored no later, is superseded (the
    wait restarts). An event at the anchor's very instant is not one after
    it, as `triggers.evaluate_expired` sees it when the timer fires: the
    outcome must not hang on which of the two was taken in first (an
    identify sent with a cart event, say). One plain
    bind parameter per rule: expanding IN lists are rendered again on every
    execution, which costs as much as running the statement. The profile's
    index ends in `due_at` (migration i8_timers_profile_due), so every shape
    searches the profile's timers; before it, SQLite (without statistics)
    ran a cancels-only shape, whose `due_at` term is top-level, down
    (status, due_at): every pending timer due later, not the profile's.
    """
    cancel, rearm = precompiled.placeholders(cancels, "p_cancel_"), precompiled.placeholders(rearms, "p_rearm_")
    at = bindparam("p_at", type_=UTCDateTime)
    cancelling = and_(_among(cancel), timers.c.anchor_at < at)
    return precompiled.Precompiled(
        update(timers)
        .where(
            timers.c.profile_id == bindparam("p_profile_id"), timers.c.rule_id.in_([*cancel, *rearm]),
            timers.c.status == "pending", timers.c.anchor_at <= at, timers.c.due_at >= at,
            timers.c.touchpoint_id != bindparam("p_touchpoint_id"), or_(cancelling, _among(rearm)),
        )
        .values(status=case((cancelling, "cancelled"), else_="superseded"), settled_at=bindparam("p_now", type_=UTCDateTime))
    )


def _among(rule_ids: list[BindParameter[str]]) -> ColumnElement[bool]:
    """`rule_id IN (...)`, or false for none: an empty IN is rendered per execution, which `Precompiled` does not do."""
    return timers.c.rule_id.in_(rule_ids) if rule_ids else false()


_WAIT_UNTIL = precompiled.Precompiled(
    update(timers)
    .where(timers.c.timer_id == bindparam("p_timer_id"))
    .values(due_at=bindparam("p_due_at", type_=UTCDateTime), claimed_until=None)
)


_ANCHORED_AFTER = precompiled.InLists(lambda profiles, rules: select(
    timers.c.timer_id, timers.c.profile_id, timers.c.rule_id, timers.c.anchor_at
).where(
    timers.c.profile_id.in_(profiles), timers.c.rule_id.in_(rules),
    timers.c.anchor_at > bindparam("p_since", type_=UTCDateTime),  # a profile's older timers stay in the store
))


def restarted(connection: Connection, firing: Sequence[DueTimer]) -> set[str]:
    """The firing timers whose wait a later event of their rule and profile started again (a timer of theirs
    anchored after them, by their due time): in one read of those profiles' timers of those rules.

    The pipeline supersedes such a timer when the later event comes in; this
    catches those it cannot see then: an earlier cart taken in after the
    later one, or the cart of a profile merged in since (a merge moves its
    timers to the survivor).
    """
    if not firing:
        return set()
    anchors: dict[tuple[str, str], list[tuple[str, datetime]]] = {}
    rows = _ANCHORED_AFTER.execute(
        connection, sorted({t.profile_id for t in firing}), sorted({t.rule_id for t in firing}),
        p_since=min(t.anchor_at for t in firing),
    )
    for timer_id, profile_id, rule_id, anchor_at in rows:
        anchors.setdefault((profile_id, rule_id), []).append((timer_id, anchor_at))
    return {
        timer.timer_id
        for timer in firing
        if any(other != timer.timer_id and timer.anchor_at < at <= timer.due_at
               for other, at in anchors.get((timer.profile_id, timer.rule_id), ()))
    }


def pending_anchors(connection: Connection, rule_id: str) -> list[tuple[str, datetime, datetime]]:
    """(timer id, anchor at, due at) of a rule's pending timers; for a rule edit, not a hot path."""
    rows = connection.execute(
        select(timers.c.timer_id, timers.c.anchor_at, timers.c.due_at).where(timers.c.rule_id == rule_id, timers.c.status == "pending")
    )
    return [tuple(row) for row in rows]  # type: ignore[misc]


def noted_waits(connection: Connection) -> dict[str, timedelta]:
    """Each absence rule's wait as a timer worker last noted it (`note_waits`)."""
    return {rule_id: timedelta(milliseconds=wait_ms) for rule_id, wait_ms in connection.execute(select(absence_waits))}


def note_waits(connection: Connection, waits: dict[str, timedelta]) -> None:
    """Keep these waits as seen, so the next edit (made while a worker runs or not) is compared with them."""
    sql.upsert(connection, absence_waits, [
        {"rule_id": rule_id, "wait_ms": wait // timedelta(milliseconds=1)} for rule_id, wait in waits.items()
    ], ["rule_id"])


def wait_until(connection: Connection, later: Sequence[tuple[str, datetime]]) -> None:
    """Claimed timers whose rule now waits longer, released to come due again when it says (timer id, due at)."""
    if later:
        _WAIT_UNTIL.execute(connection, [{"p_timer_id": timer_id, "p_due_at": due_at} for timer_id, due_at in later])


_SEEN_UNTIL = bindparam("p_seen_until", type_=UTCDateTime)
_CLAIM_DUE = sql.due_claim(  # each pass of the timer worker that finds work
    timers.c.timer_id, (timers.c.rule_id, timers.c.profile_id, timers.c.touchpoint_id, timers.c.anchor_at, timers.c.due_at),
    and_(timers.c.status == "pending", timers.c.created_at < _SEEN_UNTIL), timers.c.due_at,
)
ALL_SEEN = datetime.max.replace(tzinfo=timezone.utc)  # `seen_until` when no event waits in the inbox


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
    due_by = min(now, seen_until - timedelta(microseconds=1))
    rows = _CLAIM_DUE(connection, limit, p_now=due_by, p_until=now + lease, p_seen_until=seen_until)
    return [DueTimer(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a claimed timer ended: `fired` (with its decision), `cancelled` (the follow-up happened after all),
    `superseded` (a later event started the wait again) or `lapsed` (rule, anchor or profile gone, the anchor no
    longer one the rule waits after, or the rule's other conditions or every action's `only_if` do not hold)."""

    timer_id: str
    status: str
    decision_id: str | None = None


def settle(connection: Connection, settlements: Sequence[Settlement], now: datetime) -> None:
    """Mark claimed timers settled, all in one statement."""
    if settlements:
        _SETTLE.execute(connection, [
            {"p_timer_id": s.timer_id, "p_status": s.status, "p_now": now, "p_decision_id": s.decision_id} for s in settlements
        ])


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


def for_profile(connection: Connection, profile_id: str) -> list[dict]:
    return [dict(row) for row in connection.execute(
        select(timers).where(timers.c.profile_id == profile_id).order_by(timers.c.created_at)
    ).mappings()]
