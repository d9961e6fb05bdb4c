"""The trigger rule language, as validated data (never `eval`).

`mappings/triggers.yaml` is parsed into these models; the JSON Schema that
editors use (mappings/schema/triggers.schema.json) is generated from them.

A condition is one of:
- an event *selector* (`event` / `stage` / `moment` + `where` predicates): the touchpoint being evaluated matches;
- `count`: at least N matching events (optionally distinct by a field) within a sliding window ending now;
- `recent`: the profile had a matching event within a duration before this one;
- `absence`: an event not followed by another (or by anything) within a duration, kept as a durable timer;
- `all` / `any` / `not` over other conditions.

The schema carries every rule JSON Schema can state (what a selector must
name, which operators need which values, where an `absence` may stand, that
numbers and switches are not text); a few are the loader's alone and are
named in the schema's descriptions: unique rule ids, JMESPath expressions,
regular expressions and CRM field templates that compile, durations of at
most a century.
tests/test_rule_schema.py holds the two to the same cases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    field_validator,
    model_validator,
)

from hub.config_files import load_model
from hub.durations import LONGEST, Duration, PositiveDuration
from hub.mapping import Stage, check_expression
from hub.rule_predicates import Predicate, Selector, Strict, WholeNumber
from hub.templates import compiles

class EventCondition(Selector):
    """The touchpoint being evaluated is selected (e.g. `{event: Ticket Submitted}` or `{moment: cart_activity}`)."""


class Window(Selector):
    within: PositiveDuration
    at_least: WholeNumber = Field(1, ge=1)


class RecentCondition(Strict):
    """The profile had `at_least` matching events within `within` before the touchpoint (by event time)."""

    recent: Window


class CountWindow(Window):
    distinct_by: str | None = Field(
        None, description="JMESPath; count distinct values of it instead of events. The hub refuses one that does not compile."
    )

    _distinct_by_compiles = field_validator("distinct_by")(lambda value: value and check_expression(value))


class CountCondition(Strict):
    """The touchpoint matches and, with it, `at_least` matching events fall within `within` of each other (by
    event time, whichever order they arrive in)."""

    count: CountWindow


# What a person does. Identify, alias and group say who they are; `system` is what mappings call events sent
# about them (a CRM's sync, an SDK's own lifecycle events such as Application Backgrounded).
ACTION_KINDS = frozenset({"track", "page", "screen"})


class AbsenceSpec(Strict):
    after: Selector
    without: Selector | Literal["any"] = Field(
        description="The event that cancels the timer, or `any` action of the profile: a track, page or screen "
        "(identify, alias and group calls say who someone is, not what they did; events a mapping gives kind "
        "`system`, such as a CRM's sync or an SDK's Application Backgrounded, are not the person's doing)."
    )
    within: PositiveDuration


class AbsenceCondition(Strict):
    """`after` happened and `without` did not follow within `within`: a durable timer decides when it runs out.

    Allowed as the whole `when`, or once inside a top-level `all` whose other
    members are checked when the timer fires: event selectors against the
    `after` touchpoint, `recent` windows back from the end of the wait (a
    purchase made during it counts), `count` windows around the touchpoint.
    """

    absence: AbsenceSpec


class AllCondition(Strict):
    all: list["NestedCondition"] = Field(min_length=1)


class AnyCondition(Strict):
    any: list["NestedCondition"] = Field(min_length=1)


class NotCondition(Strict):
    not_: "NestedCondition" = Field(alias="not")


class TopAllCondition(AllCondition):
    """A rule's whole `when` as an `all`: the one place, besides the whole `when`, where an `absence` may stand."""

    all: list["TopMember"] = Field(
        min_length=1,
        description="At most one member may be an `absence`.",
        json_schema_extra={"contains": {"type": "object", "required": ["absence"]}, "minContains": 0, "maxContains": 1},
    )

    @field_validator("all")
    @classmethod
    def _one_absence(cls, parts: list[Any]) -> list[Any]:
        if sum(isinstance(part, AbsenceCondition) for part in parts) > 1:
            raise ValueError("a rule may hold one `absence`")
        return parts


_CONDITION_KEYS = {
    "recent": RecentCondition, "count": CountCondition, "absence": AbsenceCondition,
    "all": AllCondition, "any": AnyCondition, "not": NotCondition,
}


