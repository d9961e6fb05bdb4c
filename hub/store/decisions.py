"""Decisions: which rule fired for whom, why, and what became of each action."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, select, update

from hub.model import Decision
from hub.store.keyset import Key, Keyset
from hub.store.schema import UTCDateTime, decisions, deliveries
from hub.store.precompiled import InLists, Precompiled
from hub.store.sql import NewRows

FIRED = ("fired", "unreached")  # the rule held; only `fired` ones reached the person, and rule caps count those
# A pipeline batch stamps its decisions with one `created_at`: the newest decided first among them.
PAGES = Keyset("decisions", (decisions.c.created_at, decisions.c.decided_at, decisions.c.decision_id))  # ix_decisions_created

# Precompiled: every capped rule asks this on every decision, and SQLAlchemy's work per execution
# costs more than SQLite's.
_DECIDED_BETWEEN = Precompiled(select(decisions.c.decided_at).where(
    decisions.c.profile_id == bindparam("profile_id"), decisions.c.rule_id == bindparam("rule_id"),
    decisions.c.decided_at > bindparam("since", type_=UTCDateTime), decisions.c.decided_at < bindparam("until", type_=UTCDateTime),
    decisions.c.status == "fired",
))


def decided_between(connection: Connection, profile_id: str, rule_id: str, since: datetime, until: datetime) -> list[datetime]:
    """When a rule's decisions for a profile between two times (both excluded) that reached the person were
    made: frequency caps need the times, not only how many, to tell which spans of their window they fill."""
    rows = _DECIDED_BETWEEN.execute(connection, {"profile_id": profile_id, "rule_id": rule_id, "since": since, "until": until})
    return [decided_at for (decided_at,) in rows]


_FIRED_SINCE = InLists(  # the timer engine asks it for every set it fires
    lambda profiles, rules: select(decisions.c.profile_id, decisions.c.rule_id, decisions.c.decided_at).where(
        decisions.c.profile_id.in_(profiles), decisions.c.rule_id.in_(rules),
        decisions.c.decided_at > bindparam("since", type_=UTCDateTime), decisions.c.status == "fired",
    )
)


def fired_since(
    connection: Connection, profile_ids: Collection[str], rule_ids: Collection[str], since: datetime
) -> dict[tuple[str, str], list[datetime]]:
    """When each of these rules fired and reached the person (not capped, not unreached) for each of these profiles since a time, by (profile, rule).

    `decided_between` for many profiles and rules in one statement: the timer engine
    answers every frequency cap of a set of timers from it.
    """
    fired: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for profile_id, rule_id, decided_at in _FIRED_SINCE.execute(connection, profile_ids, rule_ids, since=since):
        fired[profile_id, rule_id].append(decided_at)
    return dict(fired)


_RECORD = NewRows(decisions.c.decision_id)  # every pipeline batch and timer set that decides


def record(connection: Connection, recorded: Sequence[tuple[Decision, list[dict[str, Any]]]], now: datetime) -> set[str]:
    """Store decisions (each with its actions' fates) in one insert; returns the ids that were new.

    A deterministic id that exists already means the touchpoint or timer was processed again: not new.
    """
    rows = [
        {
            "decision_id": decision.decision_id,
            "rule_id": decision.rule_id,
            "rule_version": decision.rule_version,
            "profile_id": decision.profile_id,
            "touchpoint_id": decision.touchpoint_id,
            "decided_at": decision.decided_at,
            "created_at": now,
            "evidence": decision.evidence,
            "actions": action_fates,
            "status": decision.status,
        }
        for decision, action_fates in recorded
    ]
    return _RECORD(connection, rows)


def count_by_rule(connection: Connection) -> dict[str, int]:
    """Decisions that fired, whether or not they reached the person (capped ones are kept for explanation, not
    counted)."""
    query = select(decisions.c.rule_id, func.count()).where(decisions.c.status.in_(FIRED)).group_by(decisions.c.rule_id)
    return dict(connection.execute(query).all())


def replace_fate(connection: Connection, row: dict[str, Any], delivery_id: str, fates: list[dict[str, Any]]) -> None:
    """The decision's (`row`, as `get` gives it) record of one delivery replaced by `fates`: that it fell back,
    then its fallbacks' (`Responder.fall_back`)."""
    at = next(number for number, fate in enumerate(row["actions"]) if fate.get("delivery_id") == delivery_id)
    actions = [*row["actions"][:at], *fates, *row["actions"][at + 1:]]
    connection.execute(update(decisions).where(decisions.c.decision_id == row["decision_id"]).values(actions=actions))


def unreached_unless_going(connection: Connection, delivery_id: str) -> None:
    """The fired decision of a delivery that failed or was withdrawn `unreached` when none of its deliveries is
    left that may go or may have gone: one whose last failed and whose fallbacks found no way reached nobody,
    and spends none of the rule's cap, as routing records one that planned nothing (`Responder.route`). Any
    other delivery keeps it `fired`: a CRM note too, as at routing (a backfill would write a note per event past
    the cap)."""
    of_delivery = select(deliveries.c.decision_id).where(deliveries.c.delivery_id == delivery_id).scalar_subquery()
    going = exists().where(deliveries.c.decision_id == decisions.c.decision_id, deliveries.c.status != "failed")
    connection.execute(
        update(decisions).where(decisions.c.decision_id == of_delivery, decisions.c.status == "fired", ~going)
        .values(status="unreached")
    )


def get(connection: Connection, decision_id: str) -> dict[str, Any] | None:
    row = connection.execute(select(decisions).where(decisions.c.decision_id == decision_id)).mappings().first()
    return dict(row) if row else None


def search(
    connection: Connection, *, limit: int, profile_id: str | None = None, rule_id: str | None = None,
    after: Key | None = None,
) -> list[dict[str, Any]]:
    """Newest first (`PAGES`); `after` is the key of the last decision of the page before."""
    query = PAGES.newest_first(select(decisions), after).limit(limit)
    if profile_id:
        query = query.where(decisions.c.profile_id == profile_id)
    if rule_id:
        query = query.where(decisions.c.rule_id == rule_id)
    return [dict(row) for row in connection.execute(query).mappings()]
