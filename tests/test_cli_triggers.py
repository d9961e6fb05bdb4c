"""`touchhub triggers test` and `touchhub decisions explain`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hub.settings import PROJECT_MAPPINGS
from tests.conftest import RunningHub, support_ticket

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def touchhub(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOUCHHUB, *args], capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "200", "PATH": "", **env})


def rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


def test_triggers_test_replays_events_on_a_simulated_clock(tmp_path: Path) -> None:
    events = tmp_path / "session.jsonl"
    events.write_text("\n".join(json.dumps(m) for m in [
        {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}, "timestamp": "2026-03-01T10:00:00Z"},
        {"type": "track", "userId": "ana", "event": "Product Added", "timestamp": "2026-03-01T10:01:00Z"},
        {"type": "track", "userId": "ana", "event": "Product Viewed", "properties": {"product_id": "a"}, "timestamp": "2026-03-01T10:10:00Z"},
        {"type": "track", "userId": "ana", "event": "Product Viewed", "properties": {"product_id": "b"}, "timestamp": "2026-03-01T10:11:00Z"},
        {"type": "track", "userId": "bob", "event": "Cart Viewed", "timestamp": "2026-03-01T10:20:00Z"},
        {"type": "track", "userId": "bob", "event": "Checkout Started", "timestamp": "2026-03-01T10:21:00Z"},
    ]))
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    assert rows(result.stdout) == [
        ["2026-03-01T10:03:00+00:00", "cart_abandonment", "fired", "user_id:ana", "email: planned"],
        ["2026-03-01T10:11:00+00:00", "comparison_hesitation", "fired", "user_id:ana", "chat: planned"],
    ]  # bob checked out within the two minutes


def test_triggers_test_names_each_bad_line(tmp_path: Path) -> None:
    events = tmp_path / "bad.jsonl"
    events.write_text('{"type": "track", "userId": "a", "event": "E"}\nnot json\n')
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 2
    assert f"{events}:1: timestamp: missing" in result.stdout
    assert f"{events}:2:" in result.stdout


def test_decisions_explain_prints_the_chain_from_event_to_delivery(running_hub: RunningHub, tmp_path: Path) -> None:
    running_hub.send(*support_ticket("eli", {"phone": "+14155550123"}))
    running_hub.settle()
    [decision] = running_hub.admin("/api/decisions")["decisions"]
    result = touchhub("decisions", "explain", decision["decision_id"], HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "post_purchase_support (post_purchase_support@" in text
    assert "Ticket Submitted at" in text and "Order Completed at" in text
    assert "sms: planned" in text and "email: skipped profile has no email" in text
    assert "attempt 1 at" in text and "+14155550123" not in text  # the recipient is masked
    missing = touchhub("decisions", "explain", "nope", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db")
    assert missing.returncode == 1 and "No decision 'nope'" in missing.stdout
