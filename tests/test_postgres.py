"""The multi-node path on a real PostgreSQL: the whole pipeline, and concurrent claimers.

Each test gets a fresh database on the session's throwaway cluster (the
`postgres` fixture in conftest.py); without PostgreSQL binaries they skip.
Two tests elsewhere run on both backends: migrations to head
(tests/test_project_files.py) and two worker processes resolving linked
events at once (tests/test_identity_properties.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from connectors.sandbox.providers import SandboxProviders
from hub import identity, provider_reports
from hub.consent import consent_revoked
from hub.delivery_record import Outcome
from hub.model import Identifier, PlannedDelivery, ProviderStatus, RawEvent
from hub.store import Store, inbox, outbox, timer_waits
from hub.store.sends_in_flight import AttemptRecord
from hub.store.profile_views import find_profile_id, profile_view
from hub.store.schema import deliveries as deliveries_table, held_reports
from tests.conftest import RunningHub, message, support_ticket
from tests.test_absence_timers import accept, hub_on

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)


def test_a_purchaser_who_opens_a_ticket_gets_the_sms(running_hub: RunningHub) -> None:
    """Ingest over HTTP, the pipeline, the outbox and the sandbox Twilio, all on PostgreSQL."""
    assert running_hub.hub.store.dialect == "postgresql"
    events = support_ticket("pg-buyer", {"phone": "+14155550123"})
    assert running_hub.send(*events).json()["accepted"] == 3
    running_hub.settle()
    assert running_hub.send(*events).json()["duplicates"] == 3  # a redelivered batch is acknowledged, not stored again
    assert [m["to"] for m in running_hub.sandbox.twilio.messages] == ["+14155550123"]
    deliveries = running_hub.admin("/api/deliveries")["deliveries"]
    assert sorted((d["channel"], d["status"]) for d in deliveries) == [("crm", "sent"), ("sms", "sent")]


def fill_inbox(connection: Connection, count: int) -> None:
    inbox.append(connection, [RawEvent("default", str(n), {"n": n}) for n in range(count)], T0)


def claim_inbox(connection: Connection, limit: int) -> list[Any]:
    return [row.id for row in inbox.claim(connection, limit, T0, LEASE)]


def fill_outbox(connection: Connection, count: int) -> None:
    planned = [PlannedDelivery(f"d{n}", "decision", "profile", "sms", "twilio_sms", "+14155550100", {}) for n in range(count)]
    outbox.plan(connection, planned, T0)


def claim_outbox(connection: Connection, limit: int) -> list[Any]:
    return [delivery.delivery_id for delivery in outbox.claim_due(connection, limit, T0, LEASE)]


@pytest.mark.parametrize(("fill", "claim"), [(fill_inbox, claim_inbox), (fill_outbox, claim_outbox)], ids=["inbox", "outbox"])
def test_two_claimers_in_open_transactions_take_disjoint_rows(
    store: Store, fill: Callable[[Connection, int], None], claim: Callable[[Connection, int], list[Any]]
) -> None:
    """Both claim while the other's transaction is still open: SKIP LOCKED passes over held rows, never waits on them."""
    with store.write() as connection:
        fill(connection, 10)
    both_claimed = threading.Barrier(2, timeout=10)

    def claimer() -> list[Any]:
        with store.write() as connection:
            taken = claim(connection, 4)
            both_claimed.wait()  # a claimer blocked on the other's locks would break the barrier
            return taken

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: claimer(), range(2))
    with store.write() as connection:
        rest = claim(connection, 10)
    assert len(first) == len(second) == 4 and len(rest) == 2
    assert len(set(first) | set(second) | set(rest)) == 10


def test_two_timer_workers_noting_the_waits_at_once_both_succeed(store: Store) -> None:
    """Two timer processes starting together (or seeing one rule edit together) note the same waits. As a
    delete then insert, the second's delete did not see the first's uncommitted row and its insert broke the
    key; its worker logged a failed step and napped a poll before firing anything."""
    waits = {"cart_abandonment": timedelta(minutes=2)}
    first_noted, first_may_commit = threading.Event(), threading.Event()

    def first() -> None:
        with store.write() as connection:
            timer_waits.note_waits(connection, waits)
            first_noted.set()
            first_may_commit.wait(10)

    def second() -> None:
        first_noted.wait(10)
        with store.write() as connection:
            timer_waits.note_waits(connection, {"cart_abandonment": timedelta(minutes=5)})  # waits on the first's row

    with ThreadPoolExecutor(2) as pool:
        noted = [pool.submit(first), pool.submit(second)]
        first_noted.wait(10)
        threading.Timer(0.3, first_may_commit.set).start()
        for future in noted:
            future.result(timeout=20)
    with store.read() as connection:
        assert timer_waits.noted_waits(connection) == {"cart_abandonment": timedelta(minutes=5)}



