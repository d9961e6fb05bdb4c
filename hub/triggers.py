"""Stage 3: which micro-moment rules a touchpoint fires, and which absence timers it arms or cancels.

Rules are evaluated by event time, not wall-clock time, so replaying history
makes the same decisions it made the first time. Everything here is pure: the
profile's past comes through `History`, and timers are returned as changes
for the caller to store.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hub.daily_cap import has_room
from hub.model import Action, Decision, Touchpoint, WaitEnded, ordered_id
from hub.rule_events import Rejudged, awaited
from hub.rule_history import History, read_ahead, selector_of
from hub.rules import (
    ACTION_KINDS,
    AbsenceCondition,
    ActionSpec,
    AllCondition,
    AnyCondition,
    Condition,
    CountCondition,
    CountWindow,
    EventCondition,
    NotCondition,
    RecentCondition,
    RuleSpec,
)
from hub.rule_predicates import Selector
from hub.selectors import describe, distinct_value, predicates_hold, selected


@dataclass(frozen=True)
class TimerChanges:
    """What a touchpoint does to absence timers: rules whose timers it cancels, and timers it arms."""

    cancel: tuple[tuple[str, timedelta], ...]  # (rule id, its wait): only waits still running at the touchpoint end
    arm: tuple[tuple[str, datetime], ...]  # (rule id, due at)
    versions: Mapping[str, str] = field(default_factory=dict)  # rule id -> version, of the rules in `arm`


def document_for(touchpoint: Touchpoint, traits: Mapping[str, Any]) -> dict[str, Any]:
    """What predicates see: the touchpoint document plus the profile's traits under `profile`."""
    return {**touchpoint.as_document(), "profile": dict(traits)}


def evaluate(
    touchpoint: Touchpoint,
    profile_id: str,
    rules: Sequence[RuleSpec],
    history: History,
    traits: Mapping[str, Any] | None = None,
    as_arrived: bool = False,
) -> list[Decision]:
    """Decisions of the rules that hold at this touchpoint (absence rules decide later, from their timers).

    `as_arrived`: judged again (`rejudge`), as when it arrived: a `count` span ends at it, so events taken in
    after it, which were judged themselves, do not make it hold a second time.
    """
    decided: list[Decision] = []
    document = document_for(touchpoint, traits or {})
    deciding = [rule for rule in rules if rule.absence is None]
    past = read_ahead(history, profile_id, touchpoint.occurred_at, [window for rule in deciding for window in rule.windows])
    for rule in deciding:
        judge = _Judge(touchpoint, document, profile_id, past, traits or {}, touchpoint.occurred_at if as_arrived else None)
        if not judge.holds(rule.when):
            continue
        # Where a count's span ends when this late touchpoint completed it, as in order; else at the touchpoint.
        decision = _decide(rule, judge, touchpoint, profile_id, judge.looking_back_from)
        if decision is not None:
            decided.append(decision)
    return decided


def past_of(
    touchpoint: Touchpoint, profile_id: str, rules: Sequence[RuleSpec], rejudged: Sequence[Rejudged], history: History
) -> History:
    """The profile's past as `evaluate` and then `rejudge` ask it at this touchpoint, in one read (a rejudged
    event's own windows, further back, are read when it is judged)."""
    windows = [window for rule in rules if rule.absence is None for window in rule.windows]
    return read_ahead(history, profile_id, touchpoint.occurred_at, windows, [(entry.at_events, entry.within) for entry in rejudged])


