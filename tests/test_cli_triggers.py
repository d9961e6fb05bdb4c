"""`touchhub triggers test` and `touchhub decisions explain`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from hub.settings import PROJECT_MAPPINGS
from tests.conftest import RunningHub, support_ticket

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def touchhub(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOUCHHUB, *args], capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "200", "PATH": "", **env})


def rows(output: str) -> list[list[str]]:
    """The table's rows, cells stripped; a row's further lines (one per action) joined to its cells with newlines."""
    found: list[list[str]] = []
    for line in output.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if found and not cells[0]:
            found[-1] = [f"{old}\n{more}" if more else old for old, more in zip(found[-1], cells)]
        else:
            found.append(cells)
    return found


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
    assert "sms: planned (delivery " in text and "email: skipped (profile has no email)" in text
    assert "attempt 1 at" in text and "+14155550123" not in text  # the recipient is masked
    missing = touchhub("decisions", "explain", "nope", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db")
    assert missing.returncode == 1 and "No decision 'nope'" in missing.stdout


def write_events(path: Path, *messages: dict[str, object]) -> Path:
    path.write_text("\n".join(json.dumps(m) for m in messages))
    return path


def cart_left_at_ten(*later: dict[str, object]) -> list[dict[str, object]]:
    """ana, on the web, adds to her cart at 10:00 UTC and does nothing more: cart_abandonment comes due at 10:02."""
    return [
        {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}, "timestamp": "2026-01-05T09:59:00Z"},
        {"type": "track", "userId": "ana", "event": "Product Added", "timestamp": "2026-01-05T10:00:00Z"},
        *later,
    ]


def test_a_timer_is_judged_at_its_due_time_not_at_the_next_events(tmp_path: Path) -> None:
    # zed's event at 22:00 (quiet hours) must not make ana's 10:02 email wait for the morning
    events = write_events(tmp_path / "day.jsonl", *cart_left_at_ten(
        {"type": "identify", "userId": "zed", "traits": {"email": "zed@example.com"}, "timestamp": "2026-01-05T22:00:00Z"},
    ))
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    assert rows(result.stdout) == [["2026-01-05T10:02:00+00:00", "cart_abandonment", "fired", "user_id:ana", "email: planned"]]


def test_timers_left_at_the_end_are_each_judged_at_their_own_due_time(tmp_path: Path) -> None:
    # an unrelated 12-hour absence rule stretches the run-out past 21:00; the cart email is still due at 10:02
    rules = yaml.safe_load((PROJECT_MAPPINGS / "triggers.yaml").read_text())
    rules["rules"].append({
        "id": "slow_win_back", "urgency": "delayed",
        "when": {"absence": {"after": {"event": "Order Completed"}, "without": "any", "within": "12h"}},
        "respond": [{"channel": "email", "template": "cart_abandonment.email.j2"}],
    })
    rules_path = tmp_path / "triggers.yaml"
    rules_path.write_text(yaml.safe_dump(rules))
    events = write_events(tmp_path / "day.jsonl", *cart_left_at_ten())
    result = touchhub("triggers", "test", str(rules_path), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    assert rows(result.stdout) == [["2026-01-05T10:02:00+00:00", "cart_abandonment", "fired", "user_id:ana", "email: planned"]]


def three_fates(path: Path) -> Path:
    """ivo on iOS without a push token, eli opted out of SMS, ana's cart left in her quiet hours."""
    return write_events(
        path,
        {"type": "identify", "userId": "ivo", "traits": {"email": "ivo@example.com"}, "timestamp": "2026-01-05T09:59:00Z"},
        {"type": "track", "userId": "ivo", "event": "Product Added", "context": {"device": {"type": "ios"}},
         "timestamp": "2026-01-05T10:00:00Z"},
        {"type": "identify", "userId": "eli", "timestamp": "2026-01-03T12:00:00Z",
         "traits": {"email": "eli@example.com", "phone": "+14155550123", "sms_opt_out": True}},
        {"type": "track", "userId": "eli", "event": "Order Completed", "timestamp": "2026-01-04T12:00:00Z"},
        {"type": "track", "userId": "eli", "event": "Ticket Submitted", "timestamp": "2026-01-05T12:00:00Z"},
        {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}, "timestamp": "2026-01-05T21:00:00Z"},
        {"type": "track", "userId": "ana", "event": "Product Added", "timestamp": "2026-01-05T21:30:00Z"},
    )


