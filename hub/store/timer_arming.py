"""Timers as events arm and end them: the pipeline's side of `hub.store.timers`, one UPDATE and one INSERT per
event that starts or ends a wait, on the profile's own timers, and one read per event that ends one for the
nudges its timers fired before it was taken in (`withdraw_followed_up`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from sqlalchemy import ColumnElement, Connection, and_, bindparam, case, false, literal, or_, select, update

from hub.model import FOLLOWED_UP_BY, RESTARTED_BY, derived_id
from hub.store import decisions, precompiled, sql, withdrawals
from hub.store.outbox import UNSENT_STATUSES
from hub.store.schema import UTCDateTime, deliveries, timers

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


_AT = bindparam("p_at", type_=UTCDateTime)
_HELD_AFTER_FIRING = precompiled.InLists(lambda rules: select(  # every event that cancels a rule
    timers.c.decision_id, deliveries.c.delivery_id,
).select_from(
    timers.join(deliveries, deliveries.c.decision_id == timers.c.decision_id)
).where(
    # The profile's index (profile_id, rule_id, status, due_at): its fired timers of these rules due since `at`.
    timers.c.profile_id == bindparam("p_profile_id"), timers.c.rule_id.in_(rules), timers.c.status == "fired",
    timers.c.due_at >= _AT, timers.c.anchor_at < _AT,
    deliveries.c.status.in_([literal(status) for status in UNSENT_STATUSES]),  # literals: `Precompiled`
))


def withdraw_followed_up(
    connection: Connection, profile_id: str, event: str, at: datetime, now: datetime, rule_ids: Sequence[str]
) -> None:
    """Withdraw the messages not sent yet of the profile's nudges that this follow-up (`event` at `at`, awaited
    by `rule_ids`) shows were not needed: their timers fired before it was taken in, although it happened
    inside their wait, (anchor, due] by event time, as `triggers.evaluate_expired` looks for it.

    Taken in before the timer fired, the follow-up would have cancelled it
    (`follow_event`, or the timer worker itself); taken in late (a webhook
    retried, a batch export), the nudge was decided all the same and may
    still wait to go: quiet hours hold a cart's discount email until morning,
    and it went to a person who had bought. A message already sent stays
    sent. Each withdrawn one's fate says so on its decision, which reached
    nobody if nothing else of it is left to go. No fallback is planned: the
    person needs no message at all. One read for every event that cancels a
    rule, on the timers' profile index; more only when it finds a message.
    """
    held = _HELD_AFTER_FIRING.execute(connection, rule_ids, p_profile_id=profile_id, p_at=at)
    if not held:
        return
    reason = (f"{withdrawals.WITHDRAWN_FOLLOWED_UP}{event} at {at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC) arrived after "
              "the wait ended and shows it was not needed")
    withdrawn = set(withdrawals.withdraw(connection, sorted({delivery_id for _, delivery_id in held}), now, reason))
    for decision_id, delivery_id in sorted(held):
        if delivery_id in withdrawn:
            _record_withdrawn(connection, decision_id, delivery_id, reason)


def _record_withdrawn(connection: Connection, decision_id: str, delivery_id: str, reason: str) -> None:
    """The decision's record of the delivery made `withdrawn` for `reason`, so `decisions explain` says why it
    did not go; the decision `unreached` when nothing else of it may go."""
    row = decisions.get(connection, decision_id)
    fate = next((fate for fate in row["actions"] if fate.get("delivery_id") == delivery_id), None) if row else None
    if fate is not None:  # routing names each delivery in its fate; a hand-made or damaged record may not
        decisions.replace_fate(connection, row, delivery_id, [{**fate, "fate": "withdrawn", "reason": reason}])
    decisions.unreached_unless_going(connection, delivery_id)