def rejudge(
    evidence: Touchpoint,
    profile_id: str,
    rejudged: Sequence[Rejudged],
    history: History,
    stored: Callable[[Sequence[str]], Mapping[str, Touchpoint]],
    traits: Mapping[str, Any] | None = None,
    after: Touchpoint | None = None,
) -> Iterator[tuple[Touchpoint, Decision]]:
    """Decisions this late-arriving event makes hold at the profile's events at or after it, within the windows
    that look for it: a ticket taken in before the order that qualifies it is judged again once the order is in.

    Each is judged as when it arrived, with the late event beside it, and
    under the id the rule and that event give, so one already made is not
    made twice. They come oldest first and one at a time: the caller records
    each before the next is judged, so the rule's cap counts it. The profile
    is judged as it is now (its traits then are not kept), as timers are.
    `stored` reads touchpoints by id. `after`: only events after this one
    (a merge's: events before it were someone else's when they happened).
    """
    if not rejudged:
        return
    at_events = frozenset().union(*(entry.at_events for entry in rejudged))
    until = evidence.occurred_at + max(entry.within for entry in rejudged)
    since, passed = (evidence.occurred_at, {evidence.touchpoint_id}) if after is None else (
        max(evidence.occurred_at, after.occurred_at), {evidence.touchpoint_id, after.touchpoint_id})
    later = [
        doc for doc in history.events(profile_id, since, until, selector_of(at_events))
        if doc["touchpoint_id"] not in passed  # at its instant too: a window's edge holds it
    ]
    if not later:
        return
    found = stored([doc["touchpoint_id"] for doc in later])
    for doc in later:  # oldest first, as the store gives them
        touchpoint = found.get(doc["touchpoint_id"])
        if touchpoint is None:
            continue
        at = touchpoint.occurred_at
        rules = [entry.rule for entry in rejudged if touchpoint.event in entry.at_events and at <= evidence.occurred_at + entry.within]
        for decision in evaluate(touchpoint, profile_id, rules, history, traits, as_arrived=True):
            decision.evidence["judged_again_after"] = {"touchpoint_id": evidence.touchpoint_id, "event": evidence.event}
            yield touchpoint, decision


def timer_changes(touchpoint: Touchpoint, rules: Sequence[RuleSpec], traits: Mapping[str, Any] | None = None) -> TimerChanges:
    """Timers this touchpoint cancels (it is the awaited follow-up) and arms (it starts a wait)."""
    document = document_for(touchpoint, traits or {})
    cancel: list[tuple[str, timedelta]] = []
    arm: list[tuple[str, datetime]] = []
    versions: dict[str, str] = {}
    for rule in rules:
        absence = rule.absence
        if absence is None:
            continue
        if absence.without == "any":
            if touchpoint.kind in ACTION_KINDS:
                cancel.append((rule.id, absence.within))
        elif selected(absence.without, touchpoint.event, touchpoint.stage, touchpoint.moment, document):
            cancel.append((rule.id, absence.within))
        if selected(absence.after, touchpoint.event, touchpoint.stage, touchpoint.moment, document):
            arm.append((rule.id, touchpoint.occurred_at + absence.within))
            versions[rule.id] = rule.version
    return TimerChanges(tuple(cancel), tuple(arm), versions)


def starts_wait(rule: RuleSpec, anchor: Touchpoint, traits: Mapping[str, Any]) -> bool:
    """Whether the rule (as in force now: it may have been edited since the timer was armed) starts a wait at
    this touchpoint."""
    assert rule.absence is not None, f"rule {rule.id} has no absence condition"
    return selected(rule.absence.after, anchor.event, anchor.stage, anchor.moment, document_for(anchor, traits))


def evaluate_expired(
    rule: RuleSpec,
    anchor: Touchpoint,
    profile_id: str,
    due_at: datetime,
    history: History,
    traits: Mapping[str, Any] | None = None,
) -> Decision | WaitEnded:
    """The decision of an absence rule whose timer ran out, or how the wait ended without one, and why:
    `cancelled`, the follow-up came after all (which); `lapsed`, the rule's other conditions (the first that
    fails), or every action's `only_if`, no longer hold. (The timer engine tells `superseded` itself, from the
    timers: `hub.store.timers.ended_by_neighbours`.)

    The follow-up is looked for again here, by event time in (anchor, due], so a
    follow-up that arrived late or raced the timer still prevents the message.
    """
    absence = rule.absence
    assert absence is not None, f"rule {rule.id} has no absence condition"
    if (follow_up := _follow_up(rule, anchor, profile_id, due_at, history, traits or {})) is not None:
        return WaitEnded.followed_up(follow_up)
    judge = _Judge(anchor, document_for(anchor, traits or {}), profile_id, history, traits or {}, judged_at=due_at)
    judge.evidence["absence"] = {"after": anchor.event, "within_seconds": absence.within.total_seconds(), "due_at": due_at.isoformat()}
    if (failing := next((part for part in rule.fire_time_conditions if not judge.holds(part)), None)) is not None:
        return WaitEnded("lapsed", f"fire-time conditions no longer hold: {_written(failing)}")
    return _decide(rule, judge, anchor, profile_id, due_at) or WaitEnded("lapsed", "no action's only_if holds")


def _written(condition: Condition) -> str:
    """A condition as the rule's author wrote it (durations in ISO 8601), for a timer's reason to name it."""
    return json.dumps(condition.model_dump(mode="json", by_alias=True, exclude_unset=True))


