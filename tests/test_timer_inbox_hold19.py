"""The timer worker holds a timer while an event received before it was armed still waits in the inbox, whenever
that event is next available to the pipeline: after a failed attempt's backoff, or a replay's reload delay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub import identity
from hub.clock import utcnow
from hub.model import RawEvent
from hub.replay import replay_source
from hub.runtime import Hub
from hub.store import Store, inbox
from tests.conftest import make_settings, message
from tests.test_absence_timers import timer_statuses
from tests.test_query_plans import plans_of

BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
CHECKOUT = "Order Completed"


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Iterator[Hub]:
    """A hub whose workers are not started, one pipeline row a batch: the test drives each step."""
    started = Hub(make_settings(
        tmp_path, database_url=database_url, quiet_hours="", lease_seconds=0.5,
        worker_batch_size=1, pipeline_backlog_batch_size=1, pipeline_max_attempts=2,
    ))
    yield started
    started.store.dispose()


def ago(**delta: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).isoformat()



def cart_and_checkout_in_a_backlog(hub: Hub) -> None:
    """amy's cart and her checkout reach the inbox together (a backlog); the pipeline takes in all but the
    checkout, which is next."""
    backlog = [
        message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=ago(days=1)),
        message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3)),
        message(userId="amy", event=CHECKOUT, timestamp=ago(minutes=2, seconds=50)),
    ]
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in backlog], utcnow())
    assert hub.pipeline.run_once() == 1 and hub.pipeline.run_once() == 1  # the identify, the cart: its timer is due
    assert timer_statuses(hub) == ["pending"]


def checkout_taken_in_cancels_the_wait(hub: Hub) -> None:
    """Once the checkout is available again (a few seconds on) the pipeline takes it in, and the held timer
    ends without a nudge."""
    assert hub.pipeline.run_once(utcnow() + timedelta(seconds=5)) == 1
    hub.timers.run_once()
    assert timer_statuses(hub) == ["cancelled"]


def checkout_fails(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The checkout's next `times` pipeline attempts raise, as a transient database error would."""
    resolve, failures = identity.resolve, iter(range(times))

    def failing(touchpoint: object, *args: object, **kwargs: object) -> object:
        if getattr(touchpoint, "event", None) == CHECKOUT and next(failures, None) is not None:
            raise RuntimeError("could not serialize access (a transient database error)")
        return resolve(touchpoint, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(identity, "resolve", failing)


@BOTH_DATABASES
def test_a_timer_waits_while_its_follow_up_is_postponed_in_the_inbox_after_a_failed_attempt(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkout's first attempt failed and was postponed 2 s. The timer worker read the oldest waiting
    event's `available_at` (its retry time), not when it was received, so the cart's timer fired in that gap
    and nudged a person who had bought."""
    cart_and_checkout_in_a_backlog(hub)
    checkout_fails(monkeypatch, times=1)
    assert hub.pipeline.run_once() == 1  # the checkout failed once: postponed, still waiting in the inbox
    with hub.store.read() as connection:
        assert inbox.count_by_status(connection).get("pending") == 1
    hub.timers.run_once()
    assert timer_statuses(hub) == ["pending"], "the cart's timer fired while its follow-up waited in the inbox"
    checkout_taken_in_cancels_the_wait(hub)


@BOTH_DATABASES
def test_a_timer_waits_while_its_quarantined_follow_up_is_replayed(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkout was quarantined after its attempts failed, and replayed before the cart's timer fired. A
    replayed row is available only once every hub has reloaded the mapping; the timer worker read that time,
    not when the checkout was received, and fired the cart's timer before the replayed checkout could
    cancel it."""
    cart_and_checkout_in_a_backlog(hub)
    checkout_fails(monkeypatch, times=2)
    assert hub.pipeline.run_once() == 1  # the first failure: postponed 2 s
    assert hub.pipeline.run_once(utcnow() + timedelta(seconds=3)) == 1  # the second, once due again: quarantined
    with hub.store.read() as connection:
        assert inbox.count_by_status(connection).get("failed") == 1
    assert replay_source(hub, "default", utcnow() - timedelta(hours=1)).requeued == 1
    hub.timers.run_once()
    assert timer_statuses(hub) == ["pending"], "the cart's timer fired while its replayed follow-up waited"
    checkout_taken_in_cancels_the_wait(hub)


def test_the_oldest_waiting_event_is_read_as_the_first_entry_of_an_index(store: Store) -> None:
    """Read on each pass of the timer worker that finds work, with the inbox's whole backlog pending: a sort or
    a walk of that backlog would grow with it."""
    received = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with store.write() as connection:
        inbox.append(connection, [RawEvent("default", str(n), {"n": n}) for n in range(3)], received)
        with plans_of(connection, "inbox") as plans:
            assert inbox.oldest_waiting(connection) == received
    assert len(plans) == 1 and "ix_inbox_status_received" in plans[0] and "TEMP B-TREE" not in plans[0], plans
