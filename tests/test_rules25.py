"""Rules as ops write them: YAML read as 1.2, `distinct_by` values told apart by what they are, a forgotten `value`
refused, a late event's count decided where its span ends, and `triggers test --json` output that stays JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from hub.config_files import ConfigLoader
from hub.errors import ConfigError
from hub.rules import RuleSpec, load_rules
from hub.settings import PROJECT_MAPPINGS
from hub.triggers import evaluate
from tests.test_json_logs19 import hub_env
from tests.test_triggers import RESPOND, T0, RecordedHistory, rules, tp

SCHEMA = json.loads((PROJECT_MAPPINGS / "schema" / "triggers.schema.json").read_text())


def rules_file(tmp_path: Path, when: str) -> list[RuleSpec]:
    """The rules of a triggers.yaml whose one rule has this `when`, written as YAML flow text."""
    path = tmp_path / "triggers.yaml"
    path.write_text(f"rules:\n  - id: r\n    when: {when}\n    respond: [{{channel: sms, template: t.j2}}]\n")
    return load_rules(path)


# 1. YAML 1.2, as editors and the schema read the files ----------------------------------------------------------

def test_a_country_code_no_in_a_where_list_is_text_not_false(tmp_path: Path) -> None:
    """`value: [NO, SE, DK]` loaded as [False, "SE", "DK"] (PyYAML reads YAML 1.1): the rule never held for
    Norway."""
    loaded = rules_file(tmp_path, "{event: E, where: [{field: context.locale_country, op: in, value: [NO, SE, DK]}]}")
    assert loaded[0].when.where[0].value == ["NO", "SE", "DK"]


@pytest.mark.parametrize("written", ["yes", "on", "Off", "y"])
def test_a_where_value_written_as_a_yaml_1_1_boolean_is_text(tmp_path: Path, written: str) -> None:
    """`value: yes` loaded as true, which never equals the survey's answer "yes"."""
    loaded = rules_file(tmp_path, f"{{event: Survey Answered, where: [{{field: properties.answer, op: eq, value: {written}}}]}}")
    assert len(evaluate(tp("Survey Answered", answer=written), "p", loaded, RecordedHistory())) == 1


@pytest.mark.parametrize(("written", "loaded"), [("true", True), ("False", False), ("TRUE", True), ("'yes'", "yes")])
def test_true_and_false_are_still_booleans_and_quoted_text_still_text(written: str, loaded: object) -> None:
    assert yaml.load(f"value: {written}", Loader=ConfigLoader) == {"value": loaded}


@pytest.mark.parametrize(("written", "number"), [("1e3", 1000), ("1.5e3", 1500), ("-1.5E-2", -0.015), (".5", 0.5)])
def test_a_number_written_with_an_exponent_is_a_number(written: str, number: float) -> None:
    """PyYAML's 1.1 resolver wants a dot and a signed exponent: `1e3` loaded as the text "1e3"."""
    assert yaml.load(f"value: {written}", Loader=ConfigLoader) == {"value": number}
    assert yaml.load(f"value: '{written}'", Loader=ConfigLoader) == {"value": written}


def test_a_threshold_written_1e3_is_a_number(tmp_path: Path) -> None:
    """`value: 1e3` loaded as text, which `gt` cannot compare with a number: the rule silently never fired for an
    order of 5000."""
    loaded = rules_file(tmp_path, "{event: Order Completed, where: [{field: properties.total, op: gt, value: 1e3}]}")
    assert len(evaluate(tp("Order Completed", total=5000), "p", loaded, RecordedHistory())) == 1


def test_digits_with_a_leading_zero_stay_text() -> None:
    """A zip code is not made a number by the exponent form's reading."""
    assert yaml.load("zip: 09123", Loader=ConfigLoader) == {"zip": "09123"}


# 3. distinct_by: values told apart by what they are, not by their repr -------------------------------------------

