"""Source mappings: how a platform's raw payload becomes a canonical touchpoint.

A mapping is data in ``mappings/<name>.yaml``: JMESPath expressions from the
raw payload to canonical fields, plus a table giving each event name its
journey stage and micro-moment. Ops change it without touching Python.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jmespath
from jmespath.parser import ParsedResult
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.config_files import load_model

Stage = Literal["awareness", "consideration", "decision", "retention", "advocacy"]


def _check_expression(expression: str) -> str:
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression {expression!r}: {exc}") from None
    return expression


class JourneyLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage
    moment: str = Field(min_length=1)


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
    events: dict[str, JourneyLabel] = Field(default_factory=dict, description="Event name -> stage and moment.")
    default: JourneyLabel = Field(description="Stage and moment of events not listed in `events`.")

    @field_validator("kind", "event", "occurred_at", "properties", "traits", "context")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return None if value is None else _check_expression(value)

    @field_validator("identifiers")
    @classmethod
    def _identifier_expressions_compile(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for expressions in value.values():
            for expression in [expressions] if isinstance(expressions, str) else expressions:
                _check_expression(expression)
        return value


@dataclass(frozen=True)
class Mapping:
    """A validated mapping with its expressions compiled once, and a version for provenance."""

    name: str
    version: str
    spec: MappingSpec
    kind: ParsedResult
    event: ParsedResult
    occurred_at: ParsedResult
    identifiers: tuple[tuple[str, ParsedResult], ...]
    properties: ParsedResult | None
    traits: ParsedResult | None
    context: ParsedResult | None

    def label(self, event: str) -> JourneyLabel:
        return self.spec.events.get(event, self.spec.default)

    @staticmethod
    def pick(expression: ParsedResult | None, payload: dict[str, Any]) -> Any:
        return None if expression is None else expression.search(payload)


def compile_mapping(name: str, spec: MappingSpec) -> Mapping:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    return Mapping(
        name=name,
        version=f"{name}@{hashlib.sha256(canonical).hexdigest()[:12]}",
        spec=spec,
        kind=jmespath.compile(spec.kind),
        event=jmespath.compile(spec.event),
        occurred_at=jmespath.compile(spec.occurred_at),
        identifiers=tuple(
            (type_, jmespath.compile(expression))
            for type_, expressions in spec.identifiers.items()
            for expression in ([expressions] if isinstance(expressions, str) else expressions)
        ),
        properties=_compile_optional(spec.properties),
        traits=_compile_optional(spec.traits),
        context=_compile_optional(spec.context),
    )


def _compile_optional(expression: str | None) -> ParsedResult | None:
    return None if expression is None else jmespath.compile(expression)


def load_mapping(path: Path) -> Mapping:
    return compile_mapping(path.stem, load_model(path, MappingSpec))
