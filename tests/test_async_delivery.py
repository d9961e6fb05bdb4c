"""The engine's async send path: one event loop per engine, bounded sends in flight, blocking SDKs in threads.

The webhooks' own async client is tested beside their sync one, in
`test_webhook_destination.py`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel
from sqlalchemy import event, select

from connectors.base import Destination
from hub.clock import utcnow
from hub.delivery import DeliveryEngine
from hub.delivery_policy import DeliveryPolicyFile, PolicyBook
from hub.model import Delivery, PlannedDelivery, SendResult, derived_id
from hub.quiet_hours import QuietHours
from hub.settings import HubSettings
from hub.store import Store, outbox
from hub.store.delivery_log import search as search_delivery_log
from hub.store.schema import deliveries


class NoConfig(BaseModel):
    pass


class BlockingPager(Destination):
    """A destination over a blocking SDK: only `send`, which notes the thread it ran on."""

    slug = "blocking_pager"
    title = "Blocking pager"
    channel = "sms"
    Config = NoConfig

    def __init__(self) -> None:
        super().__init__(self.slug, NoConfig())
        self.threads: set[str] = set()

    def send(self, delivery: Delivery) -> SendResult:
        self.threads.add(threading.current_thread().name)
        if delivery.target == "unknown":
            raise LookupError("no such pager")
        return SendResult("sent", f"page-{delivery.target}")


class CountingPager(BlockingPager):
    """The same pager with an async client, counting how many of its sends are in flight at once."""

    slug = "counting_pager"

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0

    async def send_async(self, delivery: Delivery) -> SendResult:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        for _ in range(5):  # let every other send that may start, start
            await asyncio.sleep(0)
        self.in_flight -= 1
        return SendResult("sent", f"page-{delivery.target}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path}/hub.db")
    opened.migrate()
    yield opened
    opened.dispose()


def plan(store: Store, destination_id: str, targets: list[str]) -> None:
    rows = [
        PlannedDelivery(
            delivery_id=derived_id("async-test", target), decision_id=derived_id("async-decision", target),
            profile_id=f"P-{target}", channel="sms", destination_id=destination_id, target=target,
            content={"body": "Hi", "template": "t.j2", "rule_id": "r1", "params": {}},
        )
        for target in targets
    ]
    with store.write() as connection:
        outbox.plan(connection, rows, utcnow())


def engine(store: Store, target: Destination, concurrency: int, batch_size: int = 100) -> DeliveryEngine:
    policies = PolicyBook(DeliveryPolicyFile(), HubSettings(_env_file=None))  # type: ignore[call-arg]
    return DeliveryEngine(
        store, {target.destination_id: target}, policies, batch_size=batch_size, lease=timedelta(seconds=60),
        concurrency=concurrency,
    )


def delivery_log(store: Store) -> dict[str, dict]:
    with store.read() as connection:
        return {item["target"]: item for item in search_delivery_log(connection, limit=100)}


def test_a_blocking_destination_sends_from_the_engines_worker_threads_and_its_errors_are_classified(store: Store) -> None:
    pager = BlockingPager()
    plan(store, pager.slug, ["101", "unknown"])
    running = engine(store, pager, concurrency=4)
    assert running.run_once() == 2
    running.close()
    log = delivery_log(store)
    assert log["101"]["status"] == "sent" and log["101"]["attempt_log"][0]["provider_message_id"] == "page-101"
    [failed] = log["unknown"]["attempt_log"]
    assert (failed["outcome"], failed["error_class"]) == ("retryable", "unexpected.LookupError")
    assert pager.threads and all(name.startswith("send") for name in pager.threads)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_sends_in_flight_never_exceed_the_concurrency(store: Store, concurrency: int) -> None:
    pager = CountingPager()
    plan(store, pager.slug, [str(n) for n in range(12)])
    running = engine(store, pager, concurrency)
    assert running.run_once() == 12
    running.close()
    assert pager.most_in_flight == concurrency
    assert not pager.threads  # the async client was used, no worker thread
    assert {item["status"] for item in delivery_log(store).values()} == {"sent"}


def test_each_batch_is_recorded_in_the_transaction_that_claims_the_next(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    pager = CountingPager()
    plan(store, pager.slug, [str(n) for n in range(5)])
    running = engine(store, pager, concurrency=4, batch_size=2)
    begun: list[object] = []
    event.listen(store.engine, "begin", begun.append)
    claims: list[int] = []
    claim_due = outbox.claim_due
    monkeypatch.setattr(outbox, "claim_due", lambda *args: claims.append(1) or claim_due(*args))
    assert [running.run_once() for _ in range(4)] == [2, 2, 1, 0]  # the last: the look after the batch of 1 found nothing
    assert (len(begun), len(claims)) == (4, 4)  # one claim, then one record + claim per batch; no look of its own after
    plan(store, pager.slug, ["late"])
    assert running.run_once() == 1  # the call after an empty look looks again
    running.close()
    assert {item["status"] for item in delivery_log(store).values()} == {"sent"}


def test_a_batch_claimed_and_not_sent_is_put_back_on_close(store: Store) -> None:
    pager = CountingPager()
    plan(store, pager.slug, ["1", "2", "3"])
    running = engine(store, pager, concurrency=4, batch_size=2)
    assert running.run_once() == 2
    running.close()  # the record claimed "3"
    with store.read() as connection:
        [left] = connection.execute(
            select(deliveries.c.target, deliveries.c.claimed_until).where(deliveries.c.status == "pending")
        ).all()
    assert left == ("3", None)
    again = engine(store, pager, concurrency=4)
    assert again.run_once() == 1
    again.close()


class SlowPager(CountingPager):
    """A pager whose "slow..." targets answer after a second (a receiver near its timeout); it notes when each
    send ends."""

    slug = "slow_pager"

    def __init__(self) -> None:
        super().__init__()
        self.ended: dict[str, float] = {}

    async def send_async(self, delivery: Delivery) -> SendResult:
        if delivery.target.startswith("slow"):
            await asyncio.sleep(1.0)
        self.ended[delivery.target] = time.monotonic()
        return SendResult("sent", f"page-{delivery.target}")


def statuses(store: Store) -> dict[str, str]:
    return {target: item["status"] for target, item in delivery_log(store).items()}


def test_a_slow_send_carries_over_and_holds_back_no_delivery_planned_meanwhile(store: Store) -> None:
    pager = SlowPager()
    plan(store, pager.slug, ["slow"])
    running = engine(store, pager, concurrency=4)
    assert running.run_once() == 1  # "slow" still in flight after the run's wait: carried over
    plan(store, pager.slug, ["late"])
    assert running.run_once() == 1  # waited on "slow" again, and its record claimed "late"
    assert running.run_once() == 2  # "late" sent and recorded, "slow" still in flight
    assert statuses(store) == {"slow": "pending", "late": "sent"}
    assert "slow" not in pager.ended
    running.close()  # waits for "slow" and records it
    assert statuses(store) == {"slow": "sent", "late": "sent"}
    assert pager.ended["late"] < pager.ended["slow"]


def test_beside_sends_carried_over_a_claim_takes_only_the_room_left(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    pager = SlowPager()
    plan(store, pager.slug, ["slow"])
    running = engine(store, pager, concurrency=3, batch_size=10)
    claims: list[int] = []
    claim_due = outbox.claim_due
    monkeypatch.setattr(outbox, "claim_due", lambda connection, limit, *args: claims.append(limit) or claim_due(connection, limit, *args))
    assert running.run_once() == 1
    plan(store, pager.slug, [str(n) for n in range(5)])
    assert running.run_once() == 1  # claims 2 of the 5: "slow" holds one of the 3 places
    assert running.run_once() == 3  # those 2 recorded, 2 more claimed, "slow" in flight
    assert claims == [10, 2, 2, 2]
    running.close()
    assert set(statuses(store).values()) == {"sent", "pending"}
    assert statuses(store)["slow"] == "sent"


def test_a_destination_at_its_limit_of_sends_in_flight_is_passed_over_while_the_others_go_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow, fast = SlowPager(), CountingPager()
    plan(store, slow.slug, ["slow", "slow-too"])
    policies = PolicyBook(DeliveryPolicyFile.model_validate({"destinations": {slow.slug: {"max_in_flight": 1}}}),
                          HubSettings(_env_file=None))  # type: ignore[call-arg]
    running = DeliveryEngine(
        store, {slow.slug: slow, fast.slug: fast}, policies, batch_size=10, lease=timedelta(seconds=60), concurrency=4,
    )
    claimed: list[str] = []
    claim_due = outbox.claim_due
    monkeypatch.setattr(outbox, "claim_due", lambda *args: [d for d in claim_due(*args) if not claimed.append(d.target)])
    assert running.run_once() == 2  # "slow" in flight; "slow-too", claimed with it, waits for its one place
    plan(store, fast.slug, ["fast"])
    while statuses(store)["fast"] != "sent":  # "slow-too" went back to the outbox; later claims pass it over
        assert running.run_once() and "slow" not in slow.ended
    assert sorted(claimed) == ["fast", "slow", "slow-too"]  # "slow-too" claimed once
    log = delivery_log(store)
    assert {target: (item["status"], len(item["attempt_log"])) for target, item in log.items()} == {
        "slow": ("pending", 0), "slow-too": ("pending", 0), "fast": ("sent", 1),
    }
    running.close()
    assert statuses(store) == {"slow": "sent", "slow-too": "pending", "fast": "sent"}
    assert set(slow.ended) == {"slow"}  # "slow-too" was never sent beside it


def test_a_send_beyond_its_destinations_limit_waits_for_a_place_that_frees_within_the_wait(store: Store) -> None:
    pager = CountingPager()
    plan(store, pager.slug, [str(n) for n in range(6)])
    policies = PolicyBook(DeliveryPolicyFile.model_validate({"destinations": {pager.slug: {"max_in_flight": 2}}}),
                          HubSettings(_env_file=None))  # type: ignore[call-arg]
    running = DeliveryEngine(store, {pager.slug: pager}, policies, batch_size=10, lease=timedelta(seconds=60), concurrency=8)
    assert running.run_once() == 6  # one claim of 6, two sends at a time, none put back
    running.close()
    assert pager.most_in_flight == 2
    assert set(statuses(store).values()) == {"sent"}


def test_a_wake_cuts_a_runs_wait_for_its_sends_short(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deliveries planned while a run waits for its sends are claimed at once, not after the wait: with a wait
    of 10 s here, a run woken after 0.1 s ends long before its slow send (1 s) has."""
    monkeypatch.setattr("hub.delivery.SEND_WAIT_SECONDS", 10.0)
    pager = SlowPager()
    plan(store, pager.slug, ["slow"])
    running = engine(store, pager, concurrency=4)
    waker = threading.Timer(0.1, running.wake)
    started = time.monotonic()
    waker.start()
    assert running.run_once() == 1  # woken: "slow" still in flight, carried over
    assert "slow" not in pager.ended  # the run did not wait for it (a bound in seconds failed on a loaded box)
    assert running.run_once() == 1  # not woken: waits for "slow", which ends within its second
    assert time.monotonic() - started >= 1.0
    assert statuses(store) == {"slow": "sent"}
    running.close()


