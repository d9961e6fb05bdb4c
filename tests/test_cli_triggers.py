"""`touchhub triggers test` and `touchhub decisions explain`, run as a user runs them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub import delivery as delivery_module
from hub.clock import utcnow
from hub.model import RawEvent
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.store import decisions, inbox
from tests.conftest import RunningHub, make_settings, support_ticket
from tests.test_post_purchase_support import web_ticket_then_phone_login

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def touchhub(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOUCHHUB, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
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
    assert f"{events}:1: timestamp: missing" in result.stderr
    assert f"{events}:2:" in result.stderr


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
    assert missing.returncode == 1 and "No decision 'nope'" in missing.stderr


def tree_lines(output: str) -> list[str]:
    """`touchhub decisions explain`'s lines, without the tree's drawing."""
    return [line.strip(" │├└─") for line in output.splitlines()]


def as_printed(iso: str) -> str:
    """A time from the API as the CLI's tree prints it."""
    return str(datetime.fromisoformat(iso))


def test_decisions_explain_says_why_a_delivery_failed_unsent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery withdrawn unsent has no attempt: the CLI said only `failed`, where the API's `last_error` says
    why."""
    hub = Hub(make_settings(tmp_path, quiet_hours=""))
    try:
        messages = support_ticket("eli", {"phone": "+14155550123"})
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], utcnow())
        while hub.pipeline.run_once():
            pass
        later = utcnow() + timedelta(hours=13)  # past HUB_MESSAGE_MAX_AGE_HOURS (12) after it was due
        monkeypatch.setattr(delivery_module, "utcnow", lambda: later)
        hub.delivery.run_once()
        with hub.store.read() as connection:
            [decision] = decisions.search(connection, limit=10)
    finally:
        hub.stop()
    result = touchhub("decisions", "explain", decision["decision_id"], HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db")
    lines = tree_lines(result.stdout)
    head = lines.index("sms to +1******0123 via twilio_sms: failed")
    assert lines[head + 1] == "not sent: too old to send, past HUB_MESSAGE_MAX_AGE_HOURS after it was due"


def test_decisions_explain_says_what_the_provider_reported_after_the_send(running_hub: RunningHub, tmp_path: Path) -> None:
    """Twilio accepted the SMS (attempt 1: sent), then called back `undelivered`: the CLI showed the attempt
    beside status failed and nothing of Twilio's word."""
    running_hub.send(*support_ticket("eli", {"phone": "+14155550123"}))
    running_hub.settle()
    [sms] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    [sent] = running_hub.sandbox.twilio.messages
    assert running_hub.sandbox.twilio.post_status(sent["sid"], "undelivered", error_code=30003).status_code == 200
    result = touchhub("decisions", "explain", sms["decision_id"], HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db")
    lines = tree_lines(result.stdout)
    head = lines.index("sms to +1******0123 via twilio_sms: failed")
    attempt, reported = lines[head + 1:head + 3]
    assert attempt.startswith("attempt 1 at ") and attempt.endswith(": sent")
    assert reported == "provider reported undelivered (twilio.30003)"


def test_decisions_explain_says_a_decision_was_made_when_a_late_event_arrived(running_hub: RunningHub, tmp_path: Path) -> None:
    """The ticket was judged without the order, then again when the order came in: the CLI printed the decision
    at the ticket's time with nothing saying it was made later, or which arrival made it."""
    identify, order, ticket = support_ticket("eli", {"phone": "+14155550123"})
    running_hub.send(identify, ticket)
    running_hub.settle()
    running_hub.send(order)
    running_hub.settle()
    [decision] = running_hub.admin("/api/decisions")["decisions"]
    explained = running_hub.admin(f"/api/decisions/{decision['decision_id']}")
    late = explained["judged_again_after"]  # the API joins in the late event, as it does the evidence's touchpoints
    noted = explained["evidence"]["judged_again_after"]
    assert (late["event"], late["touchpoint_id"]) == ("Order Completed", noted["touchpoint_id"])
    assert datetime.fromisoformat(late["occurred_at"]) == datetime.fromisoformat(order["timestamp"])
    result = touchhub("decisions", "explain", decision["decision_id"], HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db")
    assert (
        f"judged again at {as_printed(explained['created_at'])}, when a late Order Completed "
        f"(at {as_printed(late['occurred_at'])}) arrived ({late['touchpoint_id']})"
    ) in tree_lines(result.stdout)


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


def test_a_message_is_taken_in_no_earlier_than_it_was_sent(tmp_path: Path) -> None:
    """An SDK's offline queue: the order happened at 10:01 on the phone but was sent (`sentAt`) at 10:05, after the
    10:02 cart nudge had fired in the live hub. Without a `receivedAt`, the lab took the order in at its timestamp,
    before it was even sent: it cancelled the nudge, and the lab showed no decision where the live hub made one."""
    events = write_events(tmp_path / "offline.jsonl", *cart_left_at_ten(
        {"type": "track", "userId": "ana", "event": "Order Completed",
         "timestamp": "2026-01-05T10:01:00Z", "sentAt": "2026-01-05T10:05:00Z"},
    ))
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    assert rows(result.stdout) == [["2026-01-05T10:02:00+00:00", "cart_abandonment", "fired", "user_id:ana", "email: planned"]]


def test_a_message_sent_at_once_is_taken_in_at_its_timestamp(tmp_path: Path) -> None:
    """A `sentAt` before the timestamp (a device clock that stepped) does not take the message in earlier."""
    events = write_events(tmp_path / "online.jsonl", *cart_left_at_ten(
        {"type": "track", "userId": "ana", "event": "Order Completed",
         "timestamp": "2026-01-05T10:01:00Z", "sentAt": "2026-01-05T09:30:00Z"},
    ))
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    assert rows(result.stdout) == []


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
        ["sms: blocked_by_consent (sms consent revoked by the profile)", "email: planned", "crm: planned"],
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
    text = " ".join(result.stderr.split())  # rich wraps long lines
    assert "The rules cannot be tried; fix these and try again:" in text
    assert f"{rules}:6: rules.0.when.where.0.op: Input should be 'eq'" in text
    assert "touchhub-lab-" not in text


def problems(output: str) -> list[str]:
    """The bullet lines of a `fix these and try again` list (each printed on one line)."""
    return [line.removeprefix("  • ") for line in output.splitlines() if line.startswith("  • ")]


SAMPLES = PROJECT_MAPPINGS / "samples"


def test_the_sample_events_are_the_demo_journey_with_fixed_times() -> None:
    """The sample is a copy of the demo's journey (whose times are relative to the demo's run): they must not drift."""
    journey = json.loads((SAMPLES / "demo_journey.json").read_text())["events"]
    sample = [json.loads(line) for line in (SAMPLES / "demo_journey.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in m.items() if k != "timestamp"} for m in sample] == [entry["message"] for entry in journey]


def test_the_shipped_sample_events_run_the_whole_reference_journey() -> None:
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(SAMPLES / "demo_journey.jsonl"))
    assert result.returncode == 0, result.stderr + result.stdout
    fired = {row[1] for row in rows(result.stdout) if row[2] == "fired"}
    assert fired == {"cart_abandonment", "comparison_hesitation", "post_purchase_support", "high_intent_pricing"}
    # the journey's last message has no identifier: reported at its line, as the demo counts it refused
    assert problems(result.stdout) == [
        f"{SAMPLES / 'demo_journey.jsonl'}:28: userId: either userId or anonymousId is required; "
        "the hub refuses this message at ingest (it quarantines it), so it was not tried"
    ]


def test_the_demo_journey_file_gets_one_line_saying_what_is_expected_and_where_the_sample_is() -> None:
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(SAMPLES / "demo_journey.json"))
    assert result.returncode == 2
    [problem] = problems(result.stderr)
    assert problem.startswith(f"{SAMPLES / 'demo_journey.json'}: a `touchhub demo` journey")
    assert "JSON Lines (one message a line) or as one JSON array" in problem
    assert problem.endswith(str(SAMPLES / "demo_journey.jsonl"))


def test_one_json_array_of_events_is_read_each_element_at_its_line(tmp_path: Path) -> None:
    events = tmp_path / "copied.json"
    events.write_text(json.dumps(cart_left_at_ten(), indent=2))
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    assert rows(result.stdout) == [["2026-01-05T10:02:00+00:00", "cart_abandonment", "fired", "user_id:ana", "email: planned"]]
    untimed = [*cart_left_at_ten(), {"type": "track", "userId": "ana", "event": "Product Viewed"}]
    events.write_text(json.dumps(untimed, indent=2))
    third = [n for n, line in enumerate(json.dumps(untimed, indent=2).splitlines(), start=1) if line == "  {"][2]
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 2
    assert problems(result.stderr) == [f"{events}:{third}: timestamp: missing; the simulated clock needs every event's time"]


def test_a_file_that_is_not_json_lines_gets_one_problem_not_one_a_line(tmp_path: Path) -> None:
    events = tmp_path / "broken.json"
    events.write_text(json.dumps(cart_left_at_ten(), indent=2)[:-2])  # a copy cut short
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 2
    [problem] = problems(result.stderr)
    assert problem.startswith(f"{events}:") and "not valid JSON" in problem and "JSON Lines" in problem


def test_user_text_is_printed_as_it_is_never_as_markup_or_emoji(tmp_path: Path) -> None:
    folder = tmp_path / "[red]ops[/]"  # two folders: `[red]ops[` and `]`
    folder.mkdir(parents=True)
    timed = {"type": "track", "userId": "a", "event": "E", "timestamp": "2026-01-05T10:00:00Z"}
    events = write_events(folder / ":smile:.jsonl", *[timed] * 99, {"type": "track", "userId": "a", "event": "E"})
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 2, result.stderr
    assert problems(result.stderr) == [f"{events}:100: timestamp: missing; the simulated clock needs every event's time"]
    marked = write_events(tmp_path / "marked.jsonl", *cart_left_at_ten())
    marked.write_text(marked.read_text().replace('"ana"', '"[bold]ana[/] :100:"'))
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(marked))
    assert result.returncode == 0, result.stderr + result.stdout
    assert [row[3] for row in rows(result.stdout)] == ["user_id:[bold]ana[/] :100:"]


def test_no_events_or_no_rules_to_try_exits_2_saying_so(tmp_path: Path) -> None:
    """An empty export must fail a CI check, not pass it with an empty table."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(empty))
    assert result.returncode == 2
    assert problems(result.stderr)[0].startswith(f"{empty}: no events; give Segment messages")
    no_rules = tmp_path / "none.yaml"
    no_rules.write_text("rules:\n  - id: paused\n    enabled: false\n    when: {event: E}\n"
                        "    respond: [{channel: email, template: cart_abandonment.email.j2}]\n")
    result = touchhub("triggers", "test", str(no_rules), str(write_events(tmp_path / "e.jsonl", *cart_left_at_ten())))
    assert result.returncode == 2
    assert problems(result.stderr)[0].startswith(f"{no_rules}: no rules to try")


def test_a_repeated_message_id_is_reported_by_line_and_not_counted(tmp_path: Path) -> None:
    first, again = ({"type": "track", "userId": "ana", "event": "Product Viewed", "messageId": "m2",
                     "properties": {"product_id": p}, "timestamp": f"2026-03-01T10:1{n}:00Z"} for n, p in ((0, "a"), (1, "b")))
    events = write_events(tmp_path / "dup.jsonl", {"type": "identify", "userId": "ana", "timestamp": "2026-03-01T10:00:00Z"},
                          first, again)
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(events))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Decisions over 2 events" in result.stdout
    assert rows(result.stdout) == []  # one view of product a: no comparison
    assert problems(result.stdout) == [
        f"{events}:3: messageId 'm2' repeats line 2; the hub keeps the first copy of a message, so this one was not tried"
    ]


def test_problems_name_the_users_rules_file_and_events_file_at_their_lines(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl", *cart_left_at_ten())
    rules = tmp_path / "mine.yaml"
    rules.write_text("rules:\n  - id: r1\n    when: {event: Product Added}\n"
                     "    respond:\n      - channel: emial\n        template: cart_abandonment.email.j2\n")
    result = touchhub("triggers", "test", str(rules), str(events))
    assert result.returncode == 2
    assert problems(result.stderr) == [
        f"{rules}:5: rule 'r1': channel 'emial' has no route in routes.yaml; "
        "use one of chat, crm, email, push, sms, webhook or add a route for it"
    ]
    rules.write_text(rules.read_text().replace("emial", "email").replace("cart_abandonment.email.j2", "nope.j2"))
    result = touchhub("triggers", "test", str(rules), str(events))
    assert result.returncode == 2
    [problem] = problems(result.stderr)
    assert problem.startswith(f"{rules}:6: template: {PROJECT_MAPPINGS / 'templates' / 'nope.j2'}: TemplateNotFound")
    assert "touchhub-lab-" not in result.stderr
    nobody = write_events(tmp_path / "nobody.jsonl", *cart_left_at_ten(
        {"type": "track", "userId": "null", "event": "Product Viewed", "timestamp": "2026-01-05T10:05:00Z"}))
    result = touchhub("triggers", "test", str(PROJECT_MAPPINGS / "triggers.yaml"), str(nobody))
    assert result.returncode == 0, result.stderr + result.stdout
    assert problems(result.stdout) == [f"{nobody}:3: quarantined at the mapping stage: identifiers: no usable identifier "
                                       "(all missing or junk values such as 'null')"]
    assert "inbox_id" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "command", [("decisions", "explain", "some-id"), ("profiles", "explain", "some-id"), ("deliveries", "list")]
)
def test_reading_the_store_elsewhere_says_which_database_it_looked_for_and_creates_none(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = touchhub(*command, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert problems(result.stderr) == [
        f"HUB_DATABASE_URL=sqlite:///var/hub.db: no database file at {tmp_path / 'var' / 'hub.db'} "
        f"(a relative path is read from the current folder, {tmp_path})",
        "run this from the hub's folder (where `touchhub serve` runs), or set HUB_DATABASE_URL to the hub's store",
    ]
    assert not (tmp_path / "var").exists()


def test_decisions_explain_on_an_unmigrated_database_points_to_migrate(tmp_path: Path) -> None:
    database = tmp_path / "other.db"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE notes (id INTEGER)")
    before = sorted(tmp_path.iterdir())
    result = touchhub("decisions", "explain", "some-id", HUB_DATABASE_URL=f"sqlite:///{database}")
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert problems(result.stderr)[0] == f"HUB_DATABASE_URL=sqlite:///{database}: it has no hub schema (no decisions table)"
    assert "`touchhub migrate`" in problems(result.stderr)[1]
    assert sorted(tmp_path.iterdir()) == before  # looked at, nothing written beside it


def test_reading_a_store_an_older_hub_made_points_to_migrate(tmp_path: Path) -> None:
    from hub.store import Store

    store = Store(f"sqlite:///{tmp_path}/old.db")
    store.migrate("i9_trait_epoch")
    store.dispose()
    result = touchhub("deliveries", "list", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/old.db")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert problems(result.stderr)[0] == f"HUB_DATABASE_URL=sqlite:///{tmp_path}/old.db: it has an older hub's schema"
    assert "`touchhub migrate`" in problems(result.stderr)[1]


def test_decisions_explain_of_an_unknown_id_says_where_ids_are_listed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/hub.db"
    assert touchhub("migrate", HUB_DATABASE_URL=url).returncode == 0
    result = touchhub("decisions", "explain", "nope", HUB_DATABASE_URL=url)
    assert result.returncode == 1
    assert f"No decision 'nope' in {url}." in result.stderr
    assert "GET /api/decisions" in result.stderr


def test_an_event_the_pipeline_fails_on_is_listed_and_the_run_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Postponed on the simulated clock, as the live hub retries it, the event held back every timer due after
    it, and the lab stepped to the same due time forever: it is quarantined at its one attempt instead."""
    from hub import pipeline, trigger_lab
    from tests.conftest import make_settings

    normalize = pipeline.normalize

    def failing_on_boom(raw: Any, *args: Any, **kwargs: Any) -> Any:
        if raw.message_id == "boom":
            raise RuntimeError("a bug in one event's processing")
        return normalize(raw, *args, **kwargs)

    monkeypatch.setattr(pipeline, "normalize", failing_on_boom)
    events = write_events(tmp_path / "events.jsonl", *cart_left_at_ten(
        {"type": "track", "userId": "bob", "event": "Page Seen", "messageId": "boom", "timestamp": "2026-01-05T10:00:30Z"}))
    result = trigger_lab.run(PROJECT_MAPPINGS / "triggers.yaml", events, make_settings(tmp_path))
    assert [d["rule_id"] for d in result.decisions] == ["cart_abandonment"]
    assert result.left_out == [f"{events}:3: quarantined at the pipeline stage: RuntimeError: a bug in one event's processing"]


def test_decisions_explain_says_a_merge_brought_the_late_evidence(running_hub: RunningHub, tmp_path: Path) -> None:
    """The phone's order came into the web profile with a late login: explain names the order, and the login
    whose merge brought it, where it read as if the order itself had arrived late."""
    web_ticket_then_phone_login(running_hub, "+14155550011", ticket=1, login=2)
    [decision] = running_hub.admin("/api/decisions", rule_id="post_purchase_support")["decisions"]
    explained = running_hub.admin(f"/api/decisions/{decision['decision_id']}")
    late, merged_by = explained["judged_again_after"], explained["merged_by"]
    assert (late["event"], merged_by["event"]) == ("Order Completed", "identify")
    result = touchhub("decisions", "explain", decision["decision_id"], HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db",
                      COLUMNS="400")  # the line holds two ids: unwrapped
    assert (
        f"judged again at {as_printed(explained['created_at'])}, when a late Order Completed "
        f"(at {as_printed(late['occurred_at'])}) came in with a merge (identify at {as_printed(merged_by['occurred_at'])}, "
        f"{merged_by['touchpoint_id']}) ({late['touchpoint_id']})"
    ) in tree_lines(result.stdout)
