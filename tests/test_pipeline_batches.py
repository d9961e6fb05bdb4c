"""A pipeline batch runs in one savepoint; a batch with a bad row runs again row by row, each row counted once."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Table, event, func, select

from hub import triggers
from hub.clock import utcnow
from hub.model import Identifier, RawEvent, Touchpoint
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.store import decisions, delivery_log, inbox
from hub.store.schema import deliveries, quarantine, timers, touchpoints
from hub.store.schema import inbox as inbox_table
from tests.conftest import make_settings, message, support_ticket

NOW = datetime.now(timezone.utc)


def hub_on(tmp_path: Path) -> Hub:
    """A hub whose workers are not started: the test runs each batch itself."""
    return Hub(make_settings(tmp_path, quiet_hours=""))


def one_batch(hub: Hub, *messages: dict) -> None:
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], utcnow())
    assert hub.pipeline.run_once() == len(messages)


@contextmanager
def savepoints(hub: Hub) -> Iterator[list[str]]:
    """The SAVEPOINT statements the hub sends while the block runs."""
    sent: list[str] = []

    def seen(connection: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("SAVEPOINT"):
            sent.append(statement)

    event.listen(hub.store.engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(hub.store.engine, "before_cursor_execute", seen)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def count(hub: Hub, table: Table) -> int:
    with hub.store.read() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def cart(name: str) -> dict:
    return message(userId=name, event="Cart Viewed", traits={"email": f"{name}@example.com"},
                   timestamp=(NOW - timedelta(minutes=1)).isoformat())


def test_a_batch_of_good_rows_runs_in_one_savepoint(tmp_path: Path) -> None:
    hub = hub_on(tmp_path)
    with savepoints(hub) as sent:
        one_batch(hub, *support_ticket("amy", {"phone": "+14155550100"}), cart("bob"))
    assert len(sent) == 1
    assert count(hub, touchpoints) == 4


def test_claims_grow_while_the_inbox_has_a_backlog_and_shrink_once_it_is_drained(tmp_path: Path) -> None:
    hub = Hub(make_settings(tmp_path, quiet_hours="", worker_batch_size=2, pipeline_backlog_batch_size=8))

    def handled_per_batch(*messages: dict) -> list[int]:
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], utcnow())
        handled = []
        while batch := hub.pipeline.run_once():
            handled.append(batch)
        return handled

    assert handled_per_batch(*(cart(f"user{n}") for n in range(30))) == [2, 4, 8, 8, 8]
    assert handled_per_batch(*(cart(f"later{n}") for n in range(3))) == [2, 1]  # caught up: back to 2
    assert count(hub, touchpoints) == 33


def test_a_bad_row_is_quarantined_and_its_neighbours_commit_each_counted_once(tmp_path: Path) -> None:
    hub = hub_on(tmp_path)
    processed, fired = metric("hub_touchpoints_processed_total"), metric("hub_decisions_total", rule="post_purchase_support")
    armed: list[datetime] = []
    hub.pipeline._timers_armed = armed.append  # what the timer worker would be woken with
    unmappable = message(userId="null", event="Order Completed")  # no usable identifier
    with savepoints(hub) as sent:
        one_batch(hub, *support_ticket("amy", {"phone": "+14155550100"}), unmappable,
                  *support_ticket("cat", {"phone": "+14155550102"}), cart("bob"))
    assert len(sent) == 1 + 8  # the batch's, then one per row
    with hub.store.read() as connection:
        [kept] = connection.execute(select(quarantine.c.stage, quarantine.c.inbox_id)).all()
        assert kept.stage == "mapping"
        assert connection.execute(select(inbox_table.c.status).where(inbox_table.c.id == kept.inbox_id)).scalar_one() == "failed"
    assert count(hub, touchpoints) == 7
    with hub.store.read() as connection:
        assert decisions.count_by_rule(connection) == {"post_purchase_support": 2}
    assert metric("hub_touchpoints_processed_total") - processed == 7
    assert metric("hub_decisions_total", rule="post_purchase_support") - fired == 2
    with hub.store.read() as connection:
        assert sorted(connection.execute(select(deliveries.c.channel)).scalars()) == ["crm", "crm", "sms", "sms"]
    assert count(hub, timers) == 1 and len(armed) == 1
    assert hub.delivery_wake.is_set()


def test_a_row_that_breaks_is_postponed_alone_and_decided_once_when_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hub_on(tmp_path)
    fired = metric("hub_decisions_total", rule="post_purchase_support")
    evaluate = triggers.evaluate

    def broken_for_bobs_ticket(touchpoint: Touchpoint, *args: Any, **kwargs: Any) -> Any:
        if touchpoint.event == "Ticket Submitted" and Identifier("user_id", "bob") in touchpoint.identifiers:
            raise RuntimeError("bob's ticket breaks")
        return evaluate(touchpoint, *args, **kwargs)

    monkeypatch.setattr(triggers, "evaluate", broken_for_bobs_ticket)
    started = utcnow()  # the retry is due 2 s after the batch: a loaded box may take that long before the next look
    one_batch(hub, *support_ticket("amy", {"phone": "+14155550100"}), *support_ticket("bob", {"phone": "+14155550101"}))
    with hub.store.read() as connection:
        assert inbox.count_by_status(connection) == {"done": 5, "pending": 1}  # bob's ticket waits for its retry
        assert decisions.count_by_rule(connection) == {"post_purchase_support": 1}
    assert metric("hub_decisions_total", rule="post_purchase_support") - fired == 1
    monkeypatch.undo()  # the fault is fixed
    assert hub.pipeline.run_once(started) == 0  # not before its retry time
    assert hub.pipeline.run_once(utcnow() + timedelta(seconds=3)) == 1
    with hub.store.read() as connection:
        assert inbox.count_by_status(connection) == {"done": 6}
        assert decisions.count_by_rule(connection) == {"post_purchase_support": 2}
    assert count(hub, quarantine) == 0
    assert metric("hub_decisions_total", rule="post_purchase_support") - fired == 2


def test_a_decision_that_reached_nobody_spends_none_of_the_rules_cap(tmp_path: Path) -> None:
    """A ticket from someone the hub has no address for yet decides, but sends nothing; once they give their
    email, the next ticket inside the cap's 24 h reaches them instead of being capped by a message never sent."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "triggers.yaml").write_text(
        "rules:\n  - {id: help, when: {event: Ticket Submitted}, cap: {max: 1, within: 24h},\n"
        "     respond: [{channel: email, template: post_purchase_support.email.j2}], vars: {help_center_url: h}}\n"
    )
    hub = Hub(make_settings(tmp_path, quiet_hours="", mappings_dir=str(mappings)))

    def ago(hours: float) -> str:
        return (NOW - timedelta(hours=hours)).isoformat()

    one_batch(hub, message(userId="u1", event="Ticket Submitted", timestamp=ago(3)))
    one_batch(hub, message("identify", userId="u1", traits={"email": "u1@example.com"}, timestamp=ago(2)))
    one_batch(hub, message(userId="u1", event="Ticket Submitted", timestamp=ago(1)))
    one_batch(hub, message(userId="u1", event="Ticket Submitted", timestamp=ago(0.5)))
    with hub.store.read() as connection:
        statuses = [d["status"] for d in sorted(decisions.search(connection, limit=10), key=lambda d: d["decided_at"])]
        sent = delivery_log.search(connection, limit=10)
        fired = decisions.count_by_rule(connection)
    assert statuses == ["unreached", "fired", "capped"]
    assert [(d["channel"], d["target"]) for d in sent] == [("email", "u***@example.com")]
    assert fired == {"help": 2}  # the rule held twice, whatever it reached


