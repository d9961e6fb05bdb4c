"""The triggers schema editors lint with and the loader the hub runs say the same about every rule.

Each case is a whole rules file, written as YAML and given to both: to
mappings/schema/triggers.schema.json through `jsonschema`, and to
`hub.rules.load_rules`. A few constraints JSON Schema cannot state (unique ids,
JMESPath and regular expressions that compile) are the loader's alone: for
those the schema must say so in a description, and the loader must refuse
naming the key to fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from hub.config_files import ConfigLoader
from hub.errors import ConfigError
from hub.rules import load_rules
from hub.settings import PROJECT_MAPPINGS

SCHEMA = json.loads((PROJECT_MAPPINGS / "schema" / "triggers.schema.json").read_text())
RESPOND = [{"channel": "sms", "template": "t.j2"}]
ABSENCE = {"absence": {"after": {"moment": "cart_activity"}, "without": "any", "within": "2m"}}
OTHER_ABSENCE = {"absence": {"after": {"event": "Viewed"}, "without": {"event": "Bought"}, "within": "1h"}}


def rule(when: Any, **extra: Any) -> dict[str, Any]:
    return {"rules": [{"id": "r", "when": when, "respond": RESPOND, **extra}]}


def where(*predicates: dict[str, Any]) -> dict[str, Any]:
    return rule({"event": "E", "where": list(predicates)})


def count(**window: Any) -> dict[str, Any]:
    return rule({"count": {"event": "E", "within": "5m", **window}})


def cap(**values: Any) -> dict[str, Any]:
    return rule({"event": "E"}, cap={"within": "1h", **values})


ACCEPTED = [
    pytest.param(rule({"event": "E"}), id="event"),
    pytest.param(rule({"event": ["A", "B"]}), id="event list"),
    pytest.param(rule({"stage": "decision"}), id="stage only"),
    pytest.param(rule({"moment": "cart_activity"}), id="moment only"),
    pytest.param(rule({"event": None, "stage": "decision"}), id="null event beside a stage"),
    pytest.param(where({"field": "properties.total", "value": 100}), id="op defaults to eq"),
    pytest.param(where({"field": "properties.plan", "value": None}), id="eq with an explicit null"),
    pytest.param(where({"field": "properties.x", "op": "in", "value": [1, 2]}), id="in with a list"),
    pytest.param(where({"field": "properties.p", "op": "matches", "value": "^/pricing"}), id="matches with a string"),
    pytest.param(where({"field": "properties.x", "op": "exists"}), id="exists without a value"),
    pytest.param(where({"field": "properties.x", "op": "gt", "value": "text"}), id="gt with any value"),
    pytest.param(count(at_least=2, distinct_by="properties.sku"), id="count distinct"),
    pytest.param(count(at_least=2.0), id="at_least 2.0 is a whole number"),
    pytest.param(count(within="1.5h"), id="fractional duration"),
    pytest.param(rule({"recent": {"event": "Order Completed", "within": "30d"}}), id="recent"),
    pytest.param(rule(ABSENCE), id="absence as the whole when"),
    pytest.param(rule({"absence": {**ABSENCE["absence"], "without": {"event": "Checkout Started"}}}), id="absence without an event"),
    pytest.param(rule({"all": [ABSENCE, {"not": {"recent": {"event": "Bought", "within": "1d"}}}]}), id="absence in the top all"),
    pytest.param(rule({"all": [{"event": "E"}, {"any": [{"event": "F"}, {"not": {"stage": "decision"}}]}]}), id="nesting"),
    pytest.param(rule({"event": "E"}, enabled=False, priority=-5, urgency="delayed"), id="switches"),
    pytest.param(rule({"event": "E"}, priority=1.0), id="priority 1.0"),
    pytest.param(cap(max=3), id="cap"),
    pytest.param(rule({"event": "E"}, respond=[{**RESPOND[0], "delay": "10m", "fallback": [RESPOND[0]],
                                                "only_if": [{"field": "context.channel", "op": "in", "value": ["web"]}]}]),
                 id="action options"),
    pytest.param({"rules": []}, id="no rules"),
]

REFUSED = [
    pytest.param({}, id="no rules key (an empty or half-saved file)"),
    pytest.param(rule({}), id="empty selector"),
    pytest.param(rule({"where": [{"field": "properties.x", "value": 1}]}), id="selector with only where"),
    pytest.param(rule({"event": None}), id="selector with a null event only"),
    pytest.param(rule({"recent": {"where": [{"field": "properties.x"}], "within": "1d"}}), id="recent selecting nothing"),
    pytest.param(rule({"absence": {**ABSENCE["absence"], "without": {}}}), id="absence without selecting nothing"),
    pytest.param(where({"field": "properties.x", "op": "in", "value": 3}), id="in with a scalar"),
    pytest.param(where({"field": "properties.x", "op": "in"}), id="in without a value"),
    pytest.param(where({"field": "properties.x", "op": "eq"}), id="eq without a value"),
    pytest.param(where({"field": "properties.x", "op": "ne"}), id="ne without a value"),
    pytest.param(where({"field": "properties.x"}), id="neither op nor value"),
    pytest.param(where({"field": "properties.x", "op": "matches", "value": 5}), id="matches with a number"),
    pytest.param(where({"field": "properties.x", "op": "matches"}), id="matches without a value"),
    pytest.param(where({"field": "properties.x", "op": "like", "value": 1}), id="unknown operator"),
    pytest.param(rule({"any": [ABSENCE, {"event": "E"}]}), id="absence inside any"),
    pytest.param(rule({"not": ABSENCE}), id="absence inside not"),
    pytest.param(rule({"all": [{"all": [ABSENCE]}, {"event": "E"}]}), id="absence inside a nested all"),
    pytest.param(rule({"all": [{"any": [ABSENCE]}]}), id="absence inside any inside the top all"),
    pytest.param(rule({"all": [ABSENCE, OTHER_ABSENCE]}), id="two absences"),
    pytest.param(rule({"all": []}), id="empty all"),
    pytest.param(rule({"not_": {"event": "E"}}), id="not_ is not the key"),
    pytest.param(count(at_least="2"), id="at_least as text"),
    pytest.param(count(at_least=True), id="at_least as a boolean"),
    pytest.param(count(at_least=0), id="at_least 0"),
    pytest.param(count(at_least=2.5), id="at_least 2.5"),
    pytest.param(count(within="5x"), id="duration without a unit we know"),
    pytest.param(cap(max="2"), id="cap max as text"),
    pytest.param(cap(max=0), id="cap max 0"),
    pytest.param(rule({"event": "E"}, cap={"within": 2}), id="cap within a bare number"),
    pytest.param(rule({"event": "E"}, enabled="yes"), id="enabled as text"),
    pytest.param(rule({"event": "E"}, enabled=1), id="enabled as a number"),
    pytest.param(rule({"event": "E"}, priority="2"), id="priority as text"),
    pytest.param(rule({"event": "E"}, priority=1.5), id="priority 1.5"),
    pytest.param(rule({"event": "E"}, respond=[]), id="nothing to respond"),
    pytest.param(rule({"event": "E"}, colour="red"), id="unknown key"),
    pytest.param({"rules": [{"id": "my-rule", "when": {"event": "E"}, "respond": RESPOND}]}, id="id with a dash"),
    pytest.param({"rules": None}, id="rules null"),
]

# (rules file, the key the loader names, a fragment of its reason, where the schema documents the constraint)
LOADER_ONLY = [
    pytest.param({"rules": [{"id": "r", "when": {"event": "E"}, "respond": RESPOND}] * 2},
                 "(top level)", "rule id 'r' is used twice", ("properties", "rules"), id="duplicate ids"),
    pytest.param(where({"field": "properties.[x", "value": 1}), "rules.0.when.where.0.field", "invalid JMESPath expression",
                 ("$defs", "Predicate", "properties", "field"), id="field that does not compile"),
    pytest.param(rule({"event": "E"}, respond=[{**RESPOND[0], "only_if": [{"field": "context.[x", "value": 1}]}]),
                 "rules.0.respond.0.only_if.0.field", "invalid JMESPath expression",
                 ("$defs", "Predicate", "properties", "field"), id="only_if field that does not compile"),
    pytest.param(count(distinct_by="a.[b"), "rules.0.when.count.distinct_by", "invalid JMESPath expression",
                 ("$defs", "CountWindow", "properties", "distinct_by"), id="distinct_by that does not compile"),
    pytest.param(where({"field": "properties.p", "op": "matches", "value": "^/pricing("}), "rules.0.when.where.0",
                 "`matches` value '^/pricing(' is not a regular expression",
                 ("$defs", "Predicate", "properties", "value"), id="regular expression that does not compile"),
]


def schema_accepts(document: Any) -> bool:
    return Draft202012Validator(SCHEMA).is_valid(document)


def loader_problems(document: Any, tmp_path: Path) -> list[str]:
    """What `load_rules` says of `document` written as a rules file: [] when it loads."""
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        load_rules(path)
    except ConfigError as exc:
        return [problem.removeprefix(f"{path}: ") for problem in exc.problems]
    return []


def test_the_committed_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_the_shipped_rules_file_passes_the_schema() -> None:
    document = yaml.load((PROJECT_MAPPINGS / "triggers.yaml").read_text(), Loader=ConfigLoader)  # as the hub reads it
    assert sorted(error.message for error in Draft202012Validator(SCHEMA).iter_errors(document)) == []
    assert document["rules"], "the shipped file should hold rules for this to mean something"


@pytest.mark.parametrize("document", ACCEPTED)
def test_schema_and_loader_both_accept(document: dict[str, Any], tmp_path: Path) -> None:
    assert loader_problems(document, tmp_path) == []
    assert schema_accepts(document)


@pytest.mark.parametrize("document", REFUSED)
def test_schema_and_loader_both_refuse(document: dict[str, Any], tmp_path: Path) -> None:
    assert loader_problems(document, tmp_path)
    assert not schema_accepts(document)


@pytest.mark.parametrize(("document", "key", "reason", "documented_at"), LOADER_ONLY)
def test_what_only_the_loader_can_check_is_refused_by_key_and_named_in_the_schema(
    document: dict[str, Any], key: str, reason: str, documented_at: tuple[str, ...], tmp_path: Path
) -> None:
    [problem] = loader_problems(document, tmp_path)
    assert problem.startswith(f"{key}: ") and reason in problem, problem
    assert schema_accepts(document), "the schema now catches this: move the case to REFUSED"
    node = SCHEMA
    for part in documented_at:
        node = node[part]
    assert any(word in node["description"] for word in ("unique", "compile")), node["description"]


def test_loader_reasons_for_misplaced_absences_and_text_numbers_name_the_key(tmp_path: Path) -> None:
    """The schema's refusals are editor squiggles; the loader's are the lines ops read, so they say what to fix."""
    assert loader_problems(rule({"any": [ABSENCE]}), tmp_path) == [
        "rules.0.when.any.0: `absence` is allowed only as the whole `when` or directly inside its top-level `all`"]
    assert loader_problems(rule({"all": [ABSENCE, OTHER_ABSENCE]}), tmp_path) == [
        "rules.0.when.all: Value error, a rule may hold one `absence`"]
    assert loader_problems(count(at_least="2"), tmp_path) == [
        "rules.0.when.count.at_least: Value error, write a whole number such as 2, not '2'"]
    assert loader_problems(rule({"event": "E"}, enabled="yes"), tmp_path) == ["rules.0.enabled: Input should be a valid boolean"]
    assert loader_problems(rule({"where": [{"field": "properties.x", "value": 1}]}), tmp_path) == [
        "rules.0.when.event: Value error, name an `event`, a `stage` or a `moment` to select touchpoints"]