def _condition_kind(value: Any) -> str:
    """Which kind of condition `value` is, by its key (`recent`, `count`, ... or else an event selector).

    Told which member of the union to try, pydantic reports that member's
    errors alone: a typo in one `where` used to bring a dozen lines about
    every other kind of condition missing its key.
    """
    if isinstance(value, dict):
        return next((key for key in _CONDITION_KEYS if key in value), "event")
    return next((key for key, kind in _CONDITION_KEYS.items() if isinstance(value, kind)), "event")


def _one_of(kinds: dict[str, Any], **discriminator: Any) -> Any:
    """The union of an event selector and `kinds`, picked by `_condition_kind`."""
    return Annotated[
        Union[Annotated[EventCondition, Tag("event")], *(Annotated[kind, Tag(key)] for key, kind in kinds.items())],
        Discriminator(_condition_kind, **discriminator),
    ]


_NESTED_KINDS = {key: kind for key, kind in _CONDITION_KEYS.items() if key != "absence"}

NestedCondition = _one_of(
    _NESTED_KINDS,
    custom_error_type="absence_placement",
    custom_error_message="`absence` is allowed only as the whole `when` or directly inside its top-level `all`",
)
"""Inside `all` / `any` / `not`: any condition but an `absence` (a timer belongs to the whole rule)."""

TopMember = _one_of({**_NESTED_KINDS, "absence": AbsenceCondition})
"""A member of the top-level `all`: a nested condition or the rule's one `absence`."""

Condition = _one_of({**_CONDITION_KEYS, "all": TopAllCondition})
"""A rule's whole `when`."""


class Alternative(Strict):
    channel: str
    template: str


class ActionSpec(Strict):
    channel: str = Field(description="Channel name; mappings/routes.yaml says which destination serves it.")
    template: str = Field(description="Template file in mappings/templates/.")
    only_if: list[Predicate] = Field(
        default_factory=list, description="Predicates on the triggering touchpoint, e.g. only on mobile devices."
    )
    delay: Duration | None = Field(
        None, description=f"Send this long after the decision instead of at once (at most {LONGEST.days}d: the hub "
        "refuses a longer one)."
    )
    fields: dict[str, Annotated[Any, AfterValidator(compiles)]] = Field(
        default_factory=dict,
        description="CRM fields to set; string values are templates (e.g. '{{ touchpoint.moment }}'), which the "
        "hub refuses if they do not compile. A value that renders blank (a null trait renders as nothing) is left "
        "out, so it never blanks what the CRM holds; write null to clear a field.",
    )
    endpoint: str | None = Field(
        None,
        description="For webhook channels: a name the receiver routes the message on, sent signed in the body as "
        "`data.params.endpoint` (e.g. chat_widget). The URL is the channel's destination's "
        "(HUB_OUTBOUND_WEBHOOK_URL, HUB_CHAT_WEBHOOK_URL), not chosen by this name.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Other destination-specific values.")
    fallback: list[Alternative] = Field(
        default_factory=list,
        description="Tried in order when this channel cannot reach the person (no recipient or consent withdrawn).",
    )

    def choices(self) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
        """(keys within the action, channel, template) of the action and then of each fallback, in the order
        routing tries them: what the checks across files look at, and where they put a problem."""
        yield (), self.channel, self.template
        for number, alternative in enumerate(self.fallback):
            yield ("fallback", number), alternative.channel, alternative.template


class Cap(Strict):
    """At most `max` decisions of this rule per profile within `within`."""

    max: WholeNumber = Field(1, ge=1)
    within: PositiveDuration

    @field_validator("max", mode="before")
    @classmethod
    def _sends_something(cls, value: Any) -> Any:
        """Before pydantic's own `ge=1` check (kept for the JSON Schema), to say what to do instead."""
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a cap of {value} would hold back every decision; to turn the rule off, set `enabled: false`")
        return value


