"""Stage 3: which micro-moment rules a touchpoint fires.

Rules are evaluated by event time, not wall-clock time, so replaying history
makes the same decisions it made the first time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

import jmespath

from hub.model import Action, Decision, Touchpoint, derived_id
from hub.rules import (
    AllCondition,
    AnyCondition,
    Condition,
    EventCondition,
    NotCondition,
    Predicate,
    RecentCondition,
    RuleSpec,
)


class History(Protocol):
    """What rules may ask about a profile's past; the pipeline answers from the store."""

    def count_events(self, profile_id: str, event: str, since: datetime, until: datetime, exclude_id: str) -> int: ...

    def decisions_since(self, profile_id: str, rule_id: str, since: datetime) -> int: ...


def evaluate(touchpoint: Touchpoint, profile_id: str, rules: Sequence[RuleSpec], history: History) -> list[Decision]:
    decided: list[Decision] = []
    document = touchpoint.as_document()
    for rule in rules:
        evidence: dict[str, Any] = {}
        if not _holds(rule.when, touchpoint, document, profile_id, history, evidence):
            continue
        if rule.cap and history.decisions_since(profile_id, rule.id, touchpoint.occurred_at - rule.cap.within) >= rule.cap.max:
            continue
        decided.append(
            Decision(
                decision_id=derived_id("decision", rule.id, touchpoint.touchpoint_id),
                rule_id=rule.id,
                rule_version=rule.version,
                profile_id=profile_id,
                touchpoint_id=touchpoint.touchpoint_id,
                decided_at=touchpoint.occurred_at,
                actions=tuple(Action(action.channel, action.template, action.params) for action in rule.respond),
                variables=rule.vars,
                evidence={"touchpoint_event": touchpoint.event, **evidence},
            )
        )
    return decided


def _holds(
    condition: Condition,
    touchpoint: Touchpoint,
    document: dict[str, Any],
    profile_id: str,
    history: History,
    evidence: dict[str, Any],
) -> bool:
    match condition:
        case EventCondition(event=event, where=where):
            return touchpoint.event == event and all(_predicate(p, document) for p in where)
        case RecentCondition(recent=window):
            seen = history.count_events(
                profile_id, window.event, touchpoint.occurred_at - window.within, touchpoint.occurred_at,
                touchpoint.touchpoint_id,
            )
            evidence.setdefault("recent", []).append({"event": window.event, "within_seconds": window.within.total_seconds(), "seen": seen})
            return seen >= window.at_least
        case AllCondition(all=parts):
            return all(_holds(part, touchpoint, document, profile_id, history, evidence) for part in parts)
        case AnyCondition(any=parts):
            return any(_holds(part, touchpoint, document, profile_id, history, evidence) for part in parts)
        case NotCondition(not_=inner):
            return not _holds(inner, touchpoint, document, profile_id, history, {})
    raise TypeError(f"unknown condition {condition!r}")


@lru_cache(maxsize=1024)
def _field(path: str) -> jmespath.parser.ParsedResult:
    return jmespath.compile(path)


def _predicate(predicate: Predicate, document: dict[str, Any]) -> bool:
    actual = _field(predicate.field).search(document)
    expected = predicate.value
    try:
        match predicate.op:
            case "exists":
                return (actual is not None) == (expected is not False)
            case "eq":
                return actual == expected
            case "ne":
                return actual != expected
            case "gt":
                return actual is not None and actual > expected
            case "gte":
                return actual is not None and actual >= expected
            case "lt":
                return actual is not None and actual < expected
            case "lte":
                return actual is not None and actual <= expected
            case "in":
                return actual in expected
            case "matches":
                return isinstance(actual, str) and re.search(str(expected), actual) is not None
    except TypeError:  # comparing a string with a number, say: the predicate simply does not hold
        return False
    raise ValueError(f"unknown operator {predicate.op!r}")
