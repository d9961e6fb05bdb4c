"""Forgetting a person erases the CRM records the hub made for them: a running hub, the real simple-salesforce
library, the fake org (`connectors/sandbox/salesforce.py`).

Before, DELETE /api/profiles/{id} erased the person in the hub only: the Lead
the hub had upserted for them (keyed by their profile id) stayed in Salesforce
with their name, email and phone, and so did the Tasks on it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.destination_settings import record_erasures
from hub.model import Delivery, SendResult
from hub.runtime import Hub
from hub.store import outbox
from hub.store.forget import forget
from hub.store.schema import deliveries
from tests.conftest import ADMIN_TOKEN, RunningHub, make_settings, message, support_ticket
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_crm_records import PROFILE_KEY, crm_deliveries, lead_keys, log_in
from tests.test_forget_messages import profile

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ANA = {"email": "ana@example.com", "first_name": "Ana", "last_name": "Silva"}


def forget_ana(hub: RunningHub) -> dict[str, Any]:
    """DELETE /api/profiles/{id} for Ana; the answer, once the delivery workers have done what it planned."""
    ana = hub.admin("/api/profiles/lookup", type="user_id", value="u-ana")["profile_id"]
    answer = hub.client.delete(f"/api/profiles/{ana}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    hub.settle()
    return answer.json()


def ana_opens_a_ticket(hub: RunningHub) -> None:
    """Ana bought yesterday and opens a ticket: post_purchase_support upserts her Lead and a Task on it."""
    hub.send(*support_ticket("u-ana", ANA))
    hub.settle()


def a_ticket_from_a_device(hub: RunningHub) -> None:
    """A buyer not logged in (anonymous id anon-7) opens a ticket: a Lead of the device's profile."""
    now = datetime.now(timezone.utc)
    hub.send(message(anonymousId="anon-7", event="Order Completed", timestamp=(now - timedelta(days=1)).isoformat()),
             message(anonymousId="anon-7", event="Ticket Submitted", timestamp=now.isoformat()))
    hub.settle()


def erasures(hub: RunningHub) -> list[dict[str, Any]]:
    return [d for d in crm_deliveries(hub) if "erase" in d["content"]]


def crm_rows(hub: Hub) -> list[tuple[str, str, int]]:
    """Each CRM delivery's kind (update or erasure), status and attempts, erasures first."""
    query = select(deliveries.c.content, deliveries.c.status, deliveries.c.attempts)
    with hub.store.read() as connection:
        rows = connection.execute(query.where(deliveries.c.channel == "crm")).all()
    return sorted(("erasure" if "erase" in content else "update", status, tried) for content, status, tried in rows)


