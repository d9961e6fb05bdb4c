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
`events` table and `default` label. A key of an object field whose value the
value map lists as null is left out of the touchpoint.

Expressions run per event; one that jmespath interprets (a function call)
can fail on one event's data (`join()` of a string): that is a MappingError
naming the field and the expression, quarantined at once like any other
unmappable event, not a crash to retry (`_Interpreted`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import jmespath
from jmespath.parser import ParsedResult
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag, field_validator

from hub import paths
from hub.config_files import load_model
from hub.errors import ConfigError, MappingError
from hub.paths import Expression

Stage = Literal["awareness", "consideration", "decision", "retention", "advocacy"]
STAGES: tuple[str, ...] = Stage.__args__  # type: ignore[attr-defined]
OBJECT_FIELDS = ("properties", "traits", "context")
_OBJECT_KEY = r"(properties|traits|context)\.[A-Za-z0-9_$@-]+"
OBJECT_FIELD_PATH = re.compile(rf"^{_OBJECT_KEY}$")
FIELD_PATH = re.compile(rf"^(event|kind|stage|moment|occurred_at|{_OBJECT_KEY})$")
# The most characters the hub keeps of each text field of a touchpoint: the widths of their columns in
# hub/store/schema.py, which PostgreSQL enforces (SQLite does not). Longer is an error of the mapping.
MAX_LENGTH = {"event": 200, "moment": 80, "kind": 20, "mapping_version": 80, "identifier type": 40, "identifier value": 320}
VERSION_SUFFIX = len("@") + 12  # a mapping's version is its name, "@" and 12 hex digits of its content's hash


def check_expression(expression: str) -> str:
    """The expression when it compiles; ValueError naming it otherwise (for pydantic validators)."""
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression {expression!r}: {exc}") from None
    return expression


JmesPath = Annotated[str, AfterValidator(check_expression)]
"""A JMESPath expression of a mapping file, checked where it is written: a problem then names its own key
(`identifiers.phone.1`, `fields.properties.plan`) rather than the whole table holding it."""


def _one_or_many(value: Any) -> str:
    return "expressions" if isinstance(value, list) else "expression"


JmesPaths = Annotated[
    Annotated[JmesPath, Tag("expression")] | Annotated[list[JmesPath], Tag("expressions")], Discriminator(_one_or_many)
]
"""One expression or a list of them. Told apart by shape, so a bad item of a list is one problem, not also
"Input should be a valid string" from trying the whole list as one expression."""


class JourneyLabel(BaseModel):
    """An event's journey stage and micro-moment, and what kind of message it is when its type does not say."""

    model_config = ConfigDict(extra="forbid")
    stage: Stage
    moment: str = Field(min_length=1, max_length=MAX_LENGTH["moment"])
    kind: str | None = Field(
        None, max_length=MAX_LENGTH["kind"],
        description="Wins over the `kind` expression: `system` for events sent about the person rather than by "
        "them (an SDK's own Application Backgrounded), which end no absence rule's wait for `any` action.",
    )


def _check_field_paths(value: dict[str, Any]) -> dict[str, Any]:
    for path in value:
        if not FIELD_PATH.fullmatch(path):
            raise ValueError(
                f"{path!r} is not a canonical field: use event, kind, stage, moment, occurred_at, "
                "or properties.<name>, traits.<name>, context.<name>"
            )
    return value


def _check_key_lengths(value: dict[str, Any], what: str) -> dict[str, Any]:
    limit = MAX_LENGTH[what]
    for key in value:
        if len(key) > limit:
            raise ValueError(f"{key[:40]!r}... is {len(key)} characters long: the hub keeps at most {limit} of an {what}")
    return value


def _keys_matching(pattern: re.Pattern[str]) -> dict[str, Any]:
    """The JSON Schema of an object's keys, so editors flag the keys the validators refuse."""
    return {"propertyNames": {"pattern": pattern.pattern}}


def _keys_at_most(what: str) -> dict[str, Any]:
    return {"propertyNames": {"maxLength": MAX_LENGTH[what]}}


class DropRule(BaseModel):
    """Events matching `when` are not kept: no touchpoint, no quarantine; the inbox row is marked done."""

    model_config = ConfigDict(extra="forbid")
    when: JmesPath = Field(description="JMESPath over the raw payload; a result JMESPath calls true drops the event "
                                        "(anything but false, null, '', [] and {}: a 0 is true).")
    reason: str = Field(min_length=1, description="Why, for the log.")


class MappingSpec(BaseModel):
    """The YAML document of one source mapping (its JSON Schema is in mappings/schema/)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    kind: JmesPath = Field("type", description="JMESPath to the message type (track, identify, ...).")
    event: JmesPath = Field(description="JMESPath to the canonical event name.")
    occurred_at: JmesPath = Field(description="JMESPath to the ISO-8601 time the event happened.")
    identifiers: dict[str, JmesPaths] = Field(
        description="Identifier type -> JMESPath (or a list of them; every non-empty value is kept; a value longer "
        f"than {MAX_LENGTH['identifier value']} characters is left out as malformed).",
        json_schema_extra=_keys_at_most("identifier type"),
    )
    properties: JmesPath | None = None
    traits: JmesPath | None = None
    context: JmesPath | None = None
    stage: JmesPath | None = Field(None, description="JMESPath to the journey stage; wins over the `events` table.")
    moment: JmesPath | None = Field(None, description="JMESPath to the micro-moment; wins over the `events` table.")
    events: dict[str, JourneyLabel] = Field(
        default_factory=dict, description="Event name -> stage and moment.", json_schema_extra=_keys_at_most("event")
    )
    default: JourneyLabel = Field(description="Stage and moment of events not listed in `events`.")
    constants: dict[str, JsonValue] = Field(
        default_factory=dict, description="Canonical field -> value set on every event.",
        json_schema_extra=_keys_matching(FIELD_PATH),
    )
    defaults: dict[str, JsonValue] = Field(
        default_factory=dict, description="Canonical field -> value used when its expression finds nothing.",
        json_schema_extra=_keys_matching(FIELD_PATH),
    )
    value_maps: dict[str, dict[str, JsonValue]] = Field(
        default_factory=dict,
        description="Canonical field -> {vendor value: canonical value}; values not listed pass through unchanged. "
        "A vendor value is matched as JSON writes it: true, false, null, 42 (quote such keys in YAML: 'true').",
        json_schema_extra=_keys_matching(FIELD_PATH),
    )
    fields: dict[str, JmesPath] = Field(
        default_factory=dict,
        description="properties.<name> / traits.<name> / context.<name> -> JMESPath over the raw event: a value "
        "found elsewhere in the message (Segment's top-level `channel` as context.channel).",
        json_schema_extra=_keys_matching(OBJECT_FIELD_PATH),
    )
    drop: list[DropRule] = Field(default_factory=list, description="Events the hub should not keep.")

    @field_validator("constants", "defaults", "value_maps")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_field_paths(value)

    @field_validator("value_maps", mode="before")
    @classmethod
    def _vendor_values_as_text(cls, value: Any) -> Any:
        """YAML reads an unquoted `true:`, `yes:`, `on:`, `null:` or `1:` key as no text at all; which JSON value
        the author meant cannot be told (`yes` is true to YAML), so they are asked to quote it."""
        for path, table in value.items() if isinstance(value, dict) else ():
            for key in table if isinstance(table, dict) else ():
                if not isinstance(key, str):
                    raise ValueError(
                        f"{path}: key {key!r} is not text: quote it as the vendor's JSON writes the value "
                        "('true', 'false', 'null', '1'), or as the text they send ('yes')"
                    )
        return value

    @field_validator("events")
    @classmethod
    def _event_names_fit(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_key_lengths(value, "event")

    @field_validator("fields")
    @classmethod
    def _object_keys_only(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value:
            if not OBJECT_FIELD_PATH.fullmatch(path):
                raise ValueError(
                    f"{path!r} is not a key of an object field: use properties.<name>, traits.<name> or context.<name> "
                    "(event, kind, stage, moment and occurred_at have expressions of their own)"
                )
        return value

    @field_validator("identifiers")
    @classmethod
    def _identifier_types_fit(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        return _check_key_lengths(value, "identifier type")


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
        value_map = spec.value_maps.get(name)
        if value_map:
            key = _as_json(found)
            if key in value_map:
                return value_map[key]
        if found is None or found == "":
            return spec.defaults.get(name)
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
            path = f"{name}.{key}"
            value = self.field(path, result.get(key))
            if value is not None:
                result[key] = value
            elif self._maps_to_null(path, result.get(key)):
                result.pop(key, None)
        return result

    def _maps_to_null(self, path: str, found: Any) -> bool:
        """Whether the value map of `path` lists `found` as null (`{'N/A': null}`): a vendor's placeholder for no
        value, which leaves the key out. Skipped as any null result is, it left the placeholder in the
        touchpoint. Asked only of a null result, so a mapped or unlisted value costs nothing more."""
        value_map = self.spec.value_maps.get(path)
        if not value_map or path in self.spec.constants:
            return False
        key = _as_json(found)
        return key in value_map and value_map[key] is None

    def drop_reason(self, payload: dict[str, Any]) -> str | None:
        """The reason of the first rule whose `when` is true as JMESPath judges it: a 0 or 0.0 found is true (only
        false, null, '', [] and {} are not), as `!when` and `when && x` judge it. Judged by Python's truth, an
        event with a 0 there was dropped by neither `when` nor `!when`."""
        return next((reason for when, reason in self.drop if not paths.is_false(when.search(payload))), None)

    @staticmethod
    def pick(expression: Expression | None, payload: dict[str, Any]) -> Any:
        return None if expression is None else expression.search(payload)


def compile_mapping(name: str, spec: MappingSpec) -> Mapping:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    return Mapping(
        name=name,
        version=f"{name}@{hashlib.sha256(canonical).hexdigest()[:12]}",
        spec=spec,
        kind=_compile("kind", spec.kind),
        event=_compile("event", spec.event),
        occurred_at=_compile("occurred_at", spec.occurred_at),
        identifiers=tuple(
            (type_, _compile(f"identifiers.{type_}", expression))
            for type_, expressions in spec.identifiers.items()
            for expression in ([expressions] if isinstance(expressions, str) else expressions)
        ),
        properties=_compile_optional("properties", spec.properties),
        traits=_compile_optional("traits", spec.traits),
        context=_compile_optional("context", spec.context),
        stage=_compile_optional("stage", spec.stage),
        moment=_compile_optional("moment", spec.moment),
        drop=tuple((_compile(f"drop.{n}.when", rule.when), rule.reason) for n, rule in enumerate(spec.drop)),
        fields={
            name: tuple(
                (path.split(".", 1)[1], _compile(path, expression))
                for path, expression in spec.fields.items() if path.startswith(name + ".")
            )
            for name in OBJECT_FIELDS
        },
    )


def _as_json(found: Any) -> str | None:
    """A found scalar as the vendor's JSON writes it (true, null, 42), which is how value maps are keyed."""
    if isinstance(found, str):
        return found
    if found is None or isinstance(found, (bool, int, float)):
        return json.dumps(found)
    return None


@dataclass(frozen=True, slots=True)
class _Interpreted:
    """An expression jmespath interprets, named by the field it maps: a function given data it does not take
    (`join()` of a string, `merge()` of a string `context`) fails on that one event, which is the mapping's
    problem to report, not a crash for the pipeline to retry. Direct readers (`paths`) never fail so."""

    field: str
    expression: str
    parsed: ParsedResult

    def search(self, value: Any) -> Any:
        try:
            return self.parsed.search(value)
        except paths.DATA_ERRORS as exc:
            raise MappingError(f"{self.field}: mapping {self.expression!r} failed on this event: {exc}") from None


def _compile(field: str, expression: str) -> Expression:
    compiled = paths.compile(expression)
    return _Interpreted(field, expression, compiled) if isinstance(compiled, ParsedResult) else compiled


def _compile_optional(field: str, expression: str | None) -> Expression | None:
    return None if expression is None else _compile(field, expression)


def load_mapping(path: Path) -> Mapping:
    """The mapping in `path`, named after the file; ConfigError naming the file and key otherwise."""
    name_limit = MAX_LENGTH["mapping_version"] - VERSION_SUFFIX
    if len(path.stem) > name_limit:
        raise ConfigError(
            f"{path}: the file name is {len(path.stem)} characters before its extension; every touchpoint records "
            f"it, which leaves room for {name_limit}: rename the file (and its `mapping:` in sources.yaml)"
        )
    return compile_mapping(path.stem, load_model(path, MappingSpec))
