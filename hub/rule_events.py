"""Which events each rule concerns: those it can hold at, arm or cancel a timer at, wait for, and look back for.

Built once per rule set (`RuleIndex`), so an event is judged only by the
rules it can concern, and a late event finds the rules it may make hold at
events stored before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from hub.rule_predicates import Selector
from hub.rules import AllCondition, AnyCondition, Condition, CountCondition, EventCondition, RecentCondition, RuleSpec, Window
from hub.selectors import event_names, kind, named, union_unless_open


@dataclass(frozen=True)
class Rejudged:
    """A rule to judge again at its own events within `within` after an event its `recent` looks for: that
    event arrived after them (a shop's order webhook behind the help desk's ticket)."""

    rule: RuleSpec
    at_events: frozenset[str]
    within: timedelta


class RuleIndex:
    """The rules, by priority, that an event of each name can make hold, arm or cancel; built once per rule set.

    With a hundred rules most of them name events a touchpoint is not, so
    evaluating only the rules its event can match saves walking every
    condition tree on every event. Rules whose conditions do not pin the
    event name (`stage`/`moment` selectors, `recent` alone, `not`, `any`
    over unnamed parts, absence waiting for `any` event) go to every event.
    """

    def __init__(self, rules: Sequence[RuleSpec]) -> None:
        pinned = {rule.id: _trigger_events(rule) for rule in rules}
        self._unpinned = tuple(rule for rule in rules if pinned[rule.id] is None)
        events = set().union(*(names for names in pinned.values() if names is not None))
        self._by_event = {event: tuple(rule for rule in rules if _may_match(pinned[rule.id], event)) for event in events}
        rejudged: dict[str, list[Rejudged]] = {}
        by_kind: list[tuple[Window, Rejudged]] = []  # evidence picked by stage or moment, whatever its name
        for rule in rules:
            at_events = pinned[rule.id]
            if rule.absence is not None or at_events is None:
                continue  # an absence is judged when its timer comes due; an unpinned rule has no events to look for
            for window in _evidence_windows(rule.when):
                entry = Rejudged(rule, at_events, window.within)
                names = named(window)
                if names is None:
                    by_kind.append((window, entry))
                for name in names or ():
                    rejudged.setdefault(name, []).append(entry)
        self._rejudged = {name: tuple(entries) for name, entries in rejudged.items()}
        self._rejudged_by_kind = tuple(by_kind)
        self._longest_window = max(
            [entry.within for entries in rejudged.values() for entry in entries] + [entry.within for _, entry in by_kind],
            default=None,
        )

    def for_event(self, event: str) -> tuple[RuleSpec, ...]:
        return self._by_event.get(event, self._unpinned)

    def longest_evidence_window(self) -> timedelta | None:
        """How far back any rule's `recent` looks for evidence, if any does: a merge's evidence reaches that far."""
        return self._longest_window

    def rejudged_by(self, event: str, stage: str | None, moment: str | None) -> tuple[Rejudged, ...]:
        """The rules a late event of this name (stage, moment) may now make hold at events stored before it
        (`triggers.rejudge`)."""
        named_here = self._rejudged.get(event, ())
        if not self._rejudged_by_kind:
            return named_here
        return named_here + tuple(entry for window, entry in self._rejudged_by_kind if kind(window, event, stage, moment))


def _evidence_windows(condition: Condition) -> Iterator[Window]:
    """The `recent` windows that must find events for the condition to hold; not those under a `not`: evidence
    arriving late there would take back a message already sent."""
    match condition:
        case RecentCondition(recent=window):
            yield window
        case AllCondition(all=parts) | AnyCondition(any=parts):
            for part in parts:
                yield from _evidence_windows(part)


def _trigger_events(rule: RuleSpec) -> frozenset[str] | None:
    """Event names a touchpoint needs for the rule to hold at it, arm or cancel its timer; None: any name may."""
    absence = rule.absence
    if absence is None:
        return _required_events(rule.when)
    after, without = named(absence.after), event_names([awaited(rule)])
    return None if after is None or without is None else after | without


def _required_events(condition: Condition) -> frozenset[str] | None:
    """Event names the evaluated touchpoint must have for the condition to hold; None when it does not say."""
    match condition:
        case EventCondition():
            return named(condition)
        case CountCondition(count=window):
            return named(window)
        case AllCondition(all=parts):
            pinned = [names for names in map(_required_events, parts) if names is not None]
            return frozenset.intersection(*pinned) if pinned else None
        case AnyCondition(any=parts):
            return union_unless_open([_required_events(part) for part in parts])
    return None


def _may_match(names: frozenset[str] | None, event: str) -> bool:
    return names is None or event in names


def awaited(rule: RuleSpec) -> Selector | None:
    """The follow-up an absence rule waits for; None when any action of the profile will do."""
    assert rule.absence is not None, f"rule {rule.id} has no absence condition"
    without = rule.absence.without
    return None if without == "any" else without