def test_a_crm_note_planned_while_the_person_cannot_be_reached_spends_the_rules_cap(tmp_path: Path) -> None:
    """A rule that texts and notes the CRM, capped at one a day: while the SMS is blocked, each ticket's note
    counts. Calling such a decision `unreached` (to keep the person's next chance) sent a CRM note per ticket of
    a backfill, past the cap the rule sets."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "triggers.yaml").write_text(
        "rules:\n"
        "  - {id: help, when: {event: Ticket Submitted}, cap: {max: 1, within: 24h}, vars: {help_center_url: h},\n"
        "     respond: [{channel: sms, template: post_purchase_support.sms.j2}, {channel: crm, template: post_purchase_support.crm.j2}]}\n"
    )
    hub = Hub(make_settings(tmp_path, quiet_hours="", mappings_dir=str(mappings)))

    def ago(hours: float) -> str:
        return (NOW - timedelta(hours=hours)).isoformat()

    one_batch(hub, message("identify", userId="u1", traits={"phone": "+14155550123", "sms_opt_out": True}, timestamp=ago(4)))
    one_batch(hub, message(userId="u1", event="Ticket Submitted", timestamp=ago(3)))
    one_batch(hub, message(userId="u1", event="Ticket Submitted", timestamp=ago(2)))
    with hub.store.read() as connection:
        made = sorted(decisions.search(connection, limit=10), key=lambda d: d["decided_at"])
        notes = [d["channel"] for d in delivery_log.search(connection, limit=10)]
    assert ([d["status"] for d in made], notes) == (["fired", "capped"], ["crm"])


def test_an_order_ingest_commits_while_the_pipeline_waits_for_the_lock_is_in_its_batch(tmp_path: Path) -> None:
    """The pipeline read the clock before it waited for the write lock. An order committed in that wait was
    neither claimed (it became available after that time) nor older than the timers the batch armed, so a
    catching-up cart's overdue timer fired while the order sat in the inbox: a buyer nudged."""
    hub = Hub(make_settings(tmp_path, quiet_hours=""))
    identify = message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=(NOW - timedelta(days=1)).isoformat())
    cart = message(userId="amy", event="Cart Viewed", timestamp=(NOW - timedelta(minutes=3)).isoformat())
    order = message(userId="amy", event="Order Completed", timestamp=(NOW - timedelta(minutes=2, seconds=50)).isoformat())
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in (identify, cart)], utcnow())
    original_write = hub.store.write

    @contextmanager
    def write_after_ingest() -> Iterator[Any]:
        hub.store.write = original_write  # type: ignore[method-assign]
        with original_write() as connection:
            inbox.append(connection, [RawEvent("default", order["messageId"], order)], utcnow())
        with original_write() as connection:
            yield connection

    hub.store.write = write_after_ingest  # type: ignore[method-assign]
    assert hub.pipeline.run_once() == 3
    assert hub.timers.run_once() == 0
    with hub.store.read() as connection:
        assert decisions.count_by_rule(connection) == {}
        assert connection.execute(select(timers.c.status)).scalars().all() == ["cancelled"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_an_order_ingest_commits_while_the_pipeline_waits_for_the_profiles_lock_holds_the_cart_back(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's write transactions take no lock: the batch waits on the profiles lock. Read before it, the
    clock let an order committed during that wait neither be claimed nor hold back the overdue cart timer."""
    from hub import identity_epoch

    hub = Hub(make_settings(tmp_path, quiet_hours="", database_url=database_url))
    identify = message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=(NOW - timedelta(days=1)).isoformat())
    cart = message(userId="amy", event="Cart Viewed", timestamp=(NOW - timedelta(minutes=3)).isoformat())
    order = message(userId="amy", event="Order Completed", timestamp=(NOW - timedelta(minutes=2, seconds=50)).isoformat())
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in (identify, cart)], utcnow())
    real_lock = identity_epoch.lock_profiles

    def lock_after_an_ingest(connection: Any) -> None:
        monkeypatch.setattr(identity_epoch, "lock_profiles", real_lock)
        with hub.store.write() as other:  # the order's ingest commits while this batch waits for the lock
            inbox.append(other, [RawEvent("default", order["messageId"], order)], utcnow())
        real_lock(connection)

    monkeypatch.setattr(identity_epoch, "lock_profiles", lock_after_an_ingest)
    hub.pipeline.run_once()
    hub.timers.run_once()
    with hub.store.read() as connection:
        assert decisions.count_by_rule(connection) == {}
    hub.store.dispose()
