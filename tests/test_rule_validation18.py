"""A rule the hub takes in must run as written: durations and predicate values it cannot honour are refused when
triggers.yaml loads or reloads, by the loader and by the JSON Schema alike, each at its key with what to write.

Before, such rules loaded and then failed every event they looked at, or silently did nothing they said.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from hub.rulebook import RuleBook
from hub.rules import RuleSpec
from hub.settings import PROJECT_MAPPINGS
from hub.triggers import evaluate, timer_changes
from tests.test_cli_triggers import touchhub
from tests.test_rule_schema import ABSENCE, RESPOND, cap, count, loader_problems, rule, schema_accepts, where
from tests.test_rulebook import RULE, book, write
from tests.test_triggers import T0, RecordedHistory, cart, rules, tp

NO_LENGTH = "must be more than 0s (a period of no length holds no event); write how long, such as 2m or 24h"


def too_long(written: str) -> str:
    return f"{written!r} is longer than the hub's longest duration, 36500d (100 years); write at most that"


def recent(within: str) -> dict[str, Any]:
    return rule({"all": [{"event": "Ticket Submitted"}, {"recent": {"event": "Order Completed", "within": within}}]})


def absence(within: str) -> dict[str, Any]:
    return rule({"absence": {**ABSENCE["absence"], "within": within}})


def delay(value: str) -> dict[str, Any]:
    return rule({"event": "E"}, respond=[{**RESPOND[0], "delay": value}])


@pytest.mark.parametrize(
    ("document", "key"),
    [
        pytest.param(recent("1000000d"), "rules.0.when.all.1.recent.within", id="recent"),
        pytest.param(count(within="1000000d"), "rules.0.when.count.within", id="count"),
        pytest.param(absence("1000000d"), "rules.0.when.absence.within", id="absence"),
        pytest.param(cap(within="1000000d"), "rules.0.cap.within", id="cap"),
        pytest.param(delay("1000000d"), "rules.0.respond.0.delay", id="delay"),
    ],
)
def test_a_duration_longer_than_a_century_is_refused_at_its_key(document: dict[str, Any], key: str, tmp_path: Path) -> None:
    """`recent: {within: 1000000d}` (for "ever") loaded, then every event the rule looked at raised OverflowError
    (the window reached before the year 1), was retried as a crash and quarantined: no rule decided for it."""
    assert loader_problems(document, tmp_path) == [f"{key}: Value error, {too_long('1000000d')}"]


def test_a_century_is_long_enough_for_ever_and_runs() -> None:
    """The longest duration taken is one the engine can add to and take from any event time it takes in."""
    long_ago = RecordedHistory({"Order Completed": [T0.replace(year=1990)]}, decisions=[T0.replace(year=1990)])
    [bought_ever] = rules(recent("36500d")["rules"][0])
    assert [d.status for d in evaluate(tp("Ticket Submitted"), "p", [bought_ever], long_ago)] == ["fired"]
    [capped_for_ever] = rules(cap(within="36500d", max=1)["rules"][0])
    assert [d.status for d in evaluate(tp("E"), "p", [capped_for_ever], long_ago)] == ["capped"]
    [wait] = rules(absence("36500d")["rules"][0])
    assert [due.year for _, due in timer_changes(cart(), [wait]).arm] == [2126]


def test_mappings_check_names_a_duration_too_large_for_python_at_its_line(tmp_path: Path) -> None:
    """`99999999999d` raised OverflowError out of the duration parser, which pydantic lets through: `mappings check`
    (and `Hub()` at start) died with a traceback instead of naming the line to fix."""
    maps = tmp_path / "maps"
    shutil.copytree(PROJECT_MAPPINGS, maps)
    rules_file = maps / "triggers.yaml"
    lines = rules_file.read_text().splitlines(keepends=True)
    [line] = [n for n, text in enumerate(lines, start=1) if text.strip() == "within: 2m"]  # cart_abandonment's wait
    lines[line - 1] = lines[line - 1].replace("2m", "99999999999d")
    rules_file.write_text("".join(lines))
    check = touchhub("mappings", "check", cwd=tmp_path, HUB_MAPPINGS_DIR=str(maps))
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    problem = f"{rules_file}:{line}: rules.0.when.absence.within: Value error, {too_long('99999999999d')}"
    assert problem in check.stdout.splitlines(), check.stdout


def test_a_reload_to_a_duration_too_large_for_python_is_refused_and_the_last_good_rules_stay(tmp_path: Path) -> None:
    """The OverflowError escaped `RuleBook.current()` into the pipeline (the event in hand failed) while
    `/api/rules` showed no refused edit."""
    rulebook, path = book(tmp_path)
    write(path, RULE.format(id="second", template="post_purchase_support.sms.j2").replace(
        "{event: E}", "{recent: {event: E, within: 99999999999d}}"))
    assert [rule.id for rule in rulebook.current()] == ["first"]
    assert [problem.removeprefix(f"{path}: ") for problem in rulebook.last_error] == [
        f"rules.0.when.recent.within: Value error, {too_long('99999999999d')}"]


def test_an_edit_a_check_fails_on_unexpectedly_is_refused_and_the_last_good_rules_stay(tmp_path: Path) -> None:
    """Only ConfigError was taken as a refused edit: any other error of a check (a bug of the hub's, such as the
    OverflowError above) raised out of `current()` into each event in hand until the file was fixed."""
    path = tmp_path / "triggers.yaml"
    write(path, RULE.format(id="first", template="known.j2"))

    def check_with_a_bug(rules: list[RuleSpec]) -> None:
        """A check that assumes it knows every template: a KeyError for any other, where it meant a ConfigError."""
        known = {"known.j2": "Hello"}
        for rule_spec in rules:
            for action in rule_spec.respond:
                known[action.template]

    rulebook = RuleBook(path, check_with_a_bug, recheck_seconds=0)
    write(path, RULE.format(id="second", template="other.j2"))
    assert [rule_spec.id for rule_spec in rulebook.current()] == ["first"]
    assert rulebook.last_error == [
        f"{path}: the hub could not check this edit (KeyError: 'other.j2'); the last good rules stay in force: "
        "please report this, with the edit, as a bug of the hub"
    ]
    write(path, RULE.format(id="second", template="known.j2"))
    assert [rule_spec.id for rule_spec in rulebook.current()] == ["second"] and rulebook.last_error == []


@pytest.mark.parametrize(
    ("predicate", "reason"),
    [
        pytest.param({"op": "gt"}, "`gt` needs a value to compare with, a number or text (such as 100 or '2026-01-01'), "
                     "not null", id="gt without a value"),
        pytest.param({"op": "lte", "value": [100]}, "`lte` needs a value to compare with, a number or text (such as 100 "
                     "or '2026-01-01'), not [100]", id="lte with a list"),
        pytest.param({"op": "gte", "value": True}, "`gte` needs a value to compare with, a number or text (such as 100 "
                     "or '2026-01-01'), not true", id="gte with a boolean"),
        pytest.param({"op": "exists", "value": "false"}, '`exists` takes true or false (left out: true), not "false"; '
                     "for a field that must be missing, write false without quotes", id="exists with a quoted false"),
        pytest.param({"op": "exists", "value": 0}, "`exists` takes true or false (left out: true), not 0; "
                     "for a field that must be missing, write false without quotes", id="exists with 0"),
    ],
)
def test_a_predicate_value_its_operator_cannot_use_is_refused_by_the_hub_and_the_schema(
    predicate: dict[str, Any], reason: str, tmp_path: Path
) -> None:
    """`gt` with no value or a list loaded and never held: the rule never fired and nothing said why.
    `exists: "false"` loaded as exists-true, firing exactly when the field was there."""
    document = where({"field": "properties.coupon", **predicate})
    assert loader_problems(document, tmp_path) == [f"rules.0.when.where.0: Value error, {reason}"]
    assert not schema_accepts(document)


@pytest.mark.parametrize(
    ("predicate", "holds_for", "fails_for"),
    [
        pytest.param({"op": "gte", "value": 100}, 100, 99.5, id="a number"),
        pytest.param({"op": "lt", "value": "2026-01-01T00:00:00+00:00"}, "2025-12-31T23:00:00+00:00",
                     "2026-01-01T00:00:00+00:00", id="an ISO-8601 time, compared as text"),
        pytest.param({"op": "exists", "value": False}, None, "SAVE10", id="exists false"),
        pytest.param({"op": "exists"}, "SAVE10", None, id="exists left without a value"),
    ],
)
def test_ordering_and_exists_take_the_values_they_can_use(
    predicate: dict[str, Any], holds_for: object, fails_for: object, tmp_path: Path
) -> None:
    document = where({"field": "properties.coupon", **predicate})
    assert loader_problems(document, tmp_path) == [] and schema_accepts(document)
    [spec] = rules(document["rules"][0])

    def fires(value: object) -> bool:
        event = tp("E") if value is None else tp("E", coupon=value)
        return bool(evaluate(event, "p", [spec], RecordedHistory()))

    assert fires(holds_for) and not fires(fails_for)


@pytest.mark.parametrize(
    ("document", "key"),
    [
        pytest.param(cap(within="0s"), "rules.0.cap.within", id="cap"),
        pytest.param(absence("0m"), "rules.0.when.absence.within", id="absence"),
        pytest.param(count(within="0.0h"), "rules.0.when.count.within", id="count"),
        pytest.param(recent("0d"), "rules.0.when.all.1.recent.within", id="recent"),
    ],
)
def test_a_zero_duration_is_refused_where_it_would_silently_undo_the_rule(
    document: dict[str, Any], key: str, tmp_path: Path
) -> None:
    """`cap: {max: 1, within: 0s}` loaded and capped nothing (while `max: 0` was refused with a reason); an absence
    `within: 0m` nudged at the cart's very instant, before any follow-up could exist; a window of 0s held only
    events at the very same instant."""
    assert loader_problems(document, tmp_path) == [f"{key}: Value error, {NO_LENGTH}"]
    assert not schema_accepts(document)


def test_a_delay_of_0s_still_means_at_once(tmp_path: Path) -> None:
    assert loader_problems(delay("0s"), tmp_path) == [] and schema_accepts(delay("0s"))