def drive(hub: Hub, until: Callable[[], bool], seconds: float = 10.0) -> None:
    """Run the delivery engine of a hub whose workers are not started until `until()` holds."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, crm_rows(hub)
        hub.delivery.run_once()
        time.sleep(0.02)


def settled(hub: Hub) -> bool:
    return all(status not in outbox.DUE_STATUSES for _, status, _ in crm_rows(hub))


def deletes(hub: RunningHub) -> list[str]:
    return [r["path"].split("/sobjects/")[-1] for r in hub.sandbox.salesforce.requests if r["method"] == "DELETE"]


@BOTH_DATABASES
def test_forgetting_a_person_deletes_their_lead_and_its_task_in_salesforce(running_hub: RunningHub) -> None:
    """Ana's support ticket made a Lead with her name and email and a Task for its owner; she asks to be
    forgotten. The Lead went on holding her data. Now the erasure deletes it by her profile id (the Task goes
    with it) and carries nothing of hers."""
    ana_opens_a_ticket(running_hub)
    [lead] = running_hub.sandbox.salesforce.records("Lead")
    assert lead["Email"] == "ana@example.com" and running_hub.sandbox.salesforce.records("Task")

    answer = forget_ana(running_hub)

    ana = answer["profile_id"]
    assert answer["crm_erasures"] == 1
    assert running_hub.sandbox.salesforce.records("Lead") == [] and running_hub.sandbox.salesforce.records("Task") == []
    assert deletes(running_hub) == [f"Lead/{PROFILE_KEY}/{ana}"]
    [erasure] = erasures(running_hub)
    assert (erasure["status"], erasure["target"], erasure["content"]) == (
        "sent", ana, {"erase": {"external_id": ana}},  # no record type: the rule named none
    )
    assert erasure["attempt_log"][0]["response_summary"] == {"sobject": "Lead", "deleted": True}
    assert "ana@example.com" not in repr(running_hub.admin("/api/deliveries"))


@BOTH_DATABASES
def test_forgetting_a_merged_person_deletes_the_lead_of_each_of_their_profile_ids(running_hub: RunningHub) -> None:
    """Ana had a Lead, and so had the device she used before logging in; the login made them one person, and
    the two Leads stay two. Both are hers, and both go."""
    ana_opens_a_ticket(running_hub)
    a_ticket_from_a_device(running_hub)
    log_in(running_hub)
    ana = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-ana")["profile_id"]
    [device] = running_hub.admin(f"/api/profiles/{ana}")["merged_profile_ids"]
    assert lead_keys(running_hub) == sorted([ana, device])

    assert forget_ana(running_hub)["crm_erasures"] == 2

    assert running_hub.sandbox.salesforce.records("Lead") == []
    assert sorted(deletes(running_hub)) == sorted(f"Lead/{PROFILE_KEY}/{key}" for key in (ana, device))
    assert [erasure["status"] for erasure in erasures(running_hub)] == ["sent", "sent"]


def test_an_erasure_of_a_lead_already_deleted_by_hand_counts_as_sent(running_hub: RunningHub) -> None:
    """A sales rep deleted Ana's Lead before her request came: Salesforce answers the erasure 404 NOT_FOUND,
    which means erased, not a failure to retry or to dead-letter."""
    ana_opens_a_ticket(running_hub)
    [lead] = running_hub.sandbox.salesforce.records("Lead")
    running_hub.sandbox.salesforce.delete_record("Lead", lead["Id"])

    assert forget_ana(running_hub)["crm_erasures"] == 1

    [erasure] = erasures(running_hub)
    assert erasure["status"] == "sent"
    assert [attempt["response_summary"] for attempt in erasure["attempt_log"]] == [
        {"sobject": "Lead", "deleted": False, "already_gone": True},
    ]


def test_a_person_no_crm_update_reached_gets_no_erasure(running_hub: RunningHub) -> None:
    """Ana only signed up (no ticket, no Lead): forgetting her plans nothing for Salesforce and calls it not."""
    running_hub.send(message("identify", userId="u-ana", traits=ANA))
    running_hub.settle()

    assert forget_ana(running_hub)["crm_erasures"] == 0

    assert crm_deliveries(running_hub) == [] and deletes(running_hub) == []


@pytest.mark.hub_settings(salesforce_erase_on_forget=False)
def test_with_erasure_off_the_lead_stays_for_sales(running_hub: RunningHub) -> None:
    """An org whose Leads belong to its sales team turns CRM erasure off: forgetting Ana erases her in the hub
    only, and her Lead stays."""
    ana_opens_a_ticket(running_hub)

    assert forget_ana(running_hub)["crm_erasures"] == 0

    assert len(running_hub.sandbox.salesforce.records("Lead")) == 1 and deletes(running_hub) == []


@pytest.mark.hub_settings(delivery_max_attempts=1)
def test_an_update_whose_answer_was_lost_is_erased_too(
    running_hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Salesforce wrote Ana's Lead but the answer was lost (a proxy's 500 after the write): the update went
    dead, yet the Lead exists. An attempt is evidence enough, and the Lead goes."""
    fake = running_hub.sandbox.salesforce
    write = fake._write

    def write_then_lose_the_answer(sobject: str, record_id: str, values: dict[str, Any]) -> dict[str, Any]:
        write(sobject, record_id, values)
        raise RuntimeError("the answer is lost after the write")

    monkeypatch.setattr(fake, "_write", write_then_lose_the_answer)
    ana_opens_a_ticket(running_hub)
    assert [d["status"] for d in crm_deliveries(running_hub)] == ["dead"] and len(fake.records("Lead")) == 1
    monkeypatch.undo()

    assert forget_ana(running_hub)["crm_erasures"] == 1

    assert fake.records("Lead") == []


@pytest.mark.hub_settings(delivery_max_attempts=1)
def test_an_erasure_dead_while_salesforce_was_down_is_replayed(running_hub: RunningHub) -> None:
    """Salesforce is down when Ana is forgotten, and her erasure goes to the dead-letter queue. It has no personal
    data, so unlike her own messages it may be replayed: it is, and the Lead goes."""
    ana_opens_a_ticket(running_hub)
    running_hub.sandbox.salesforce.fail_next(503, "SERVER_UNAVAILABLE")

    forget_ana(running_hub)
    [dead] = erasures(running_hub)
    assert dead["status"] == "dead" and len(running_hub.sandbox.salesforce.records("Lead")) == 1

    replayed = running_hub.client.post(f"/api/deliveries/{dead['delivery_id']}/replay", headers=AUTH)
    assert replayed.status_code == 200, replayed.text
    running_hub.settle()
    assert running_hub.sandbox.salesforce.records("Lead") == []
    assert [erasure["status"] for erasure in erasures(running_hub)] == ["sent"]


def test_an_erasure_through_an_external_id_field_salesforce_cannot_see_fails(running_hub: RunningHub) -> None:
    """Salesforce answers 404 NOT_FOUND for a missing record and for an external-id field the integration user
    cannot see (an admin removed its field access). Only the first means erased: the second fails, saying
    why, and the Lead is still there to erase once access is back."""
    ana_opens_a_ticket(running_hub)
    running_hub.sandbox.salesforce.external_ids["Lead"].discard(PROFILE_KEY)

    forget_ana(running_hub)

    [erasure] = erasures(running_hub)
    assert erasure["status"] == "failed" and "Provided external ID field does not exist" in erasure["last_error"]
    assert len(running_hub.sandbox.salesforce.records("Lead")) == 1