def two_distinct(path: str, now: dict, before: dict) -> bool:
    """Whether a view with properties `now`, a minute after one with `before`, makes 2 distinct `path` values."""
    rule = {"id": "r", "when": {"count": {"event": "V", "at_least": 2, "within": "5m", "distinct_by": path}},
            "respond": RESPOND}
    history = RecordedHistory({"V": [(T0 - timedelta(minutes=1), before)]})
    return bool(evaluate(tp("V", **now), "p", rules(rule), history))


def test_distinct_by_a_projection_that_picks_nothing_is_no_value() -> None:
    """A view whose products carry no sku gave `[]`, counted as a value: with one view of product A it made "two
    different products" and the comparison offer went out."""
    path = "properties.products[*].sku"
    assert not two_distinct(path, {"products": [{"sku": "A"}]}, {"products": [{"name": "gift card"}]})
    assert two_distinct(path, {"products": [{"sku": "A"}]}, {"products": [{"sku": "B"}]})


def test_distinct_by_the_same_object_with_keys_in_another_order_is_one_value() -> None:
    """The same object from two SDKs that order its keys differently was counted twice."""
    assert not two_distinct("properties.item", {"item": {"id": "A", "variant": "red"}}, {"item": {"variant": "red", "id": "A"}})
    assert two_distinct("properties.item", {"item": {"id": "A", "variant": "red"}}, {"item": {"variant": "blue", "id": "A"}})


def test_distinct_by_whole_floats_inside_a_list_are_their_integers() -> None:
    """`[7]` and `[7.0]` counted as two values (a whole float was its integer only at the top level)."""
    assert not two_distinct("properties.ids", {"ids": [7]}, {"ids": [7.0]})
    assert not two_distinct("properties.item", {"item": {"id": 7}}, {"item": {"id": 7.0}})


def test_distinct_by_keeps_true_apart_from_one_inside_a_list() -> None:
    assert two_distinct("properties.flags", {"flags": [True]}, {"flags": [1]})


# 4. eq / ne / in with the value left out ---------------------------------------------------------------------

@pytest.mark.parametrize("op", ["eq", "ne", "in", None])
def test_an_equality_with_its_value_left_out_is_refused_not_read_as_field_missing(tmp_path: Path, op: str | None) -> None:
    """`{field: properties.plan, op: eq}` loaded and held for every event WITHOUT a plan (value defaulted to null):
    the rule messaged exactly the people it was not meant for. `op` left out is `eq`."""
    written = "{field: properties.plan}" if op is None else f"{{field: properties.plan, op: {op}}}"
    with pytest.raises(ConfigError) as refused:
        rules_file(tmp_path, f"{{event: E, where: [{written}]}}")
    [problem] = refused.value.problems
    assert "`properties.plan` needs a `value`" in problem and "op: exists, value: false" in problem, problem
    assert problem.startswith(f"{tmp_path / 'triggers.yaml'}: rules.0.when.where.0: "), problem


def test_an_explicit_null_value_still_loads(tmp_path: Path) -> None:
    loaded = rules_file(tmp_path, "{event: E, where: [{field: properties.plan, op: eq, value: null}]}")
    assert len(evaluate(tp("E"), "p", loaded, RecordedHistory())) == 1


@pytest.mark.parametrize(("predicate", "valid"), [
    ({"field": "properties.plan", "op": "eq"}, False),
    ({"field": "properties.plan", "op": "ne"}, False),
    ({"field": "properties.plan"}, False),
    ({"field": "properties.plan", "op": "eq", "value": None}, True),
    ({"field": "properties.plan", "op": "exists"}, True),
])
def test_the_schema_editors_lint_with_requires_the_value_too(predicate: dict, valid: bool) -> None:
    """The schema accepted `{op: eq}` without a value, as the loader did."""
    document = {"rules": [{"id": "r", "when": {"event": "E", "where": [predicate]}, "respond": RESPOND}]}
    assert Draft202012Validator(SCHEMA).is_valid(document) is valid


# 5. a count completed by a late event ------------------------------------------------------------------------

