"""`touchhub triggers test` takes in the messages that reached the hub at one moment together, as the live hub does."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from hub import trigger_lab
from hub.clock import utcnow
from hub.model import RawEvent
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.store import decisions, inbox
from tests.conftest import make_settings, message


def offline_flush(now: datetime) -> list[dict]:
    """amy's phone was offline: her cart (10 minutes ago) and her order a minute later reach the hub together,
    in one flush of the SDK's queue, sent now."""
    sent = now.isoformat()
    return [
        message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=(now - timedelta(days=1)).isoformat()),
        message(userId="amy", event="Cart Viewed", timestamp=(now - timedelta(minutes=10)).isoformat(), sentAt=sent),
        message(userId="amy", event="Order Completed", timestamp=(now - timedelta(minutes=9)).isoformat(), sentAt=sent),
    ]


def live_decisions(folder: Path, flush: list[dict], now: datetime) -> dict[str, int]:
    """What the live hub decides on the flush, received `now`: its pipeline drained, then its timers."""
    live = Hub(make_settings(folder, quiet_hours="", lease_seconds=0.5))
    try:
        with live.store.write() as connection:
            inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in flush], now)
        while live.pipeline.run_once():
            pass
        while live.timers.run_once():
            pass
        with live.store.read() as connection:
            return decisions.count_by_rule(connection)
    finally:
        live.delivery.close()
        live.store.dispose()


def test_the_lab_takes_in_an_sdk_flush_as_the_live_hub_does_before_firing_the_timer_it_arms(tmp_path: Path) -> None:
    """Before, the lab took in the flush one message at a time and fired the timers due before each: the cart's
    timer, overdue the moment it was armed, fired before the order (which arrived with it) was taken in, so the
    lab showed a cart_abandonment nudge to a person who had bought. The live hub takes both in first and the
    order cancels the wait."""
    now = utcnow().replace(microsecond=0)
    flush = offline_flush(now)
    assert live_decisions(tmp_path / "live", flush, now) == {}  # the live hub: the order cancelled the wait

    events = tmp_path / "flush.jsonl"
    events.write_text("\n".join(json.dumps(m) for m in flush))
    (tmp_path / "lab").mkdir()
    result = trigger_lab.run(PROJECT_MAPPINGS / "triggers.yaml", events, make_settings(tmp_path / "lab", quiet_hours=""))
    assert [d["rule_id"] for d in result.decisions] == [], "the lab nudged where the live hub does not"
    assert result.events == 3 and result.left_out == []