def sms_in_quiet_hours_now(store: Store, zones: dict[str, str | None]) -> tuple[int, str]:
    """SMS rows to each target (marked with its zone to judge quiet hours in, or None: an urgent rule's), run
    once by an engine whose quiet hours hold now in UTC: how many it sent, and when the hours end (HH:MM)."""
    now = utcnow()
    window = f"{(now - timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=1)):%H:%M}"
    pager = CountingPager()
    rows = [
        PlannedDelivery(
            delivery_id=derived_id("quiet-test", target), decision_id=derived_id("quiet-decision", target),
            profile_id=f"P-{target}", channel="sms", destination_id=pager.slug, target=target,
            content={"body": "Hi", "template": "t.j2", "rule_id": "r1", "params": {}, **({"quiet_zone": zone} if zone else {})},
        )
        for target, zone in zones.items()
    ]
    with store.write() as connection:
        outbox.plan(connection, rows, now)
    policies = PolicyBook(DeliveryPolicyFile(), HubSettings(_env_file=None))  # type: ignore[call-arg]
    running = DeliveryEngine(store, {pager.slug: pager}, policies, batch_size=10, lease=timedelta(seconds=60),
                             concurrency=4, quiet_hours=QuietHours.parse(window, "UTC"))
    sent = running.run_once()
    running.close()
    return sent, window.split("-")[1]


