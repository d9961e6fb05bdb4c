"""Which touchpoints a selector picks: by event name, stage and moment, and by its `where` predicates.

Rules, their index and the read-ahead of a profile's past all ask this. The
predicates are JMESPath fields compiled once (`hub.paths`), compared with
JMESPath's equality: a boolean is never a number. `matches` patterns run on the
`regex` package, bounded by `MATCH_SECONDS` of processor time each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jmespath
import regex
import structlog
from jmespath.parser import ParsedResult

from hub import paths
from hub.rule_predicates import MATCH_SECONDS, Predicate, Selector

log = structlog.get_logger(__name__)


def named(selector: Selector) -> frozenset[str] | None:
    """The event names the selector picks; None when it picks by stage or moment alone (any name may do)."""
    events = selector.events
    return None if events is None else frozenset(events)


def union_unless_open(names: Sequence[frozenset[str] | None]) -> frozenset[str] | None:
    """All these names together; None (any name) as soon as one of them is None."""
    return None if None in names else frozenset().union(*names)


def event_names(selectors: Sequence[Selector | None]) -> frozenset[str] | None:
    """The event names these selectors can select between them; None when one may select any (None selects all)."""
    return union_unless_open([None if selector is None else named(selector) for selector in selectors])


def kind(selector: Selector, event: str, stage: str | None, moment: str | None) -> bool:
    """The selector's event / stage / moment part (what the store filters on); `where` is apart."""
    events = selector.events
    return (
        (events is None or event in events)
        and (selector.stage is None or stage == selector.stage)
        and (selector.moment is None or moment == selector.moment)
    )


def selected(selector: Selector, event: str, stage: str, moment: str, document: dict[str, Any]) -> bool:
    return kind(selector, event, stage, moment) and predicates_hold(selector.where, document)


def predicates_hold(predicates: Sequence[Predicate], document: dict[str, Any]) -> bool:
    return all(_predicate(p, document) for p in predicates)


def distinct_value(path: str, document: dict[str, Any]) -> str | None:
    """The document's value of `path`, as a `count` with `distinct_by` tells values apart; None without one (a
    missing field, or a projection that picks nothing, is not a value, as for `exists`). A whole float is its
    integer, as JSON and `where`'s `eq` have them: a product id sent as 7 by one SDK and 7.0 by another is one
    product, at any depth, while true stays apart from 1; an object is the same whatever order its keys came in.
    A scalar, the usual value, costs a repr."""
    value = _field(path).search(document)
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(_whole_floats_as_ints(value), sort_keys=True, separators=(",", ":")) if _present(path, value) else None
    return repr(_whole_float_as_int(value))


def _whole_float_as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _whole_floats_as_ints(value: Any) -> Any:
    """`value` with each whole float, however deep in lists and objects, as its integer."""
    if isinstance(value, list):
        return [_whole_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole_floats_as_ints(item) for key, item in value.items()}
    return _whole_float_as_int(value)


def describe(selector: Selector) -> dict[str, Any]:
    return {key: value for key, value in (("event", selector.event), ("stage", selector.stage), ("moment", selector.moment)) if value}


@lru_cache(maxsize=1024)
def _field(path: str) -> paths.Expression:
    compiled = paths.compile(path)
    return _Lenient(compiled) if isinstance(compiled, ParsedResult) else compiled


@dataclass(frozen=True, slots=True)
class _Lenient:
    """A rule's field that jmespath interprets, read as absent where the event's data does not suit it: a
    `where` on `join(',', properties.tags)` does not hold for an event whose tags are one string, where the
    error escaped the trigger engine and the pipeline retried the event as a crash, then quarantined it."""

    parsed: ParsedResult

    def search(self, document: Any) -> Any:
        try:
            return self.parsed.search(document)
        except paths.DATA_ERRORS:
            return None


def _present(path: str, actual: Any) -> bool:
    """Whether the field is there: a projection (`properties.products[*].coupon`) that picks nothing gives `[]`
    where a plain field gives None, so `exists: true` on it held for a cart with no coupon at all. A plain field
    sent as `[]` is still there."""
    return actual is not None and not (actual == [] and _projects(path))


_PROJECTIONS = frozenset({"projection", "value_projection", "filter_projection", "flatten"})


@lru_cache(maxsize=1024)
def _projects(path: str) -> bool:
    """Whether the field's expression picks from a list or an object's values, anywhere in it."""
    pending = [jmespath.compile(path).parsed]
    while pending:
        node = pending.pop()
        if node["type"] in _PROJECTIONS:
            return True
        pending.extend(node.get("children", ()))
    return False


@lru_cache(maxsize=256)
def _pattern(expression: str) -> regex.Pattern[str]:
    return regex.compile(expression)


def _matches(predicate: Predicate, actual: Any) -> bool:
    """Whether the pattern finds `actual`, given up on as no match past `MATCH_SECONDS`. Python's `re` ran a
    pattern that backtracks for as long as it took, on a value the sender chose (40 characters: days), holding
    the GIL: ingest stalled with it, and the pipeline retried the event after each lease. `regex` lets other
    threads run while it matches."""
    if not isinstance(actual, str):
        return False
    try:
        return _pattern(predicate.value).search(actual, timeout=MATCH_SECONDS) is not None
    except TimeoutError:
        _given_up(predicate)
        return False


_GIVEN_UP: set[tuple[str, str]] = set()


def _given_up(predicate: Predicate) -> None:
    """Logged once per rule and pattern: every event may bring such a value, and ops need the line, not a flood."""
    key = (predicate.rule, predicate.value)
    if key not in _GIVEN_UP:
        _GIVEN_UP.add(key)
        log.warning("a `matches` pattern took too long and was counted as no match; rewrite it so it cannot "
                    "backtrack (no repeated group that can match the same text two ways, as in `(a|aa)+`)",
                    rule=predicate.rule, field=predicate.field, pattern=predicate.value, limit_seconds=MATCH_SECONDS)


def _predicate(predicate: Predicate, document: dict[str, Any]) -> bool:
    """Whether the document's value at the predicate's field passes it. Booleans are not numbers here (as in
    JMESPath, unlike Python): `true` neither equals 1 nor is greater than 0."""
    actual = _field(predicate.field).search(document)
    expected = predicate.value
    ordered = actual is not None and not isinstance(actual, bool) and not isinstance(expected, bool)
    try:
        match predicate.op:
            case "exists":
                return _present(predicate.field, actual) == (expected is not False)
            case "eq":
                return paths.equals(actual, expected)
            case "ne":
                return not paths.equals(actual, expected)
            case "gt":
                return ordered and actual > expected
            case "gte":
                return ordered and actual >= expected
            case "lt":
                return ordered and actual < expected
            case "lte":
                return ordered and actual <= expected
            case "in":
                return any(paths.equals(actual, item) for item in expected)
            case "matches":
                return _matches(predicate, actual)
    except TypeError:  # comparing a string with a number, say: the predicate simply does not hold
        return False
    raise ValueError(f"unknown operator {predicate.op!r}")
