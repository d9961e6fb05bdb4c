"""What a rule's selectors and `matches` patterns may be: nothing ops write can stall the hub or select nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from hub.errors import ConfigError
from hub.rules import load_rules
from hub.settings import PROJECT_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((PROJECT_MAPPINGS / "schema" / "triggers.schema.json").read_text())

SEARCH_RULES = """
rules:
  - id: search_intent
    when:
      event: Products Searched
      where: [{field: properties.query, op: matches, value: "^(a|aa)+$"}]
    respond: [{channel: sms, template: t.j2}]
"""

# Judges the rule's `where` on a query the sender chose, twice, and on a query the pattern finds.
JUDGE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from structlog.testing import capture_logs
    from hub.rules import load_rules
    from hub.selectors import predicates_hold

    [rule] = load_rules(Path(sys.argv[1]))
    with capture_logs() as logs:
        crafted = [predicates_hold(rule.when.where, {"properties": {"query": "a" * 60 + "!"}}) for _ in range(2)]
        plain = predicates_hold(rule.when.where, {"properties": {"query": "aaaa"}})
    print(json.dumps({"crafted": crafted, "plain": plain, "logs": logs}, default=str))
""")


def test_a_pattern_that_backtracks_is_given_up_on_as_no_match_and_logged_once_naming_the_rule(tmp_path: Path) -> None:
    """`^(a|aa)+$` compiled, so the hub took it, and Python's `re` then backtracked on a 61-character query for
    longer than anyone waits (time doubles per character), holding the GIL: ingest stalled with it and the
    pipeline retried the event after each lease. Run in a child process, so the old behaviour fails the test
    instead of hanging it."""
    rules = tmp_path / "triggers.yaml"
    rules.write_text(SEARCH_RULES)
    try:
        done = subprocess.run([sys.executable, "-c", JUDGE, str(rules)], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("judging a 61-character query under `matches: '^(a|aa)+$'` kept going for over 60 s")
    assert done.returncode == 0, done.stderr
    judged = json.loads(done.stdout)
    assert judged["crafted"] == [False, False]
    assert judged["plain"] is True
    [warning] = judged["logs"]
    assert (warning["log_level"], warning["rule"], warning["field"], warning["pattern"]) == (
        "warning", "search_intent", "properties.query", "^(a|aa)+$")
    assert "a" * 60 not in json.dumps(warning), "the sender's value stays out of the log"


def _rules(when: dict[str, Any]) -> dict[str, Any]:
    return {"rules": [{"id": "r", "when": when, "respond": [{"channel": "sms", "template": "t.j2"}]}]}


@pytest.mark.parametrize(("when", "key", "empty"), [
    pytest.param({"event": []}, "when.event", "event: []", id="event"),
    pytest.param({"count": {"event": [], "at_least": 2, "within": "5m"}}, "when.count.event", "event: []", id="count"),
    pytest.param({"absence": {"after": {"event": "Product Added"}, "without": {"event": []}, "within": "2m"}},
                 "when.absence.without.event", "event: []", id="absence without"),
    pytest.param({"moment": "", "stage": "decision"}, "when.moment", 'moment: ""', id="moment beside a stage"),
])
def test_a_selector_naming_an_empty_list_or_text_is_refused_not_a_rule_that_never_holds(
    tmp_path: Path, when: dict[str, Any], key: str, empty: str,
) -> None:
    """`event: []` passed the loader and the schema and selected nothing: the rule silently never fired, and an
    absence whose `without` was `{event: []}` could never be cancelled, so every cart was nudged."""
    document = _rules(when)
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(ConfigError) as refused:
        load_rules(path)
    assert (f"{path}: rules.0.{key}: Value error, `{empty}` names nothing; "
            "name an `event`, a `stage` or a `moment` to select touchpoints") in refused.value.problems
    assert not Draft202012Validator(SCHEMA).is_valid(document), "the editor shows the file as valid"