def test_triggers_test_says_why_each_action_ended_as_it_did(tmp_path: Path) -> None:
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(three_fates(tmp_path / "day.jsonl")))
    assert result.returncode == 0, result.stderr + result.stdout
    assert [row[-1].splitlines() for row in rows(result.stdout)] == [
        ["push: fell_back -> email (profile has no push_token)", "email: planned"],
        ["sms: blocked_by_consent (sms consent revoked by the profile)", "email: planned",
         "push: skipped (profile has no push_token)", "crm: planned"],
        ["email: delayed_quiet_hours until 2026-01-06 08:00 UTC (quiet hours 21:00-08:00 in UTC)"],
    ]


def test_triggers_test_json_prints_one_decision_a_line_the_same_every_run(tmp_path: Path) -> None:
    events = three_fates(tmp_path / "day.jsonl")
    result = touchhub("triggers", "test", "--json", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    ivo, eli, ana = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(ana) == {"time", "rule_id", "rule_version", "profile", "status", "reasons", "touchpoints", "actions"}
    assert (ana["time"], ana["rule_id"], ana["profile"], ana["status"]) == (
        "2026-01-05T21:32:00+00:00", "cart_abandonment", "user_id:ana", "fired")
    assert ana["rule_version"].startswith("cart_abandonment@")
    assert ana["reasons"]["absence"] == {"after": "Product Added", "within_seconds": 120.0, "due_at": "2026-01-05T21:32:00+00:00"}
    assert len(ana["touchpoints"]) == 1
    assert ana["actions"] == [{"channel": "email", "fate": "delayed_quiet_hours", "destination": "email_smtp",
                               "not_before": "2026-01-06T08:00:00+00:00", "reason": "quiet hours 21:00-08:00 in UTC"}]
    assert ivo["actions"][0] == {"channel": "push", "fate": "fell_back", "because": "skipped", "to": "email",
                                 "reason": "profile has no push_token"}
    assert eli["actions"][0] == {"channel": "sms", "fate": "blocked_by_consent", "reason": "sms consent revoked by the profile"}
    assert eli["reasons"]["recent"] == [{"event": "Order Completed", "within_seconds": 2592000.0, "seen": 1}]
    assert len(eli["touchpoints"]) == 2
    again = touchhub("triggers", "test", "--json", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert again.stdout == result.stdout  # profile ids differ between runs and are left out


def test_a_follow_up_at_the_very_due_time_still_counts(tmp_path: Path) -> None:
    # the wait is (10:00, 10:02]: the view at 10:02:00 is taken in before the timer due then fires
    events = write_events(tmp_path / "day.jsonl", *cart_left_at_ten(
        {"type": "track", "userId": "ana", "event": "Product Viewed", "properties": {"product_id": "a"},
         "timestamp": "2026-01-05T10:02:00Z"},
    ))
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    assert rows(result.stdout) == []


def test_a_mistake_in_the_rules_is_reported_at_its_line_in_the_file_given(tmp_path: Path) -> None:
    rules = tmp_path / "mine.yaml"
    rules.write_text(
        "rules:\n  - id: typo\n    when:\n      event: Product Added\n      where:\n"
        "        - {field: properties.path, op: equals}\n"
        "    respond: [{channel: email, template: cart_email.j2}]\n"
    )
    result = touchhub("triggers", "test", str(rules), str(write_events(tmp_path / "events.jsonl", *cart_left_at_ten())))
    assert result.returncode == 2
    text = " ".join(result.stdout.split())  # rich wraps long lines
    assert "The rules cannot be tried; fix these and try again:" in text
    assert f"{rules}:6: rules.0.when.where.0.op: Input should be 'eq'" in text
    assert "touchhub-lab-" not in text
