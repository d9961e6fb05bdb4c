"""An event cannot have happened after the hub received it: a time the sender dated later (its clock runs fast)
is taken as the time the hub received the event, and the sender's own time is kept beside it in the context."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub import trigger_lab
from hub.clock import utcnow
from hub.mapping import load_mapping
from hub.model import RawEvent
from hub.normalize import normalize
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from connectors.sources.segment import SegmentSource
from hub.store import decisions, inbox
from tests.conftest import RunningHub, make_settings, message
from tests.test_absence_timers import timer_statuses
from tests.test_sources import build, sdk_batch

BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
FAST = timedelta(minutes=10)  # how far ahead the cart platform's clock runs


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Iterator[Hub]:
    """A hub whose workers are not started: the test takes each event in at the time it reached the hub."""
    started = Hub(make_settings(tmp_path, database_url=database_url, quiet_hours=""))
    yield started
    started.delivery.close()
    started.store.dispose()


def received(hub: Hub, at: datetime, *messages: dict) -> None:
    """The messages reach the hub at `at` and the pipeline takes them in then."""
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], at)
    while hub.pipeline.run_once(at):
        pass


def fired_rules(hub: Hub, at: datetime) -> dict[str, int]:
    """The decisions made once every timer due by `at` has fired."""
    while hub.timers.run_once(at):
        pass
    with hub.store.read() as connection:
        return decisions.count_by_rule(connection)


def amy(at: datetime) -> dict:
    return message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=(at - timedelta(days=1)).isoformat())


@BOTH_DATABASES
def test_a_checkout_after_a_cart_dated_by_a_fast_clock_ends_the_wait(hub: Hub) -> None:
    """The cart came from a platform whose clock is 10 minutes fast, the checkout a minute later from a correct
    one. Before, the cart's wait was anchored 10 minutes ahead: the checkout fell before it, did not end the
    wait, and the person who bought got a cart_abandonment nudge."""
    now = utcnow()
    received(hub, now, amy(now), message(userId="amy", event="Cart Viewed", timestamp=(now + FAST).isoformat()))
    checkout_at = now + timedelta(minutes=1)
    received(hub, checkout_at, message(userId="amy", event="Order Completed", timestamp=checkout_at.isoformat()))
    assert fired_rules(hub, now + FAST + timedelta(minutes=5)) == {}
    assert timer_statuses(hub) == ["cancelled"]



@BOTH_DATABASES
def moved_back_whole(ahead: timedelta) -> tuple[datetime, list[Any]]:
    """A cart and its checkout 30 s later from a clock `ahead`, parsed: the batch moved back whole (its spacing
    kept, its latest at the time received, the sender's times kept); when it was sent, and its events."""
    now = utcnow()
    cart = message(userId="amy", event="Cart Viewed", timestamp=(now + ahead).isoformat())
    checkout = message(userId="amy", event="Order Completed", timestamp=(now + ahead + timedelta(seconds=30)).isoformat())
    parsed = build(SegmentSource, write_key="wk").parse(sdk_batch(cart, checkout)).events
    cart_time, checkout_time = (datetime.fromisoformat(event.payload["timestamp"]) for event in parsed)
    assert checkout_time - cart_time == timedelta(seconds=30)
    assert checkout_time == datetime.fromisoformat(parsed[1].payload["receivedAt"])
    assert parsed[0].payload["originalTimestamp"] == cart["timestamp"]
    return now, parsed


def test_a_batch_dated_ahead_keeps_its_order_and_its_checkout_ends_the_cart_wait(hub: Hub) -> None:
    """A batch without `sentAt` from a clock 10 minutes fast: the cart, then its checkout 30 s later. Pulled back
    one by one, both met at the time received, where a checkout does not end a wait begun at its own instant:
    the buyer was nudged. The batch is moved back whole instead, its spacing kept."""
    now, parsed = moved_back_whole(FAST)
    received(hub, now, amy(now), *(event.payload for event in parsed))
    assert fired_rules(hub, now + timedelta(minutes=5)) == {}
    assert timer_statuses(hub) == ["cancelled"]

def test_two_product_views_a_minute_apart_count_together_whatever_the_first_ones_clock(hub: Hub) -> None:
    """Before, the view dated 10 minutes ahead lay outside the 5-minute window of the view made a minute after
    it: comparison_hesitation never offered help to a person comparing two products."""
    now = utcnow()
    viewed = [
        message(userId="amy", event="Product Viewed", properties={"product_id": product}, timestamp=at.isoformat())
        for product, at in (("p-1", now + FAST), ("p-2", now + timedelta(minutes=1)))
    ]
    received(hub, now, amy(now), viewed[0])
    received(hub, now + timedelta(minutes=1), viewed[1])
    assert fired_rules(hub, now + timedelta(minutes=1)) == {"comparison_hesitation": 1}


def test_the_touchpoint_shows_it_happened_when_the_hub_received_it(running_hub: RunningHub) -> None:
    """An SDK message without `sentAt`, dated 10 minutes ahead. Before, the touchpoint was stored and shown as
    happening 10 minutes after the hub received it; now its batch is taken as sent at its latest time
    (`segment_times.latest_if_ahead`), the device's own time kept as `originalTimestamp`, as for `sentAt`."""
    sent_time = (utcnow() + FAST).replace(microsecond=0)
    assert running_hub.send(message(userId="amy", event="Cart Viewed", timestamp=sent_time.isoformat())).status_code == 200
    running_hub.settle()
    [touchpoint] = running_hub.admin("/api/touchpoints")["touchpoints"]
    occurred_at, received_at = (datetime.fromisoformat(touchpoint[key]) for key in ("occurred_at", "received_at"))
    assert timedelta(0) <= received_at - occurred_at < timedelta(seconds=1)


@pytest.mark.parametrize("mapping_file", ["segment.yaml", "rudderstack.yaml"])
def test_a_time_after_receipt_is_kept_as_the_senders_in_the_context(mapping_file: str) -> None:
    """A message that reached the pipeline uncorrected (a webhook platform's clock, a relay): before, its
    touchpoint happened 10 minutes after it was received."""
    received_at = utcnow()
    sent_time = received_at + FAST
    raw = RawEvent("src", "m-1", message(userId="amy", event="Cart Viewed", timestamp=sent_time.isoformat()))
    touchpoint = normalize(raw, load_mapping(PROJECT_MAPPINGS / mapping_file), received_at, "US")
    assert touchpoint.occurred_at == received_at
    assert datetime.fromisoformat(touchpoint.context["originalTimestamp"]) == sent_time


def test_the_trigger_lab_judges_a_time_after_receipt_as_the_live_hub_does(tmp_path: Path) -> None:
    """An events file exported with `receivedAt`: the cart dated 10 minutes after it reached the hub, the order
    taken in a minute later. Before, the lab (as the live hub) anchored the cart's wait 10 minutes ahead and
    showed a cart_abandonment nudge to the person who bought."""
    cart_received = datetime.fromisoformat("2026-01-05T10:00:00+00:00")
    order_at = (cart_received + timedelta(minutes=1)).isoformat()
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(m) for m in (
        {**amy(cart_received), "receivedAt": cart_received.isoformat()},
        message(userId="amy", event="Cart Viewed", timestamp=(cart_received + FAST).isoformat(),
                receivedAt=cart_received.isoformat()),
        message(userId="amy", event="Order Completed", timestamp=order_at, receivedAt=order_at),
    )))
    result = trigger_lab.run(PROJECT_MAPPINGS / "triggers.yaml", events, make_settings(tmp_path, quiet_hours=""))
    assert [d["rule_id"] for d in result.decisions] == []
    assert result.events == 3 and result.left_out == []