def test_a_retry_or_replay_coming_due_in_quiet_hours_waits_for_them_to_end(store: Store) -> None:
    """Routing holds a non-urgent message planned in quiet hours and marks it with the zone to judge them in;
    a retry or a replay of it that comes due inside them goes back to the outbox until they end, unsent."""
    sent, hours_end = sms_in_quiet_hours_now(store, {"nudge": "UTC", "urgent": None})
    assert sent == 1  # only the one without a zone (an urgent rule's) is sent
    log = delivery_log(store)
    assert (log["nudge"]["status"], log["nudge"]["attempts"], log["urgent"]["status"]) == ("pending", 0, "sent")
    with store.read() as connection:
        due = connection.execute(select(deliveries.c.next_attempt_at).where(deliveries.c.target == "nudge")).scalar_one()
    assert due.strftime("%H:%M") == hours_end


def test_a_held_message_whose_zone_this_host_cannot_load_is_judged_in_the_default_zone(store: Store) -> None:
    """A node with newer tz data can plan a message in a zone this one does not know. Loading it raised inside
    the claim: the row stayed at the head of the queue and every claim failed, so no delivery went at all."""
    sent, _ = sms_in_quiet_hours_now(store, {"unknown-zone": "America/Not_Here_Yet", "urgent": None})
    assert sent == 1
    log = delivery_log(store)
    assert (log["unknown-zone"]["status"], log["urgent"]["status"]) == ("pending", "sent")  # held in UTC's quiet hours


