"""Source mappings: how a platform's raw payload becomes a canonical touchpoint.

A mapping is data in ``mappings/<name>.yaml``: JMESPath expressions from the
raw payload to canonical fields, plus a table giving each event name its
journey stage and micro-moment. Ops change it without touching Python.

Beyond expressions a mapping may set `constants` (a fixed value on every
event), `defaults` (used when an expression finds nothing), `value_maps`
(vendor vocabulary -> ours, e.g. ``contact.creation`` -> ``Contact Created``)
and `drop` rules (events the hub should not keep at all). Each of those is
keyed by a canonical field: ``event``, ``kind``, ``stage``, ``moment``,
``occurred_at`` or ``properties.<name>`` / ``traits.<name>`` /
``context.<name>``. Precedence: constant, then the expression's value passed
through the value map, then the default, then (for stage and moment) the
`events` table and `default` label.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jmespath
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub import paths
from hub.config_files import load_model
from hub.paths import Expression

Stage = Literal["awareness", "consideration", "decision", "retention", "advocacy"]
STAGES: tuple[str, ...] = Stage.__args__  # type: ignore[attr-defined]
OBJECT_FIELDS = ("properties", "traits", "context")
FIELD_PATH = re.compile(r"^(event|kind|stage|moment|occurred_at|(properties|traits|context)\.[A-Za-z0-9_$@-]+)$")


def check_expression(expression: str) -> str:
    """The expression when it compiles; ValueError naming it otherwise (for pydantic validators)."""
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression {expression!r}: {exc}") from None
    return expression


class JourneyLabel(BaseModel):
    """An event's journey stage and micro-moment, and what kind of message it is when its type does not say."""

    model_config = ConfigDict(extra="forbid")
    stage: Stage
    moment: str = Field(min_length=1)
    kind: str | None = Field(
        None, description="Wins over the `kind` expression: `system` for events sent about the person rather than by "
        "them (an SDK's own Application Backgrounded), which end no absence rule's wait for `any` action.",
    )


def _check_field_paths(value: dict[str, Any]) -> dict[str, Any]:
    for path in value:
        if not FIELD_PATH.match(path):
            raise ValueError(
                f"{path!r} is not a canonical field: use event, kind, stage, moment, occurred_at, "
                "or properties.<name>, traits.<name>, context.<name>"
            )
    return value


class DropRule(BaseModel):
    """Events matching `when` are not kept: no touchpoint, no quarantine; the inbox row is marked done."""

    model_config = ConfigDict(extra="forbid")
    when: str = Field(description="JMESPath over the raw payload; a truthy result drops the event.")
    reason: str = Field(min_length=1, description="Why, for the log.")

    @field_validator("when")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return check_expression(value)