class RuleSpec(Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    stage: Stage | None = Field(None, description="Journey stage this rule serves (filter touchpoints with a selector's `stage`).")
    moment: str | None = Field(None, description="The micro-moment this rule answers (filter with a selector's `moment`).")
    urgency: Literal["immediate", "delayed"] = Field(
        "immediate", description="`delayed` messages wait out the profile's quiet hours; `immediate` ones do not, unless an action sends later "
        "(`delay`): the person is no longer there then."
    )
    priority: WholeNumber = Field(0, description="Higher runs first; decisions of one event are planned in this order.")
    enabled: StrictBool = True
    when: Condition
    respond: list[ActionSpec] = Field(min_length=1)
    cap: Cap | None = None
    vars: dict[str, Any] = Field(default_factory=dict, description="Values templates can use, e.g. links.")

    @model_validator(mode="after")
    def _owns_its_predicates(self) -> "RuleSpec":
        """Selectors judge predicates without their rule: each is told its rule's id, for the log to name."""
        for predicate in self._predicates():
            predicate._rule = self.id
        return self

    def _predicates(self) -> Iterator[Predicate]:
        """Every predicate of the rule: in its selectors' `where`, and in its actions' `only_if`."""
        for selector in _selectors_in(self.when):
            yield from selector.where
        for action in self.respond:
            yield from action.only_if

    @cached_property
    def absence(self) -> AbsenceSpec | None:
        """The timer this rule needs, if it waits for something not to happen."""
        top = self.when.all if isinstance(self.when, AllCondition) else [self.when]
        return next((part.absence for part in top if isinstance(part, AbsenceCondition)), None)

    @cached_property
    def fire_time_conditions(self) -> list["Condition"]:
        """For an absence rule: the other conditions, checked when its timer runs out."""
        if isinstance(self.when, AllCondition):
            return [part for part in self.when.all if not isinstance(part, AbsenceCondition)]
        return []

    @cached_property
    def windows(self) -> tuple[Window, ...]:
        """The `recent` and `count` windows anywhere in `when`: how far back the rule reads a profile's past."""
        return tuple(_windows(self.when))

    @cached_property
    def version(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
        return f"{self.id}@{hashlib.sha256(canonical).hexdigest()[:12]}"


def _windows(condition: Any) -> Iterator[Window]:
    return (selector for selector in _selectors_in(condition) if isinstance(selector, Window))


def _selectors_in(condition: Any) -> Iterator[Selector]:
    """Every selector in the condition: its event selectors, its windows, and its absence's `after` and `without`."""
    for part in _conditions_in(condition):
        match part:
            case Selector():
                yield part
            case RecentCondition(recent=window) | CountCondition(count=window):
                yield window
            case AbsenceCondition(absence=AbsenceSpec(after=after, without=without)):
                yield after
                if isinstance(without, Selector):
                    yield without


def _conditions_in(condition: Any) -> Iterator[Any]:
    """The condition and every condition nested in it, through all / any / not."""
    yield condition
    match condition:
        case AllCondition(all=parts) | AnyCondition(any=parts):
            for part in parts:
                yield from _conditions_in(part)
        case NotCondition(not_=inner):
            yield from _conditions_in(inner)


class RuleFile(Strict):
    rules: list[RuleSpec] = Field(
        description="Each rule's `id` must be unique in the file (the hub checks; JSON Schema cannot say so). "
        "`rules: []` runs without rules.",
    )

    @model_validator(mode="before")
    @classmethod
    def _says_rules(cls, document: Any) -> Any:
        """A file with no `rules:` key is refused, not read as no rules: an editor saving an empty or half-written
        file would otherwise turn every rule off on hot reload, and lapse every timer that came due meanwhile."""
        if isinstance(document, dict) and "rules" not in document:
            raise ValueError("no `rules:` list (an empty or half-saved file?); write `rules: []` to run without rules")
        return document

    @model_validator(mode="after")
    def _unique_ids(self) -> "RuleFile":
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice; rule ids must be unique")
            seen.add(rule.id)
        return self

    @field_validator("rules")
    @classmethod
    def _by_priority(cls, rules: list[RuleSpec]) -> list[RuleSpec]:
        return sorted(rules, key=lambda rule: -rule.priority)


def load_rules(path: Path) -> list[RuleSpec]:
    """The rules the file puts in force (`RuleFile` holds those with `enabled: false` too)."""
    return [rule for rule in load_model(path, RuleFile).rules if rule.enabled]