def test_a_refusal_recorded_while_another_node_merges_the_person_sends_each_message_once(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twilio refuses the SMS (the number texted STOP: 21610) while a pipeline node merges the buyer into their
    older profile. Recording the refusal revokes consent, a profile change: taken after the batch's delivery
    rows, its lock deadlocked with the merge (which holds it and repoints deliveries), the batch rolled back, and
    the email and CRM task went again when their lease ran out.

    Hooks force the interleaving only: the merge waits until the delivery node begins to record."""
    phone, now = "+14155550177", datetime.now(timezone.utc)
    overrides = {**sandbox.settings_overrides(), "database_url": database_url, "lease_seconds": 2}
    pipeline_node, delivery_node = (hub_on(tmp_path / name, **overrides) for name in ("a", "b"))
    sandbox.twilio.unsubscribed.add(phone)
    buyer = {"userId": "buyer-1", "context": {"traits": {"phone": phone, "email": "buyer@example.com"}}}
    accept(pipeline_node, message("page", anonymousId="anon-old", name="Home", timestamp=(now - timedelta(days=3)).isoformat()),
           message(event="Order Completed", **buyer, timestamp=(now - timedelta(days=1)).isoformat()),
           message(event="Ticket Submitted", **buyer, timestamp=now.isoformat()))
    with pipeline_node.store.write() as connection:  # the old device logs in: the next batch merges
        login = message("identify", userId="buyer-1", anonymousId="anon-old", timestamp=now.isoformat())
        inbox.append(connection, [RawEvent("default", login["messageId"], login)], now)

    recording, merging = threading.Event(), threading.Event()
    record, resolve = delivery_node.delivery._recorder.record, identity.resolve

    def record_signalled(*args: Any) -> None:
        recording.set()
        record(*args)

    def resolve_once_recording(*args: Any, **kwargs: Any) -> Any:
        merging.set()
        recording.wait(10)
        time.sleep(0.3)  # the delivery node is inside its record transaction by now
        return resolve(*args, **kwargs)

    monkeypatch.setattr(delivery_node.delivery._recorder, "record", record_signalled)
    monkeypatch.setattr(identity, "resolve", resolve_once_recording)
    with ThreadPoolExecutor(1) as pool:
        delivering = pool.submit(lambda: merging.wait(10) and [delivery_node.delivery.run_once() for _ in range(5)])
        pipeline_node.pipeline.run_once()
        delivering.result(timeout=30)  # a deadlock victim raises here
    monkeypatch.undo()
    time.sleep(2.5)  # any rows whose record was lost come back after their lease
    while delivery_node.delivery.run_once():
        pass
    assert (len(sandbox.smtp.received), len(sandbox.salesforce.records("Task"))) == (1, 1)
    with delivery_node.store.read() as connection:
        buyer_id = find_profile_id(connection, Identifier("phone", phone))
        assert buyer_id is not None and consent_revoked(profile_view(connection, buyer_id)["traits"], "sms")
    for node in (pipeline_node, delivery_node):
        node.store.dispose()


def test_a_late_sent_callback_racing_delivered_does_not_overwrite_it(store: Store) -> None:
    """Twilio's callbacks may arrive out of order and at once: "delivered" is being applied when "sent" comes.
    The second waits for the first and finds the message settled, as one at a time would."""
    with store.write() as connection:
        fill_outbox(connection, 1)
        connection.execute(update(deliveries_table).values(status="sent", provider_message_id="SM1"))
    delivered, sent = (ProviderStatus("SM1", status, final_status=final) for status, final in (("delivered", "delivered"), ("sent", None)))
    applied = threading.Event()

    def apply_late_sent() -> None:
        applied.wait(10)
        with store.write() as connection:
            outbox.apply_provider_status(connection, "twilio_sms", sent, T0)

    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(apply_late_sent)
        with store.write() as connection:
            outbox.apply_provider_status(connection, "twilio_sms", delivered, T0)
            applied.set()
            time.sleep(0.3)  # the late callback reads the row meanwhile
        late.result(timeout=20)
    with store.read() as connection:
        [row] = connection.execute(select(deliveries_table.c.status, deliveries_table.c.provider_status)).all()
    assert tuple(row) == ("delivered", "delivered")


def test_a_status_racing_the_record_of_its_send_waits_for_it(tmp_path: Path, database_url: str, sandbox: SandboxProviders) -> None:
    """Twilio's report comes while the worker's transaction recording the message id is still open. Without a
    lock the callback found no delivery and held the report, while the worker had already looked for held
    reports: the report waited for nobody, and the delivery stayed `sent`."""
    node = hub_on(tmp_path, database_url=database_url, **sandbox.settings_overrides())
    with node.store.write() as connection:
        fill_outbox(connection, 1)
        [delivery] = outbox.claim_due(connection, 1, T0, LEASE)
    attempt = AttemptRecord(T0, 1.0, "sent", "SM1", None, None, {}, {})
    recording = threading.Event()

    def report_delivered() -> None:
        recording.wait(10)
        with node.store.write() as connection:
            provider_reports.apply(connection, "twilio_sms", [ProviderStatus("SM1", "delivered", "delivered")], T0, node.router.recipient)

    with ThreadPoolExecutor(1) as pool:
        callback = pool.submit(report_delivered)
        with node.store.write() as connection:
            node.delivery._recorder.record(connection, [Outcome(delivery, attempt, "sent", None)])
            recording.set()
            time.sleep(0.3)  # the callback looks for the delivery meanwhile
        callback.result(timeout=20)
    with node.store.read() as connection:
        [row] = connection.execute(select(deliveries_table.c.status, deliveries_table.c.provider_status)).all()
        assert connection.execute(select(held_reports)).all() == []
    assert tuple(row) == ("delivered", "delivered")
    node.store.dispose()