class MappingSpec(BaseModel):
    """The YAML document of one source mapping (its JSON Schema is in mappings/schema/)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    kind: str = Field("type", description="JMESPath to the message type (track, identify, ...).")
    event: str = Field(description="JMESPath to the canonical event name.")
    occurred_at: str = Field(description="JMESPath to the ISO-8601 time the event happened.")
    identifiers: dict[str, str | list[str]] = Field(
        description="Identifier type -> JMESPath (or a list of them; every non-empty value is kept)."
    )
    properties: str | None = None
    traits: str | None = None
    context: str | None = None
    stage: str | None = Field(None, description="JMESPath to the journey stage; wins over the `events` table.")
    moment: str | None = Field(None, description="JMESPath to the micro-moment; wins over the `events` table.")
    events: dict[str, JourneyLabel] = Field(default_factory=dict, description="Event name -> stage and moment.")
    default: JourneyLabel = Field(description="Stage and moment of events not listed in `events`.")
    constants: dict[str, Any] = Field(default_factory=dict, description="Canonical field -> value set on every event.")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Canonical field -> value used when its expression finds nothing."
    )
    value_maps: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Canonical field -> {vendor value: canonical value}; values not listed pass through unchanged.",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="properties.<name> / traits.<name> / context.<name> -> JMESPath over the raw event: a value "
        "found elsewhere in the message (Segment's top-level `channel` as context.channel).",
    )
    drop: list[DropRule] = Field(default_factory=list, description="Events the hub should not keep.")

    @field_validator("constants", "defaults", "value_maps")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_field_paths(value)

    @field_validator("fields")
    @classmethod
    def _object_keys_from_expressions(cls, value: dict[str, str]) -> dict[str, str]:
        for path, expression in value.items():
            if path.split(".", 1)[0] not in OBJECT_FIELDS or not FIELD_PATH.match(path):
                raise ValueError(
                    f"{path!r} is not a key of an object field: use properties.<name>, traits.<name> or context.<name> "
                    "(event, kind, stage, moment and occurred_at have expressions of their own)"
                )
            check_expression(expression)
        return value

    @field_validator("kind", "event", "occurred_at", "properties", "traits", "context", "stage", "moment")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return None if value is None else check_expression(value)

    @field_validator("identifiers")
    @classmethod
    def _identifier_expressions_compile(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for expressions in value.values():
            for expression in [expressions] if isinstance(expressions, str) else expressions:
                check_expression(expression)
        return value


@dataclass(frozen=True)
class Mapping:
    """A validated mapping with its expressions compiled once, and a version for provenance."""

    name: str
    version: str
    spec: MappingSpec
    kind: Expression
    event: Expression
    occurred_at: Expression
    identifiers: tuple[tuple[str, Expression], ...]
    properties: Expression | None
    traits: Expression | None
    context: Expression | None
    stage: Expression | None
    moment: Expression | None
    drop: tuple[tuple[Expression, str], ...]
    fields: dict[str, tuple[tuple[str, Expression], ...]]  # object field -> its (key, expression) pairs

    def label(self, event: str) -> JourneyLabel:
        return self.spec.events.get(event, self.spec.default)

    def field(self, name: str, found: Any) -> Any:
        """A canonical field's value: constant, else the found value through its value map, else the default."""
        spec = self.spec
        if name in spec.constants:
            return spec.constants[name]
        if found is None or found == "":
            return spec.defaults.get(name)
        value_map = spec.value_maps.get(name)
        if value_map and isinstance(found, (str, int, float)) and str(found) in value_map:
            return value_map[str(found)]
        return found

    def object_field(self, name: str, found: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """`properties`, `traits` or `context` with the keys `fields` finds in the payload (where it finds
        them), then the constants, value maps and defaults of its keys applied."""
        result = dict(found)
        for key, expression in self.fields.get(name, ()):
            value = expression.search(payload)
            if value is not None and value != "":
                result[key] = value
        keys = {
            path.split(".", 1)[1]
            for table in (self.spec.constants, self.spec.defaults, self.spec.value_maps)
            for path in table if path.startswith(name + ".")
        }
        for key in keys:
            value = self.field(f"{name}.{key}", result.get(key))
            if value is not None:
                result[key] = value
        return result

    def drop_reason(self, payload: dict[str, Any]) -> str | None:
        return next((reason for when, reason in self.drop if when.search(payload)), None)

    @staticmethod
    def pick(expression: Expression | None, payload: dict[str, Any]) -> Any:
        return None if expression is None else expression.search(payload)


def compile_mapping(name: str, spec: MappingSpec) -> Mapping:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    return Mapping(
        name=name,
        version=f"{name}@{hashlib.sha256(canonical).hexdigest()[:12]}",
        spec=spec,
        kind=paths.compile(spec.kind),
        event=paths.compile(spec.event),
        occurred_at=paths.compile(spec.occurred_at),
        identifiers=tuple(
            (type_, paths.compile(expression))
            for type_, expressions in spec.identifiers.items()
            for expression in ([expressions] if isinstance(expressions, str) else expressions)
        ),
        properties=_compile_optional(spec.properties),
        traits=_compile_optional(spec.traits),
        context=_compile_optional(spec.context),
        stage=_compile_optional(spec.stage),
        moment=_compile_optional(spec.moment),
        drop=tuple((paths.compile(rule.when), rule.reason) for rule in spec.drop),
        fields={
            name: tuple(
                (path.split(".", 1)[1], paths.compile(expression))
                for path, expression in spec.fields.items() if path.startswith(name + ".")
            )
            for name in OBJECT_FIELDS
        },
    )


def _compile_optional(expression: str | None) -> Expression | None:
    return None if expression is None else paths.compile(expression)


def load_mapping(path: Path) -> Mapping:
    return compile_mapping(path.stem, load_model(path, MappingSpec))