def _follow_up(
    rule: RuleSpec, anchor: Touchpoint, profile_id: str, due_at: datetime, history: History, traits: Mapping[str, Any]
) -> str | None:
    """The touchpoint id of the event an absence rule waits for (None: any action, `ACTION_KINDS`) that
    happened after its anchor, by `due_at` (event time), if one did."""
    selector = awaited(rule)
    profile = {"profile": dict(traits)}
    return next((
        doc["touchpoint_id"]
        for doc in history.events(profile_id, anchor.occurred_at, due_at, selector)
        if doc["touchpoint_id"] != anchor.touchpoint_id
        and datetime.fromisoformat(doc["occurred_at"]) > anchor.occurred_at
        and (
            doc["kind"] in ACTION_KINDS if selector is None
            else selected(selector, doc["event"], doc["stage"], doc["moment"], {**doc, **profile})
        )
    ), None)


def _decide(rule: RuleSpec, judge: "_Judge", touchpoint: Touchpoint, profile_id: str, decided_at: datetime) -> Decision | None:
    taken = [(spec, predicates_hold(spec.only_if, judge.document)) for spec in rule.respond]
    actions = tuple(_action(spec) for spec, take in taken if take)
    if not actions:
        return None
    status = "fired"
    evidence: dict[str, Any] = {"touchpoint_event": touchpoint.event, **judge.evidence}
    left_out = [spec.channel for spec, take in taken if not take]
    if left_out:  # explain shows why the rule's other actions are missing
        evidence["only_if_left_out"] = left_out
    evidence["touchpoints"] = [touchpoint.touchpoint_id, *[t for t in judge.touchpoints if t != touchpoint.touchpoint_id]]
    # Decisions on either side count (a later one made first, its event having arrived first, too): capped
    # exactly when some span of the window that holds this one would then hold more than `max`: with at most
    # 2 an hour, decisions at 0 and 90 minutes leave room for one at 45, as in-order arrival would have it.
    if rule.cap and not has_room(
        judge.history.decided_between(profile_id, rule.id, decided_at - rule.cap.within, decided_at + rule.cap.within),
        decided_at, rule.cap.max, period=rule.cap.within,
    ):
        status = "capped"
        evidence["cap"] = {"max": rule.cap.max, "within_seconds": rule.cap.within.total_seconds()}
    return Decision(
        decision_id=ordered_id(decided_at, "decision", rule.id, touchpoint.touchpoint_id),
        rule_id=rule.id,
        rule_version=rule.version,
        profile_id=profile_id,
        touchpoint_id=touchpoint.touchpoint_id,
        decided_at=decided_at,
        actions=actions,
        variables=rule.vars,
        evidence=evidence,
        status=status,
        urgency=rule.urgency,
    )


def _action(spec: ActionSpec) -> Action:
    return Action(
        channel=spec.channel,
        template=spec.template,
        params=spec.params,
        delay=spec.delay,
        fields=spec.fields,
        endpoint=spec.endpoint,
        fallback=tuple((alt.channel, alt.template) for alt in spec.fallback),
    )


