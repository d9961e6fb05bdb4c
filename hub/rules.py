"""The trigger rule language, as validated data (never `eval`).

`mappings/triggers.yaml` is parsed into these models; the JSON Schema that
editors use (mappings/schema/triggers.schema.json) is generated from them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.config_files import load_model
from hub.durations import Duration
from hub.mapping import Stage

Operator = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "exists", "matches"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Predicate(_Strict):
    """`field` is a JMESPath over the touchpoint document, e.g. `properties.total`."""

    field: str
    op: Operator = "eq"
    value: Any = None


class EventCondition(_Strict):
    """The touchpoint being evaluated is this event (and passes every `where` predicate)."""

    event: str
    where: list[Predicate] = Field(default_factory=list)


class RecentWindow(_Strict):
    event: str
    within: Duration
    at_least: int = Field(1, ge=1)


class RecentCondition(_Strict):
    """The profile had `event` within `within` before the touchpoint (by event time)."""

    recent: RecentWindow


class AllCondition(_Strict):
    all: list["Condition"] = Field(min_length=1)


class AnyCondition(_Strict):
    any: list["Condition"] = Field(min_length=1)


class NotCondition(_Strict):
    not_: "Condition" = Field(alias="not")


Condition = Annotated[
    Union[EventCondition, RecentCondition, AllCondition, AnyCondition, NotCondition],
    Field(union_mode="left_to_right"),
]


class ActionSpec(_Strict):
    channel: str = Field(description="Channel name; mappings/routes.yaml says which destination serves it.")
    template: str = Field(description="Template file in mappings/templates/.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Destination-specific values, e.g. CRM fields to update or a webhook event type."
    )


class Cap(_Strict):
    """At most `max` decisions of this rule per profile within `within`."""

    max: int = Field(1, ge=1)
    within: Duration


class RuleSpec(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    stage: Stage | None = None
    moment: str | None = None
    urgency: Literal["immediate", "delayed"] = "immediate"
    priority: int = 0
    enabled: bool = True
    when: Condition
    respond: list[ActionSpec] = Field(min_length=1)
    cap: Cap | None = None
    vars: dict[str, Any] = Field(default_factory=dict, description="Values templates can use, e.g. links.")

    @property
    def version(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
        return f"{self.id}@{hashlib.sha256(canonical).hexdigest()[:12]}"


class RuleFile(_Strict):
    rules: list[RuleSpec] = Field(default_factory=list)

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
    return [rule for rule in load_model(path, RuleFile).rules if rule.enabled]
