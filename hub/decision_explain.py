"""The chain from event to delivery behind one decision, for `GET /api/decisions/{id}` and the CLI.

A decision records its rule id and version, the touchpoints that satisfied
the rule and each action's fate; this joins in what happened next (each
delivery with its attempts) and, for an absence rule, the timer that fired,
with what a follow-up taken in only after it fired withdrew.
A decision made when a late event arrived (`triggers.rejudge`) names that
event in its evidence; this joins in when it happened, so the API and
`touchhub decisions explain` both say what was decided later, and why then.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from hub.identifiers import DEFAULT_PHONE_REGION
from hub.store import decisions, delivery_log, touchpoints
from hub.store.schema import timers
from hub.store.withdrawals import WITHDRAWN_FOLLOWED_UP


def explain(
    connection: Connection, decision_id: str, recipient: delivery_log.RecipientOf = delivery_log.unrouted,
    region: str = DEFAULT_PHONE_REGION,
) -> dict[str, Any] | None:
    """`recipient`: what each delivery's target is (`Router.recipient`), so push tokens are masked as such;
    `region` (HUB_DEFAULT_PHONE_REGION), where a phone without its country code in what was sent is read."""
    decision = decisions.get(connection, decision_id)
    if decision is None:
        return None
    evidence = decision["evidence"]
    timer = connection.execute(select(timers).where(timers.c.decision_id == decision_id)).mappings().first()
    return {
        **decision,
        "touchpoints": touchpoints.summaries(connection, evidence.get("touchpoints", [decision["touchpoint_id"]])),
        "judged_again_after": _evidence_touchpoint(connection, evidence, "judged_again_after"),
        "merged_by": _evidence_touchpoint(connection, evidence, "merged_by"),
        "timer": {**timer, "late_follow_up": _late_follow_up(decision["actions"])} if timer else None,
        "deliveries": delivery_log.search(connection, limit=100, decision_id=decision_id, recipient=recipient, region=region),
    }


def _evidence_touchpoint(connection: Connection, evidence: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The touchpoint `evidence[key]` names, as `touchpoints` shows the others: whose late arrival made the
    decision (`judged_again_after`), or whose merge brought that one in (`merged_by`); None for a decision made
    when its own touchpoint or timer came."""
    named = evidence.get(key)
    if named is None:
        return None
    return next(iter(touchpoints.summaries(connection, [named["touchpoint_id"]])), None)


def _late_follow_up(actions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a follow-up that happened inside the timer's wait, but was taken in after it fired, withdrew (the
    channels) and why, as `timer_arming.withdraw_followed_up` recorded it on the actions' fates; None if none
    did. The timer did fire, with no follow-up in yet: without this, its line reads as if none ever came,
    above an action the follow-up withdrew."""
    withdrawn = [action for action in actions
                 if action.get("fate") == "withdrawn" and str(action.get("reason", "")).startswith(WITHDRAWN_FOLLOWED_UP)]
    if not withdrawn:
        return None
    return {"withdrew": [action["channel"] for action in withdrawn], "reason": withdrawn[0]["reason"]}