class _Judge:
    """Evaluates one rule's condition tree at one touchpoint, collecting the evidence as it goes."""

    def __init__(
        self,
        touchpoint: Touchpoint,
        document: dict[str, Any],
        profile_id: str,
        history: History,
        traits: Mapping[str, Any],
        judged_at: datetime | None = None,
    ) -> None:
        """`judged_at`: the moment the rule is judged at, when the touchpoint's time alone does not say it: a
        timer's due time ("no order in the last day" by the time the nudge would go; what happened after the
        wait ended must not decide it), or the touchpoint's own when it is judged again as it arrived
        (`rejudge`). `recent` windows look back from it, and `count` spans reach no further."""
        self.touchpoint = touchpoint
        self.judged_at = judged_at
        self.looking_back_from = judged_at or touchpoint.occurred_at
        self.document = document
        self.profile_id = profile_id
        self.history = history
        self.traits = traits
        self.evidence: dict[str, Any] = {}
        self.touchpoints: list[str] = []

    def holds(self, condition: Condition) -> bool:
        """Whether the condition holds; if not, the touchpoints its parts added are taken back out, so the
        evidence names only what satisfied the rule (an `any` that held through its second branch does not
        list the first branch's half-met `all`), and a count's span they moved the look-back to is forgotten.
        The checks' own evidence stays: it says why a part failed."""
        kept, looking_back_from = len(self.touchpoints), self.looking_back_from
        if self._holds(condition):
            return True
        del self.touchpoints[kept:]
        self.looking_back_from = looking_back_from
        return False

    def _holds(self, condition: Condition) -> bool:
        tp = self.touchpoint
        match condition:
            case EventCondition():
                return selected(condition, tp.event, tp.stage, tp.moment, self.document)
            case RecentCondition(recent=window):
                found = self._window(window, self.looking_back_from - window.within, self.looking_back_from)
                self.evidence.setdefault("recent", []).append(
                    {**describe(window), "within_seconds": window.within.total_seconds(), "seen": len(found)}
                )
                if len(found) >= window.at_least:
                    self.touchpoints.extend(doc["touchpoint_id"] for doc in found)
                    return True
                return False
            case CountCondition(count=window):
                if not selected(window, tp.event, tp.stage, tp.moment, self.document):
                    return False
                found, seen, ends_at = self._fullest_span(window)
                self.evidence.setdefault("count", []).append(
                    {**describe(window), "within_seconds": window.within.total_seconds(), "seen": seen,
                     "distinct_by": window.distinct_by}
                )
                if seen >= window.at_least:
                    self.touchpoints.extend(doc["touchpoint_id"] for doc in found)
                    # A span that ends after this touchpoint (its events came in out of order) is judged where
                    # it ends: in order, the rule would have been judged at its last event.
                    self.looking_back_from = max(self.looking_back_from, ends_at)
                    return True
                return False
            case AllCondition(all=parts):
                # Counts first, so the `recent` windows beside them look back from where the count's span ends.
                return all(self.holds(part) for part in sorted(parts, key=lambda part: not isinstance(part, CountCondition)))
            case AnyCondition(any=parts):
                return any(self.holds(part) for part in parts)
            case NotCondition(not_=inner):
                inner_judge = _Judge(tp, self.document, self.profile_id, self.history, self.traits, self.judged_at)
                inner_judge.looking_back_from = self.looking_back_from
                return not inner_judge.holds(inner)
            case AbsenceCondition():
                raise ValueError("absence conditions are decided by their timers, not evaluated inline")
        raise TypeError(f"unknown condition {condition!r}")

    def _fullest_span(self, window: CountWindow) -> tuple[list[dict[str, Any]], int, datetime]:
        """The matching touchpoints, this one first, in the span `within` long around it that holds the most;
        how many that is (distinct values, with `distinct_by`); and when the span's last one happened.

        Spans end after it too: events arrive out of order (an SDK flushing
        a batch late, a retry), and two views a minute apart make a
        comparison whichever is taken in first. In order, nothing later is
        stored yet, and this is the span that ends at the touchpoint. One
        pass of two pointers over the events by time: a busy profile's long
        window costs its sort, not a count per span.
        """
        tp, within = self.touchpoint, window.within
        reach = tp.occurred_at + within if self.judged_at is None else min(tp.occurred_at + within, self.judged_at)
        others = self._window(window, tp.occurred_at - within, reach)
        if not others:  # the usual case: this one alone
            alone = distinct_value(window.distinct_by, self.document) if window.distinct_by else tp.touchpoint_id
            return [self.document], int(alone is not None), tp.occurred_at
        timed = sorted(
            [(tp.occurred_at, self.document), *((datetime.fromisoformat(doc["occurred_at"]), doc) for doc in others)],
            key=lambda timed_doc: timed_doc[0],
        )
        values = [distinct_value(window.distinct_by, doc) if window.distinct_by else doc["touchpoint_id"] for _, doc in timed]
        held: Counter[str] = Counter()
        best, best_seen, end = (0, 0), -1, 0
        for start, (started_at, _) in enumerate(timed):
            if started_at > tp.occurred_at:
                break  # every span from here on leaves this touchpoint out
            while end < len(timed) and timed[end][0] <= started_at + within:
                held.update([values[end]] if values[end] is not None else [])
                end += 1
            if len(held) > best_seen:
                best, best_seen = (start, end), len(held)
            if values[start] is not None:
                held[values[start]] -= 1
                if not held[values[start]]:
                    del held[values[start]]
        span = timed[best[0]:best[1]]
        found = [self.document, *(doc for _, doc in span if doc is not self.document)]
        return found, best_seen, span[-1][0]

    def _window(self, selector: Selector, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """Other matching touchpoints of the profile in [since, until]."""
        tp = self.touchpoint
        documents = self.history.events(self.profile_id, since, until, selector)
        profile = {"profile": dict(self.traits)}
        found = [{**doc, **profile} for doc in documents if doc["touchpoint_id"] != tp.touchpoint_id]
        return [doc for doc in found if predicates_hold(selector.where, doc)]


