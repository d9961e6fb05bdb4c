"""Timers as events arm and end them: the pipeline's side of `hub.store.timers`, one UPDATE and one INSERT per
event that starts or ends a wait, on the profile's own timers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import ColumnElement, Connection, and_, bindparam, case, false, literal, or_, update

from hub.model import FOLLOWED_UP_BY, RESTARTED_BY, derived_id
from hub.store import precompiled, sql
from hub.store.schema import UTCDateTime, timers

# Per event that starts a wait; a timer armed again by a replayed event is already stored.
_ARM = sql.precompiled_insert_skipping(
    timers, ["timer_id"],
    ["timer_id", "rule_id", "profile_id", "touchpoint_id", "anchor_at", "due_at", "status", "created_at", "rule_version"],
)

def follow_event(
    connection: Connection, profile_id: str, touchpoint_id: str, at: datetime, now: datetime, *,
    cancel: Sequence[tuple[str, timedelta]], arm: Sequence[tuple[str, datetime]], versions: Mapping[str, str] | None = None,
) -> None:
    """What an event at `at` does to its profile's timers: the waits it ends (rule id, the rule's wait) are
    cancelled, those it starts (rule id, due at) restart: in one UPDATE, then one INSERT of the new timers, each
    with the version of its rule (`versions`, by rule id) that judged the event to start a wait (none: the
    timer worker judges the rule in force again when it comes due).

    Only waits still running at `at` are touched, judged by the rules as the
    caller has them in force, not by the timers' stored due times: after an
    edit shortened a wait, a timer may still be due when the old one ends
    (until a timer worker brings it forward), and an order after the new
    wait ended would cancel the nudge the rule now sends. A wait already
    over held whatever came after it: it fires, even when it has not yet (a
    timer worker behind or down), and an event re-arming its rule starts a
    wait of its own beside it.
    """
    if cancel or arm:
        # A rule's wait still runs at `at` for timers anchored since `at - wait`; an armed rule's wait is its
        # due time's distance from `at`.
        cancelling = [(rule_id, at - wait) for rule_id, wait in cancel]
        superseding = [(rule_id, at - (due_at - at)) for rule_id, due_at in arm]
        parameters = {"p_profile_id": profile_id, "p_touchpoint_id": touchpoint_id, "p_at": at, "p_now": now,
                      **_running_parameters(cancelling, "p_cancel_"), **_running_parameters(superseding, "p_rearm_")}
        _settling(len(cancel), len(arm)).execute(connection, parameters)
    if arm:
        _ARM.execute(connection, [
            {
                "timer_id": derived_id("timer", rule_id, touchpoint_id), "rule_id": rule_id, "profile_id": profile_id,
                "touchpoint_id": touchpoint_id, "anchor_at": at, "due_at": due_at, "status": "pending", "created_at": now,
                "rule_version": (versions or {}).get(rule_id),
            }
            for rule_id, due_at in arm
        ])


@lru_cache(maxsize=64)
def _settling(cancels: int, rearms: int) -> precompiled.Precompiled:
    """`follow_event`'s UPDATE for an event cancelling `cancels` rules and arming `rearms`, built once per shape
    and `Precompiled`, as it runs for most events.

    Of the profile's pending timers of those rules whose wait the event falls
    inside of (anchored no earlier than the rule's wait before it), one of a
    rule it cancels anchored before it is cancelled; one of a rule it arms,
    anchored no later, is superseded (the wait restarts). Each says why in
    `WaitEnded`'s words, which the statement writes from the event's
    touchpoint id: built in Python, both reasons cost every event that
    cancels or arms two `WaitEnded`s, for the few whose timers it ends. An
    event at the anchor's very instant is not one after it, as
    `triggers.evaluate_expired` sees it when the timer fires: the outcome
    must not hang on which of the two was taken in first (an identify sent
    with a cart event, say). One plain bind parameter per
    rule: expanding IN lists are rendered again on every execution, which
    costs as much as running the statement. The top-level `rule_id IN`
    keeps every shape on the profile's index (profile_id, rule_id, status,
    ...): the profile's own pending timers of those rules, a handful.
    """
    rule_ids = [*precompiled.placeholders(cancels, "p_cancel_"), *precompiled.placeholders(rearms, "p_rearm_")]
    at, touchpoint_id = bindparam("p_at", type_=UTCDateTime), bindparam("p_touchpoint_id")
    cancelling = and_(timers.c.anchor_at < at, _running(cancels, "p_cancel_"))
    return precompiled.Precompiled(
        update(timers)
        .where(
            timers.c.profile_id == bindparam("p_profile_id"), timers.c.rule_id.in_(rule_ids),
            timers.c.status == "pending", timers.c.anchor_at <= at,
            timers.c.touchpoint_id != touchpoint_id, or_(cancelling, _running(rearms, "p_rearm_")),
        )
        .values(status=case((cancelling, "cancelled"), else_="superseded"),
                reason=case((cancelling, literal(FOLLOWED_UP_BY) + touchpoint_id),
                            else_=literal(RESTARTED_BY) + touchpoint_id),
                settled_at=bindparam("p_now", type_=UTCDateTime))
    )


def _running(rules: int, prefix: str) -> ColumnElement[bool]:
    """Timers of these rules (`{prefix}N`) whose wait still runs: anchored since `{prefix}since_N`. False for none:
    an empty IN or OR would be rendered per execution, which `Precompiled` does not do."""
    return or_(false(), *(
        and_(timers.c.rule_id == bindparam(f"{prefix}{n}"),
             timers.c.anchor_at >= bindparam(f"{prefix}since_{n}", type_=UTCDateTime))
        for n in range(rules)
    ))


def _running_parameters(rules: Sequence[tuple[str, datetime]], prefix: str) -> dict[str, object]:
    """`_running`'s parameters for these (rule id, anchored since)."""
    return {**precompiled.numbered([rule_id for rule_id, _ in rules], prefix),
            **precompiled.numbered([since for _, since in rules], f"{prefix}since_")}
