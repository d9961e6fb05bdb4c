"""HUB_WORKERS: a process runs only some workers, and the others pick up its work from the store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from hub.runtime import Hub
from hub.settings import HubSettings
from hub.store import Store, inbox, outbox
from tests.conftest import RunningHub


def test_workers_are_read_from_a_comma_separated_list() -> None:
    assert HubSettings(_env_file=None, workers="pipeline, delivery").worker_roles == ("pipeline", "delivery")  # type: ignore[call-arg]
    assert HubSettings(_env_file=None).worker_roles == ("pipeline", "timers", "delivery")  # type: ignore[call-arg]
    assert HubSettings(_env_file=None, workers="").worker_roles == ()  # type: ignore[call-arg]  # ingest only


def test_an_unknown_worker_is_refused_with_the_choices() -> None:
    with pytest.raises(ValidationError, match="unknown worker pipelines: pick from pipeline, timers, delivery"):
        HubSettings(_env_file=None, workers="pipelines,timers")  # type: ignore[call-arg]


def journey(now: datetime) -> list[dict]:
    """A purchaser's ticket: post_purchase_support answers with an SMS (and an email and a CRM update)."""
    person = {"userId": "split-1", "context": {"traits": {"phone": "+14155550177", "email": "split@example.com"}}}
    return [
        {"type": "track", "event": "Order Completed", "messageId": "m-1", **person, "timestamp": (now - timedelta(days=1)).isoformat()},
        {"type": "track", "event": "Ticket Submitted", "messageId": "m-2", **person, "timestamp": now.isoformat()},
    ]


def events_pending(store: Store) -> int:
    with store.read() as connection:
        return inbox.count_by_status(connection).get("pending", 0)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.hub_settings(workers="pipeline")
def test_a_pipeline_only_process_leaves_its_deliveries_to_a_delivery_process(running_hub: RunningHub) -> None:
    assert running_hub.send(*journey(datetime.now(timezone.utc))).status_code == 200
    store = running_hub.hub.store
    wait_for(lambda: events_pending(store) == 0)
    with store.read() as connection:
        planned = outbox.count_by_channel_and_status(connection)
    assert {row["channel"] for row in planned} >= {"sms", "email"} and {row["status"] for row in planned} == {"pending"}
    assert running_hub.sandbox.twilio.messages == []
    assert not {"timers", "delivery"} & {thread.name for thread in threading.enumerate()}

    other = Hub(running_hub.hub.settings.with_overrides(workers="timers,delivery"))
    other.start()
    try:
        assert other.wait_until_idle(timeout=20)
    finally:
        other.stop()
    [sms] = running_hub.sandbox.twilio.messages
    assert sms["to"] == "+14155550177"
    [email] = running_hub.sandbox.smtp.received
    assert email.rcpt_tos == ["split@example.com"]