def test_a_send_outliving_its_lease_while_the_engine_closes_keeps_its_lease(store: Store) -> None:
    """`close` waited for the sends in flight without renewing their leases: an SMTP relay taking its 10 minutes
    to answer the end of a message let the lease run out, and another node claimed the email and sent it again."""
    pager = SlowPager()
    plan(store, pager.slug, ["slow"])
    running = DeliveryEngine(
        store, {pager.destination_id: pager}, PolicyBook(DeliveryPolicyFile(), HubSettings(_env_file=None)),  # type: ignore[call-arg]
        batch_size=10, lease=timedelta(seconds=0.4), concurrency=4,
    )
    assert running.run_once() == 1  # "slow" in flight, carried over
    leases: list[tuple[object, object, str]] = []
    stop = threading.Event()

    def watch() -> None:  # what another node's claim would see while the engine closes
        while not stop.is_set():
            with store.read() as connection:
                until, status = connection.execute(select(deliveries.c.claimed_until, deliveries.c.status)).one()
            leases.append((utcnow(), until, status))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        running.close()
    finally:
        stop.set()
        watcher.join()
    pending = [(read_at, until) for read_at, until, status in leases if status == "pending"]
    assert len(pending) > 10  # the send took a second, two and a half leases
    assert all(until is not None and until > read_at for read_at, until in pending)  # never free for another claim
    assert statuses(store) == {"slow": "sent"}
