"""What a trigger rule's selectors ask of a touchpoint: which events, stage or moment, and `where` predicates.

`hub.rules` builds conditions, actions and rules of these; `hub.selectors`
runs them. Each check a value must pass to be run is made here, when the
rules load: an operator's value, a JMESPath that compiles, a regular
expression the `regex` package compiles.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import regex
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hub.mapping import JmesPath, Stage

Operator = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "exists", "matches"]

MATCH_SECONDS = 0.1
"""The processor time one `matches` may take: thousands of times what a pattern needs on a value an SDK sends,
and a bound on one that backtracks (`^(a|aa)+$`), whose time doubles with each character the sender adds."""


def _not_text(value: Any) -> Any:
    """pydantic would read `"2"` as 2 and `true` as 1; JSON Schema's integer is neither, so the hub refuses both."""
    if isinstance(value, (str, bool)):
        raise ValueError(f"write a whole number such as 2, not {value!r}")
    return value


WholeNumber = Annotated[int, BeforeValidator(_not_text)]
"""An integer as the schema means it: a number without a fraction (2 or 2.0), never text or a boolean."""


class Strict(BaseModel):
    """A rule file's models: a key they do not know is refused, not ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_ORDERING = ("gt", "gte", "lt", "lte")
_EQUALITY = ("eq", "ne", "in")
_DEFAULT_OP = "eq"


def _operator_takes(ops: tuple[str, ...], value_schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """The schema's half of `Predicate._value_fits_operator`: the values `ops` take (and whether they need one).
    An `op` left out is `eq`, so a clause for `eq` holds then too."""
    when: dict[str, Any] = {"properties": {"op": {"enum": list(ops)}}}
    if _DEFAULT_OP not in ops:
        when["required"] = ["op"]
    then: dict[str, Any] = {"properties": {"value": value_schema}}
    return {"if": when, "then": {**then, "required": ["value"]} if required else then}


class Predicate(Strict):
    """A test on one value of the evaluated document.

    `field` is a JMESPath over the touchpoint (`properties.total`, `context.device.type`,
    `context.campaign.source`, `context.channel`) or over the profile's traits (`profile.plan`).
    """

    model_config = ConfigDict(json_schema_extra={
        "allOf": [
            _operator_takes(("eq", "ne"), {}),
            _operator_takes(("in",), {"type": "array"}),
            _operator_takes(("matches",), {"type": "string"}),
            _operator_takes(_ORDERING, {"type": ["number", "string"]}),
            _operator_takes(("exists",), {"type": ["boolean", "null"]}, required=False),
        ],
    })

    field: JmesPath = Field(description="JMESPath expression; the hub refuses the file if it does not compile.")
    op: Operator = _DEFAULT_OP
    value: Any = Field(
        None,
        description="Needed by every operator but `exists`: left out of an `eq`, `ne` or `in`, it is refused, not read as "
        "null (write `value: null` for that; a field that must be missing is `op: exists, value: false`). "
        "`in` needs a list; `gt`, `gte`, `lt` and `lte` a number or text (ISO-8601 times compare as text); "
        "`exists` takes true or false (left out: true; on a projection such as `properties.products[*].coupon`, true when "
        "some element has the field); `matches` a regular expression (Python `re` syntax, run by the "
        f"`regex` package: the hub refuses the file if it does not compile; a match that takes over {MATCH_SECONDS:g} s of "
        "processor time, as a pattern that backtracks can on a value the sender chose, counts as no match and is logged "
        "naming the rule).",
    )

    _rule: str = PrivateAttr("")

    @property
    def rule(self) -> str:
        """The id of the rule that holds this predicate: what the log of a match given up on names."""
        return self._rule

    @model_validator(mode="after")
    def _value_fits_operator(self) -> "Predicate":
        """Refused here, when the file loads or reloads: found while evaluating, a value its operator cannot use
        failed each event the rule saw (`in`, `matches`), or silently never held (`gt` with no value), or held
        the other way round (`exists: "false"`), or held for exactly the events without the field (`eq` with its
        value forgotten compared with null)."""
        problem = _value_left_out(self) or _value_problem(self.op, self.value)
        if problem:
            raise ValueError(problem)
        return self


def _value_left_out(predicate: Predicate) -> str | None:
    """Why an `eq`, `ne` or `in` predicate without a `value` is refused; None when it has one (`value: null`
    included: that one is meant)."""
    if predicate.op not in _EQUALITY or "value" in predicate.model_fields_set:
        return None
    return (f"`{predicate.op}` on `{predicate.field}` needs a `value` to compare with; for a field that must be "
            "missing write `op: exists, value: false`, for one that must be null `value: null`")


def _value_problem(op: str, value: Any) -> str | None:
    """Why `value` cannot serve `op`, said as ops write the file; None when it can."""
    if op == "in" and not isinstance(value, list):
        return "`in` needs a list value"
    if op in _ORDERING and not _comparable(value):
        return (f"`{op}` needs a value to compare with, a number or text (such as 100 or '2026-01-01'), "
                f"not {json.dumps(value, default=str)}")
    if op == "exists" and not (value is None or isinstance(value, bool)):
        return (f"`exists` takes true or false (left out: true), not {json.dumps(value, default=str)}; "
                "for a field that must be missing, write false without quotes")
    if op == "matches":
        return _pattern_problem(value)
    return None


def _comparable(value: Any) -> bool:
    """What the ordering operators compare with: a number, or text (ISO-8601 times order as text does). Not a
    boolean, which `selectors` never orders (as in JMESPath), nor null or a list, which nothing is above."""
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _pattern_problem(value: Any) -> str | None:
    """Compiled by the engine that runs it (`hub.selectors`), so what loads is what runs."""
    if not isinstance(value, str):
        return "`matches` needs a regular expression string"
    try:
        regex.compile(value)
    except regex.error as exc:
        return f"`matches` value {value!r} is not a regular expression: {exc}"
    return None


_SELECTS_NOTHING = "name an `event`, a `stage` or a `moment` to select touchpoints"

Named = Annotated[str, Field(min_length=1)]
"""An event name or a moment: empty text names none (the schema's half of `Selector._names_something`)."""


class Selector(Strict):
    """Which touchpoints count: by event name(s), journey stage, micro-moment, and `where` predicates.

    At least one of `event`, `stage` and `moment` must be given (not null, not empty): `where` alone selects nothing.
    """

    model_config = ConfigDict(json_schema_extra={
        "anyOf": [{"properties": {key: {"not": {"type": "null"}}}, "required": [key]} for key in ("event", "stage", "moment")],
    })

    event: Named | Annotated[list[str], Field(min_length=1)] | None = None
    stage: Stage | None = None
    moment: Named | None = None
    where: list[Predicate] = Field(default_factory=list)

    @field_validator("event", "moment", mode="before")
    @classmethod
    def _names_something(cls, value: Any, info: ValidationInfo) -> Any:
        """Before the type's own length checks (kept for the schema), to say what to do: `event: []` selected
        nothing, so its rule silently never fired, and an absence it was the `without` of nudged every cart."""
        if value == "" or value == []:
            raise ValueError(f"`{info.field_name}: {json.dumps(value)}` names nothing; {_SELECTS_NOTHING}")
        return value

    @model_validator(mode="after")
    def _selects_something(self) -> "Selector":
        if self.event is None and self.stage is None and self.moment is None:
            raise ValueError(_SELECTS_NOTHING)
        return self

    @property
    def events(self) -> tuple[str, ...] | None:
        if self.event is None:
            return None
        return (self.event,) if isinstance(self.event, str) else tuple(self.event)
