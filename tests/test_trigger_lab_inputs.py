"""`touchhub triggers test` takes its files in as the live hub would: what the hub refuses, drops or receives
late is simulated so, and every problem names the file the user gave, at its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub import trigger_lab
from hub.errors import ConfigError
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import make_settings

SHIPPED_RULES = PROJECT_MAPPINGS / "triggers.yaml"
CART = [  # ana adds to her cart at 10:00 and does nothing more: cart_abandonment comes due at 10:02
    {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}, "timestamp": "2026-01-05T09:59:00Z"},
    {"type": "track", "userId": "ana", "event": "Product Added", "timestamp": "2026-01-05T10:00:00Z"},
]


def write_events(path: Path, *messages: dict[str, object]) -> Path:
    path.write_text("\n".join(json.dumps(m) for m in messages))
    return path


def problems_trying(rules: Path, events: Path, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        trigger_lab.run(rules, events, make_settings(tmp_path))
    return caught.value.problems


def test_rules_that_are_not_yaml_are_reported_at_their_line_in_the_file_given(tmp_path: Path) -> None:
    """The YAML error named the hub's own mappings/triggers.yaml, the file the lab's copy stood in for."""
    rules = tmp_path / "draft.yaml"
    rules.write_text("rules:\n  - id: r1\n    when: {event: Product Added\n"
                     "    respond: [{channel: email, template: cart_abandonment.email.j2}]\n")
    [problem] = problems_trying(rules, write_events(tmp_path / "e.jsonl", *CART), tmp_path)
    assert problem.startswith(f"{rules}:4: not valid YAML: ")


RULE = "rules:\n  - id: promo\n    description: caf\u00e9 promo\n    when: {event: Product Added}\n" \
       "    respond: [{channel: email, template: cart_abandonment.email.j2}]\n"


@pytest.mark.parametrize("saved", ["rules", "events"])
def test_a_file_not_saved_as_utf8_is_refused_at_its_line(tmp_path: Path, saved: str) -> None:
    """An editor's Latin-1 `é` ended the lab in a UnicodeDecodeError traceback."""
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(RULE.encode("latin-1" if saved == "rules" else "utf-8"))
    events = tmp_path / "e.jsonl"
    events.write_bytes("\n".join(json.dumps(m, ensure_ascii=False) for m in [*CART, {**CART[1], "event": "Caf\u00e9"}])
                       .encode("latin-1" if saved == "events" else "utf-8"))
    path, line, column = (rules, 3, 21) if saved == "rules" else (events, 3, 49)
    assert problems_trying(rules, events, tmp_path) == [
        f"{path}:{line}: not UTF-8 (byte 0xe9 at column {column}, e.g. an accented letter saved as Latin-1 or "
        "Windows-1252); save the file as UTF-8"
    ]


def test_messages_the_hub_refuses_at_ingest_are_left_out_named_at_their_line(tmp_path: Path) -> None:
    """The lab tried them: a track without `event` cancelled the cart timer whose nudge the live hub sends."""
    events = write_events(
        tmp_path / "e.jsonl", *CART,
        {"type": "track", "userId": "ana", "timestamp": "2026-01-05T10:01:00Z"},
        {"type": "track", "userId": "ana", "event": "Product Viewed", "properties": "sku-1", "traits": [],
         "timestamp": "2026-01-05T10:01:00Z"},
    )
    result = trigger_lab.run(SHIPPED_RULES, events, make_settings(tmp_path))
    assert [d["rule_id"] for d in result.decisions] == ["cart_abandonment"]
    assert result.events == 2
    refused = "the hub refuses this message at ingest (it quarantines it), so it was not tried"
    assert result.left_out == [
        f"{events}:3: event: is required for track messages; {refused}",
        f"{events}:4: properties: must be a JSON object; traits: must be a JSON object; {refused}",
    ]


def test_a_file_with_no_message_the_hub_would_take_in_is_refused_listing_why(tmp_path: Path) -> None:
    """As `/v1/batch` refuses a batch with no valid message: an exit 0 would let a CI check pass untried."""
    events = write_events(tmp_path / "e.jsonl", {"type": "track", "event": "E", "timestamp": "2026-01-05T10:00:00Z"})
    assert problems_trying(SHIPPED_RULES, events, tmp_path) == [
        f"{events}:1: userId: either userId or anonymousId is required; "
        "the hub refuses this message at ingest (it quarantines it), so it was not tried",
        f"{events}: no message the hub would take in, so nothing to try",
    ]