def test_a_count_completed_by_a_late_event_is_decided_where_its_span_ends_as_in_order() -> None:
    """Views at 12:00 and 12:03, the 12:00 one arriving last: the decision was dated 12:00, not 12:03 as in order,
    and the rule's cap (1 an hour) counted from there, letting a comparison at 13:02:30 through."""
    rule = rules({"id": "r", "when": {"count": {"event": "V", "at_least": 2, "within": "5m"}}, "respond": RESPOND,
                  "cap": {"max": 1, "within": "1h"}})
    late_first_view = evaluate(tp("V"), "p", rule, RecordedHistory({"V": [T0 + timedelta(minutes=3)]}))
    assert [d.decided_at for d in late_first_view] == [T0 + timedelta(minutes=3)]
    in_time = evaluate(tp("V"), "p", rule, RecordedHistory({"V": [T0 - timedelta(minutes=3)]}))
    assert [d.decided_at for d in in_time] == [T0]


# 6. the hub's logs on stderr, stdout left to a command's output -------------------------------------------------

LAB_WITH_A_FAILING_EVENT = """
import sys
from hub import pipeline
normalize = pipeline.normalize
def failing_on_boom(raw, *args, **kwargs):
    if raw.message_id == "boom":
        raise RuntimeError("a bug in one event's processing")
    return normalize(raw, *args, **kwargs)
pipeline.normalize = failing_on_boom
from hub.cli import app
sys.argv = ["touchhub", "triggers", "test", "--json", sys.argv[1], sys.argv[2]]
app()
"""


def test_triggers_test_json_stdout_stays_json_lines_when_the_hub_logs_an_error(tmp_path: Path) -> None:
    """structlog printed to stdout: an event the pipeline failed on put "[error] pipeline failed on inbox row" and
    its traceback between the decisions' JSON lines, and `touchhub triggers test --json ... | jq` failed."""
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(m) for m in [
        {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}, "timestamp": "2026-01-05T09:59:00Z"},
        {"type": "track", "userId": "ana", "event": "Product Added", "timestamp": "2026-01-05T10:00:00Z"},
        {"type": "track", "userId": "bob", "event": "Page Seen", "messageId": "boom", "timestamp": "2026-01-05T10:00:30Z"},
    ]))
    script = tmp_path / "lab.py"
    script.write_text(LAB_WITH_A_FAILING_EVENT)
    done = subprocess.run([sys.executable, str(script), str(PROJECT_MAPPINGS / "triggers.yaml"), str(events)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "left out" in done.stderr and "pipeline failed on inbox row" in done.stderr, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stdout
    assert [json.loads(line)["rule_id"] for line in lines]


def test_the_hubs_own_log_lines_go_to_stderr_as_the_libraries_do(tmp_path: Path) -> None:
    """A structlog line went to stdout while a stdlib logger's (uvicorn, SQLAlchemy) went to stderr: one process's
    log in two streams, and in the way of a command's output."""
    script = (
        "import logging, structlog; from hub.cli_support import load_settings; load_settings(); "
        "structlog.get_logger('hub.pipeline').error('hub line'); logging.getLogger('sqlalchemy').error('library line')"
    )
    done = subprocess.run([sys.executable, "-c", script], env=hub_env(tmp_path), capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout == ""
    assert [json.loads(line)["event"] for line in done.stderr.splitlines() if line.strip()] == ["hub line", "library line"]


@pytest.mark.parametrize("written, read", [("01234", "01234"), ("0b11", "0b11"), ("1_000", 1000), ("42", 42), ("0x1F", 31)])
def test_an_integer_yaml_1_1_reads_otherwise_is_read_as_yaml_1_2(written: str, read: object) -> None:
    """YAML 1.1 read `zip: 01234` as the octal 668 and `0b11` as 3: a rule `value: 01234` never held for the zip
    code written so. YAML 1.2's integers are decimal (no leading zero) or hexadecimal."""
    assert yaml.load(f"value: {written}\n", Loader=ConfigLoader) == {"value": read}
