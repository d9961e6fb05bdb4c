"""The rule language: predicates, combinations, recent windows and caps, with a recorded history."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub.errors import ConfigError
from hub.model import Identifier, Touchpoint
from hub.rules import RuleFile, load_rules
from hub.triggers import evaluate

T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


class RecordedHistory:
    """History with fixed answers, recording what the engine asked."""

    def __init__(self, events: dict[str, list[datetime]] | None = None, decisions: list[datetime] | None = None) -> None:
        self.events = events or {}
        self.decisions = decisions or []

    def count_events(self, profile_id: str, event: str, since: datetime, until: datetime, exclude_id: str) -> int:
        return sum(since <= t <= until for t in self.events.get(event, []))

    def decisions_since(self, profile_id: str, rule_id: str, since: datetime) -> int:
        return sum(t > since for t in self.decisions)


def rules(*specs: dict) -> list:
    return RuleFile.model_validate({"rules": list(specs)}).rules


def tp(event: str, **properties: object) -> Touchpoint:
    return Touchpoint("tp-1", "s", "m", "track", event, "decision", "x", T0, T0, (Identifier("user_id", "u"),), properties)


RESPOND = [{"channel": "sms", "template": "t.j2"}]


@pytest.mark.parametrize(
    ("op", "value", "fires"),
    [("eq", 100, True), ("ne", 100, False), ("gt", 99, True), ("gte", 100, True), ("lt", 100, False),
     ("lte", 100, True), ("in", [1, 100], True), ("exists", True, True), ("matches", "^1", False)],
)
def test_where_predicates(op: str, value: object, fires: bool) -> None:
    rule = {"id": "r", "when": {"event": "Order Completed", "where": [{"field": "properties.total", "op": op, "value": value}]},
            "respond": RESPOND}
    assert bool(evaluate(tp("Order Completed", total=100), "p", rules(rule), RecordedHistory())) is fires


def test_comparing_different_types_does_not_fire_instead_of_crashing() -> None:
    rule = {"id": "r", "when": {"event": "E", "where": [{"field": "properties.total", "op": "gt", "value": 5}]}, "respond": RESPOND}
    assert evaluate(tp("E", total="lots"), "p", rules(rule), RecordedHistory()) == []


def test_recent_window_all_and_not() -> None:
    rule = {
        "id": "r",
        "when": {"all": [{"event": "Ticket Submitted"}, {"recent": {"event": "Order Completed", "within": "30d"}},
                         {"not": {"recent": {"event": "Refund Issued", "within": "7d"}}}]},
        "respond": RESPOND,
    }
    bought = RecordedHistory({"Order Completed": [T0 - timedelta(days=10)]})
    [decision] = evaluate(tp("Ticket Submitted"), "p", rules(rule), bought)
    assert decision.evidence["recent"] == [{"event": "Order Completed", "within_seconds": 2592000.0, "seen": 1}]
    refunded = RecordedHistory({"Order Completed": [T0 - timedelta(days=10)], "Refund Issued": [T0 - timedelta(days=1)]})
    assert evaluate(tp("Ticket Submitted"), "p", rules(rule), refunded) == []
    stale = RecordedHistory({"Order Completed": [T0 - timedelta(days=31)]})
    assert evaluate(tp("Ticket Submitted"), "p", rules(rule), stale) == []


def test_cap_blocks_a_second_decision_inside_the_window() -> None:
    rule = {"id": "r", "when": {"event": "E"}, "respond": RESPOND, "cap": {"max": 1, "within": "24h"}}
    assert evaluate(tp("E"), "p", rules(rule), RecordedHistory(decisions=[T0 - timedelta(hours=23)])) == []
    assert len(evaluate(tp("E"), "p", rules(rule), RecordedHistory(decisions=[T0 - timedelta(hours=25)]))) == 1


def test_decision_ids_are_deterministic() -> None:
    rule = rules({"id": "r", "when": {"event": "E"}, "respond": RESPOND})
    assert evaluate(tp("E"), "p", rule, RecordedHistory())[0].decision_id == evaluate(tp("E"), "p", rule, RecordedHistory())[0].decision_id


def test_invalid_rule_file_reports_every_problem_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_text("rules:\n  - id: Bad-Id\n    when: {event: E}\n    respond: []\n    cap: {within: soon}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    text = "\n".join(caught.value.problems)
    assert f"{path}: rules.0.id: String should match pattern" in text
    assert f"{path}: rules.0.respond: List should have at least 1 item" in text
    assert "'soon' is not a duration" in text