def test_a_resent_message_without_message_id_is_tried_once_as_the_hub_stores_it_once(tmp_path: Path) -> None:
    """The hub knows such a message by a hash of its content; the lab gave each line an id of its own, and the
    resend made the third pricing page that fires high_intent_pricing."""
    def pricing(path: str, at: str) -> dict[str, object]:
        return {"type": "page", "userId": "pat", "properties": {"path": path}, "timestamp": at}

    resent = pricing("/pricing/enterprise", "2026-01-05T10:03:00Z")
    events = write_events(tmp_path / "e.jsonl", pricing("/pricing", "2026-01-05T10:00:00Z"), resent, resent)
    result = trigger_lab.run(SHIPPED_RULES, events, make_settings(tmp_path))
    assert result.decisions == []
    assert result.left_out == [
        f"{events}:3: the same message as line 2 (without a messageId, the hub knows a message by its content); "
        "the hub keeps the first copy of a message, so this one was not tried"
    ]


def test_messages_are_taken_in_when_they_reached_the_hub(tmp_path: Path) -> None:
    """The order happened at 10:01 but reached the hub at 10:05, after the 10:02 cart nudge had fired (the live
    hub then judges again what the order changes); sorted by `timestamp`, the lab let the order cancel the nudge."""
    arrived = [{**message, "receivedAt": message["timestamp"]} for message in CART] + [
        {"type": "track", "userId": "ana", "event": "Order Completed",
         "timestamp": "2026-01-05T10:01:00Z", "receivedAt": "2026-01-05T10:05:00Z"},
    ]
    result = trigger_lab.run(SHIPPED_RULES, write_events(tmp_path / "e.jsonl", *arrived), make_settings(tmp_path))
    assert [(d["rule_id"], d["decided_at"].isoformat()) for d in result.decisions] == [
        ("cart_abandonment", "2026-01-05T10:02:00+00:00")
    ]


def test_a_received_at_the_clock_cannot_place_is_refused_at_its_line(tmp_path: Path) -> None:
    events = write_events(tmp_path / "e.jsonl", *CART, {**CART[1], "receivedAt": "yesterday"})
    assert problems_trying(SHIPPED_RULES, events, tmp_path) == [
        f"{events}:3: receivedAt: 'yesterday' is not an ISO-8601 timestamp; write one such as 2026-01-05T10:00:00Z"
    ]


def test_the_lab_routes_as_a_hub_with_every_destination_configured(tmp_path: Path) -> None:
    """Routing falls back from a channel whose destination has no settings on the hub; the lab ran on a laptop or
    in CI without FCM credentials, so push fell back to email there and went as push live."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - id: pushy\n    when: {event: Product Added}\n    respond:\n"
        "      - {channel: push, template: cart_abandonment.push.j2, fallback: [{channel: email, template: cart_abandonment.email.j2}]}\n"
        "    vars: {discount_code: C, discount_percent: 10, cart_url: 'https://shop.example.com/cart'}\n"
    )
    device = {"device": {"token": "fcm-token-0123456789abcdef", "type": "ios"}}
    events = write_events(
        tmp_path / "events.jsonl",
        {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}, "timestamp": "2026-03-01T10:00:00Z", "context": device},
        {"type": "track", "userId": "ana", "event": "Product Added", "timestamp": "2026-03-01T10:01:00Z", "context": device},
    )
    [decision] = trigger_lab.run(rules, events, make_settings(tmp_path, quiet_hours="")).decisions
    assert [(action["channel"], action["fate"]) for action in decision["actions"]] == [("push", "planned")]


def test_a_timer_whose_firing_fails_is_listed_at_the_line_that_started_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab gives a timer one attempt, as the hub gives it HUB_PIPELINE_MAX_ATTEMPTS: it is settled failed at
    once, and was then reported nowhere, a rule that fails live showing as one that decided nothing."""
    from hub import triggers

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(triggers, "evaluate_expired", broken)
    events = write_events(
        tmp_path / "events.jsonl",
        {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}, "timestamp": "2026-03-01T10:00:00Z"},
        {"type": "track", "userId": "ana", "event": "Product Added", "timestamp": "2026-03-01T10:01:00Z"},
    )
    result = trigger_lab.run(PROJECT_MAPPINGS / "triggers.yaml", events, make_settings(tmp_path, quiet_hours=""))
    assert (result.decisions, result.left_out) == ([], [f"{events}:2: the cart_abandonment timer it started failed to fire: RuntimeError: boom"])


def test_the_lab_reports_its_progress_as_it_takes_events_in(tmp_path: Path) -> None:
    """`touchhub triggers test` ran a few thousand events for half a minute without a sign of life; the CLI's
    progress bar follows these reports. Events that arrived at one moment are taken in, and reported, together."""
    flushed = {"type": "track", "userId": "ana", "event": "Product Viewed", "timestamp": "2026-01-05T10:01:00Z"}
    events = write_events(tmp_path / "e.jsonl", *CART, flushed, {**flushed, "properties": {"sku": "2"}})
    reports: list[tuple[int, int]] = []
    trigger_lab.run(SHIPPED_RULES, events, make_settings(tmp_path), on_events=lambda *report: reports.append(report))
    assert reports == [(1, 4), (2, 4), (4, 4)]
