"""`touchhub triggers test` reads an event's time as the live hub does: the times it takes, it takes as the hub
reads them, and one the hub cannot hold is named at its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub import trigger_lab
from hub.errors import ConfigError
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import make_settings

SHIPPED_RULES = PROJECT_MAPPINGS / "triggers.yaml"
IDENTIFY = {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}}
CART = {"type": "track", "userId": "ana", "event": "Product Added"}  # then nothing: cart_abandonment due 2 min later


def write_events(path: Path, *messages: dict[str, object]) -> Path:
    path.write_text("\n".join(json.dumps(m) for m in messages))
    return path


@pytest.mark.parametrize("times", [
    pytest.param(({"timestamp": "2026-01-05T09:59:00"}, {"timestamp": "2026-01-05T10:00:00"}), id="no offset"),
    pytest.param((  # RudderStack's SDKs leave `timestamp` to the server
        {"originalTimestamp": "2026-01-05T09:59:00Z", "sentAt": "2026-01-05T09:59:01Z"},
        {"originalTimestamp": "2026-01-05T10:00:00Z", "sentAt": "2026-01-05T10:00:01Z"},
    ), id="rudderstack"),
])
def test_the_lab_takes_event_times_the_live_hub_takes(tmp_path: Path, times: tuple[dict[str, str], dict[str, str]]) -> None:
    """A time without an offset (UTC to the Segment source and `normalize`) and a RudderStack message timed by its
    `originalTimestamp` (the shipped mapping reads `timestamp || originalTimestamp`) are taken in by the live hub;
    the lab refused the whole file ("needs a time zone", "timestamp: missing")."""
    identify, cart = times
    events = write_events(tmp_path / "e.jsonl", {**IDENTIFY, **identify}, {**CART, **cart})
    result = trigger_lab.run(SHIPPED_RULES, events, make_settings(tmp_path, quiet_hours=""))
    assert [(d["rule_id"], d["decided_at"].isoformat()) for d in result.decisions] == [
        ("cart_abandonment", "2026-01-05T10:02:00+00:00")
    ]
    assert (result.events, result.left_out) == (2, [])


@pytest.mark.parametrize("timestamp", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00"])
def test_a_timestamp_outside_the_utc_calendar_is_named_at_its_line_not_a_traceback(tmp_path: Path, timestamp: str) -> None:
    """Valid ISO-8601, but outside the years 1-9999 once in UTC (the live hub quarantines such an event): the lab
    set its clock to it and died in the store with `OverflowError: date value out of range`."""
    events = write_events(
        tmp_path / "e.jsonl", {**IDENTIFY, "timestamp": "2026-01-05T09:59:00Z"},
        {**CART, "timestamp": "2026-01-05T10:00:00Z"}, {**CART, "event": "Product Viewed", "timestamp": timestamp},
    )
    with pytest.raises(ConfigError) as caught:
        trigger_lab.run(SHIPPED_RULES, events, make_settings(tmp_path, quiet_hours=""))
    assert caught.value.problems == [
        f"{events}:3: timestamp: {timestamp!r} is not a time within the years 1 to 9999 (UTC), so the live hub "
        "quarantines this message; give a time within them, or take the message out of the file"
    ]
