"""A delivery's lease between two nodes: a node that stalled past its lease (a paused VM) while its send was in
flight, and thaws while another node, which claimed the delivery meanwhile, is sending it.

Each node is a store (engine and pool) of its own, as on separate machines, driven step by step by the test; the
race is made deterministic by holding each send open until the test lets it end (only a lease is waited out).
At-least-once allows the second node's send; nothing the first node writes late may allow a third.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from connectors.base import Destination
from hub.clock import utcnow
from hub.delivery import DeliveryEngine
from hub.delivery_policy import DeliveryPolicyFile, PolicyBook
from hub.model import Delivery, PlannedDelivery, SendResult, derived_id
from hub.settings import HubSettings
from hub.store import Store, outbox
from hub.store.schema import attempts, deliveries

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

STALLING_LEASE = 0.5  # node A's, waited out
LIVE_LEASE = 60  # node B's, live for the whole test


class NoConfig(BaseModel):
    pass


class HeldPager(Destination):
    """An async destination whose n-th send (1-based) waits until the test lets it end (`let_end`); the first
    ends in a retryable error (a connection lost), the others are sent."""

    slug = "held_pager"
    title = "Held pager"
    channel = "sms"
    Config = NoConfig

    def __init__(self) -> None:
        super().__init__(self.slug, NoConfig())
        self.calls: list[str] = []
        self._ends: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def let_end(self, *sends: int) -> None:
        for n in sends:
            self._end(n).set()

    def _end(self, n: int) -> threading.Event:
        with self._lock:
            return self._ends.setdefault(n, threading.Event())

    def send(self, delivery: Delivery) -> SendResult:  # the engine only awaits send_async
        raise NotImplementedError

    async def send_async(self, delivery: Delivery) -> SendResult:
        with self._lock:
            self.calls.append(delivery.delivery_id)
            n = len(self.calls)
        while not self._end(n).is_set():
            await asyncio.sleep(0.01)
        if n == 1:
            raise ConnectionError("send 1 lost its connection")
        return SendResult("sent", f"page-{n}")


class Nodes:
    """Node A (a short lease, which it stalls past) and node B (a long one), each its own store, one pager."""

    def __init__(self, store: Store, database_url: str) -> None:
        self.pager = HeldPager()
        self.b_store = Store(database_url)
        self.a = self._engine(store, STALLING_LEASE)
        self.b = self._engine(self.b_store, LIVE_LEASE)
        self.store = store
        self._open = [self.a, self.b]

    def _engine(self, store: Store, lease_seconds: float) -> DeliveryEngine:
        settings = HubSettings(_env_file=None, retry_base_delay_seconds=0.01, retry_max_delay_seconds=0.02)  # type: ignore[call-arg]
        return DeliveryEngine(
            store, {self.pager.destination_id: self.pager}, PolicyBook(DeliveryPolicyFile(), settings), batch_size=10,
            lease=timedelta(seconds=lease_seconds), concurrency=4,
        )

    def plan(self, target: str) -> str:
        delivery_id = derived_id("leases25", target)
        with self.store.write() as connection:
            outbox.plan(connection, [PlannedDelivery(
                delivery_id, derived_id("leases25-decision", target), f"P-{target}", "sms", self.pager.destination_id,
                target, {"body": "Hi", "template": "t.j2", "rule_id": "r1", "params": {}},
            )], utcnow())
        return delivery_id

    def a_stalls_then_b_takes_over(self) -> None:
        """A claims what is due and starts sending it; A stalls past its lease; B claims it all and sends it too."""
        self.a.run_once()
        sent_by_a = len(self.pager.calls)
        time.sleep(STALLING_LEASE + 0.2)
        self.b.run_once()
        assert len(self.pager.calls) == 2 * sent_by_a  # at-least-once: B sends each again

    def row(self, delivery_id: str) -> tuple[str, int, datetime | None]:
        with self.store.read() as connection:
            row = connection.execute(
                select(deliveries.c.status, deliveries.c.attempts, deliveries.c.claimed_until)
                .where(deliveries.c.delivery_id == delivery_id)
            ).one()
        return row.status, row.attempts, row.claimed_until

    def shut(self, engine: DeliveryEngine) -> None:
        self._open.remove(engine)
        engine.close()

    def close(self) -> None:
        self.pager.let_end(*range(1, 9))
        for engine in list(self._open):
            self.shut(engine)
        self.b_store.dispose()


@pytest.fixture
def nodes(store: Store, database_url: str) -> Iterator[Nodes]:
    running = Nodes(store, database_url)
    yield running
    running.close()


def test_a_stalled_nodes_late_record_leaves_the_lease_of_the_node_now_sending_so_no_third_send_goes(nodes: Nodes) -> None:
    """A thaws and records its send (a retryable error) while B's is in flight: the record set `claimed_until`
    to NULL over B's live lease and made the row `retrying`, due at once; B's renewals extend only leases that
    are set, so the next claim, on any node, sent the message a third time."""
    delivery_id = nodes.plan("101")
    nodes.a_stalls_then_b_takes_over()
    _, _, b_lease = nodes.row(delivery_id)
    nodes.pager.let_end(1)  # A thaws: its send ends, and its next runs record it and claim
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        nodes.a.run_once()
        time.sleep(0.05)
    assert nodes.pager.calls == [delivery_id] * 2, "a third send went while node B's was in flight"
    assert nodes.row(delivery_id) == ("pending", 1, b_lease)  # B's to move on; A's send counted


def test_two_nodes_sending_one_delivery_log_attempts_1_and_2(nodes: Nodes) -> None:
    """Each record wrote `attempts = claimed attempts + 1`: both sends were logged as attempt 1, and the retry
    budget counted one send fewer than were made."""
    delivery_id = nodes.plan("102")
    nodes.a_stalls_then_b_takes_over()
    nodes.pager.let_end(1)
    nodes.a.run_once()  # A records send 1 (retryable), late
    nodes.pager.let_end(2)
    nodes.b.run_once()  # B records send 2 (sent), holding the lease
    with nodes.store.read() as connection:
        logged = connection.execute(
            select(attempts.c.attempt_no, attempts.c.outcome).where(attempts.c.delivery_id == delivery_id)
            .order_by(attempts.c.attempt_no)
        ).all()
    assert [tuple(attempt) for attempt in logged] == [(1, "retryable"), (2, "sent")]
    assert nodes.row(delivery_id) == ("sent", 2, None)


def test_a_stalled_node_thawing_with_its_send_still_in_flight_renews_no_lease_of_the_node_now_sending(
    nodes: Nodes
) -> None:
    """A's first run after it thaws renews its half-spent lease before its send ends: it renewed B's (cutting it
    to A's own length), and believing the lease its own again, its record then released it."""
    delivery_id = nodes.plan("103")
    nodes.a_stalls_then_b_takes_over()
    _, _, b_lease = nodes.row(delivery_id)
    nodes.a.run_once()  # send 1 still in flight: A only renews
    assert nodes.row(delivery_id)[2] == b_lease, "node A renewed node B's lease"
    nodes.pager.let_end(1)
    nodes.a.run_once()
    assert nodes.row(delivery_id) == ("pending", 1, b_lease)


def test_a_node_closing_after_its_lease_ran_out_leaves_the_batch_another_node_took_to_it(nodes: Nodes) -> None:
    """A closes with a batch claimed and not sent, whose lease ran out while it waited for its send in flight,
    and which B claimed and is sending: putting that batch back released B's lease and made it due at once."""
    nodes.plan("104")
    nodes.a.run_once()  # A starts sending the first delivery
    second = nodes.plan("105")
    nodes.a.run_once()  # A's record claims the second beside the send in flight, not sent yet
    time.sleep(STALLING_LEASE + 0.2)
    nodes.b.run_once()  # B claims both, and sends them
    assert len(nodes.pager.calls) == 3
    _, _, b_lease = nodes.row(second)
    nodes.pager.let_end(1)
    nodes.shut(nodes.a)
    assert nodes.row(second) == ("pending", 0, b_lease)