def test_an_update_in_flight_when_the_person_is_forgotten_is_erased_after_it_lands(
    tmp_path: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ana is forgotten while Salesforce is slow to take her ticket's upsert, slower than the lease it had left.
    The erasure was due when that lease ended as it stood at the forget, but the engine renews the lease of a
    send still going: the DELETE went first (NOT_FOUND: "already gone", sent) and the upsert then made the Lead
    for good. The erasure now waits, at its claim, for the send to land, and the Lead goes."""
    hub = hub_on(tmp_path, lease_seconds=1, **sandbox.settings_overrides())
    try:
        accept(hub, *support_ticket("u-ana", ANA))
        ana = profile(hub, "user_id", "u-ana")
        crm = hub.destinations["salesforce"]
        deliver = crm.deliver_async

        async def forgotten_while_salesforce_is_slow(delivery: Delivery) -> SendResult:  # forces the interleaving only
            if "erase" not in delivery.content:
                with hub.store.write() as connection:
                    forget(connection, ana, utcnow(), True, record_erasures(hub.settings))
                await asyncio.sleep(1.6)  # longer than the lease had left; the engine renews it meanwhile
            return await deliver(delivery)

        monkeypatch.setattr(crm, "deliver_async", forgotten_while_salesforce_is_slow)
        drive(hub, lambda: crm_rows(hub) == [("erasure", "sent", 1), ("update", "failed", 1)])  # withdrawn, but sent
    finally:
        hub.delivery.close()
        hub.store.dispose()
    assert sandbox.salesforce.records("Lead") == []


def test_an_erasure_planned_on_an_api_node_without_salesforce_settings_deletes_the_contact(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """The CRM node upserts Contacts (HUB_SALESFORCE_SOBJECT=Contact); an API node without any HUB_SALESFORCE_*
    plans the erasure. It named its own default record type (Lead), the DELETE of Lead/<key> got NOT_FOUND,
    counted as erased, and Ana's Contact stayed. Now the sending node's own type is used."""
    template = mappings_dir / "templates" / "post_purchase_support.crm.j2"  # a Contact has no Company
    template.write_text("\n".join(line for line in template.read_text().splitlines() if "field_Company" not in line))
    crm_node = hub_on(tmp_path, salesforce_sobject="Contact", mappings_dir=mappings_dir, **sandbox.settings_overrides())
    api_node = make_settings(tmp_path, mappings_dir=mappings_dir)
    try:
        accept(crm_node, *support_ticket("u-ana", ANA))
        drive(crm_node, lambda: crm_rows(crm_node) == [("update", "sent", 1)])
        assert len(sandbox.salesforce.records("Contact")) == 1
        ana = profile(crm_node, "user_id", "u-ana")
        with crm_node.store.write() as connection:
            assert forget(connection, ana, utcnow(), True, record_erasures(api_node))["crm_erasures"] == 1
        drive(crm_node, lambda: settled(crm_node))
    finally:
        crm_node.delivery.close()
        crm_node.store.dispose()
    assert sandbox.salesforce.records("Contact") == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_crm_update_claimed_by_another_node_during_the_forget_is_erased(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """Another node claims Ana's CRM update, not yet committed, as she is forgotten. The forget read the outbox
    without a lock (READ COMMITTED: the claim unseen), planned no erasure, then waited for the claim at its
    UPDATE and went on; the other node sent the upsert, and that Lead was never erased."""
    hub = hub_on(tmp_path, database_url=database_url, **sandbox.settings_overrides())
    try:
        accept(hub, *support_ticket("u-ana", ANA))
        assert crm_rows(hub) == [("update", "pending", 0)]
        ana = profile(hub, "user_id", "u-ana")
        answer: dict[str, Any] = {}

        def forget_on_the_api_node() -> None:
            with hub.store.write() as connection:
                answer.update(forget(connection, ana, utcnow(), True, record_erasures(hub.settings)))

        with hub.store.engine.connect() as other_node:
            claim = other_node.begin()
            # A short lease: the other node's record of its attempt, which would end it, is not played here.
            claimed = outbox.claim_due(other_node, 10, utcnow(), timedelta(seconds=2))
            [update] = [delivery for delivery in claimed if delivery.destination_id == "salesforce"]
            forgetting = threading.Thread(target=forget_on_the_api_node)
            forgetting.start()
            time.sleep(0.5)  # forget reaches the person's deliveries and waits for the claimed row
            claim.commit()
        forgetting.join(10)
        hub.destinations["salesforce"].send(update)  # the other node sends what it claimed
        assert len(sandbox.salesforce.records("Lead")) == 1
        drive(hub, lambda: settled(hub), seconds=5)
    finally:
        hub.delivery.close()
        hub.store.dispose()
    assert answer["crm_erasures"] == 1
    assert sandbox.salesforce.records("Lead") == []
