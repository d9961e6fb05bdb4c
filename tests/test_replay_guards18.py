"""What a replay may send, what the delivery log keeps of a forgotten person, and a send after an idle gap.

A replay out of the dead-letter queue (or of a failure) goes only to an
address its person still holds, and only once however many ask for it at
once; an attempt recorded just after its person was forgotten keeps nothing
of them; a webhook sent after the receiver closed an idle connection goes
at the first attempt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.model import Identifier, PlannedDelivery
from hub.runtime import Hub
from hub.store import delivery_replay, forget, outbox
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import find_profile_id
from hub.store.schema import attempts, deliveries
from hub.store.sends_in_flight import AttemptRecord, AttemptResult, record_attempts
from tests.conftest import ADMIN_TOKEN, RunningHub, message, support_ticket
from tests.test_absence_timers import accept, hub_on

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
PHONE = "+14155550142"
CHAT_OFFER = {"body": "Need a hand comparing?", "template": "c.j2", "rule_id": "comparison_hesitation", "params": {}}


def replay(running_hub: RunningHub, delivery_id: str) -> Any:
    """The console's Replay button: the API's answer, once the hub has sent what it queued."""
    answer = running_hub.client.post(f"/api/deliveries/{delivery_id}/replay", headers=AUTH)
    running_hub.settle()
    return answer


def nodes(tmp_path: Path, database_url: str, sandbox: SandboxProviders, *names: str, **settings: Any) -> list[Hub]:
    """Hubs on one database whose workers are not started (the test drives each step), each with its own engine
    and pool, as on separate machines."""
    return [hub_on(tmp_path / name, **sandbox.settings_overrides(), database_url=database_url, **settings) for name in names]


def deliver(hub: Hub) -> None:
    while hub.delivery.run_once():
        pass


# 1. A failed message to the other person's address, after an unmerge ------------------------------------------

def test_a_failed_message_to_the_other_persons_address_is_not_replayed_after_an_unmerge(running_hub: RunningHub) -> None:
    """Amy's support email went to Bo's address while a bad link made them one profile, and the mail server
    refused it. The unmerge withdrew only messages not yet sent, so it stayed `failed`, and its replay sent Bo
    the email about Amy's order (README: such a message is "withdrawn, and not replayable")."""
    now = datetime.now(timezone.utc)

    def ago(**delta: float) -> str:
        return (now - timedelta(**delta)).isoformat()

    for batch in (
        [message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=ago(days=2)),
         message(userId="amy", event="Order Completed", timestamp=ago(days=1))],
        [message("identify", anonymousId="bo-laptop", traits={"email": "bo@example.com"}, timestamp=ago(hours=5))],
        [message("identify", userId="amy", anonymousId="bo-laptop", timestamp=ago(hours=4))],  # the bad link
    ):
        assert running_hub.send(*batch).status_code == 200
        running_hub.settle()
    running_hub.sandbox.smtp.fail_next("554 5.7.1 message refused by policy", stage="data")
    running_hub.send(message(userId="amy", event="Ticket Submitted", timestamp=now.isoformat()))
    running_hub.settle()
    [email] = running_hub.admin("/api/deliveries", channel="email")["deliveries"]
    assert (email["status"], email["target"]) == ("failed", "b***@example.com")  # the merged profile's newest
    amy = running_hub.admin("/api/profiles/lookup", type="user_id", value="amy")["profile_id"]
    bo = running_hub.admin(f"/api/profiles/{amy}/explain")["aliases"][0]
    split = running_hub.client.post(f"/api/profiles/{amy}/unmerge", json={"merged_profile_id": bo}, headers=AUTH)
    assert split.status_code == 200 and split.json()["deliveries_withdrawn"] == 1, split.text

    refused = replay(running_hub, email["delivery_id"])
    assert running_hub.sandbox.smtp.received == []
    assert refused.status_code == 409
    assert "two people were one profile and an unmerge withdrew it" in refused.json()["detail"]


# 2. An address that left the person ---------------------------------------------------------------------------

def test_a_hard_bounced_email_is_not_mailed_again_by_a_replay(running_hub: RunningHub) -> None:
    """A 5.1.1 bounce takes the address off the profile, but the failed delivery kept it and the console's Replay
    button mailed the dead address again."""
    running_hub.sandbox.smtp.fail_next("550 5.1.1 <gone@example.com>: no such mailbox", stage="rcpt")
    running_hub.send(*support_ticket("u-gone", {"email": "gone@example.com"}))
    running_hub.settle()
    [email] = running_hub.admin("/api/deliveries", channel="email")["deliveries"]
    assert email["status"] == "failed"
    assert "email" not in running_hub.admin(f"/api/profiles/{email['profile_id']}")["identifiers"]

    refused = replay(running_hub, email["delivery_id"])
    assert running_hub.sandbox.smtp.received == []
    assert refused.status_code == 409
    assert "to an address its person no longer has" in refused.json()["detail"]
    [after] = running_hub.admin("/api/deliveries", channel="email")["deliveries"]
    assert (after["status"], len(after["attempt_log"])) == ("failed", 1)


def test_a_failed_email_to_an_address_the_person_still_has_is_replayed(running_hub: RunningHub) -> None:
    """What the guard above must leave alone: a refusal that says nothing of the address (a policy block)."""
    running_hub.sandbox.smtp.fail_next("554 5.7.1 message refused by policy", stage="data")
    running_hub.send(*support_ticket("u-kept", {"email": "kept@example.com"}))
    running_hub.settle()
    [email] = running_hub.admin("/api/deliveries", channel="email")["deliveries"]
    assert email["status"] == "failed"

    assert replay(running_hub, email["delivery_id"]).status_code == 200
    assert [m.rcpt_tos for m in running_hub.sandbox.smtp.received] == [["kept@example.com"]]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    running = hub_on(tmp_path)
    yield running
    running.stop()


def failed_push(hub: Hub, *tokens: str) -> None:
    """Ana's push to `tokens` (each of her devices), which FCM refused. Each device's id is its token, so the
    value stays hers as a device id when the token goes: only the push token's type counts."""
    accept(hub, *(message("identify", userId="ana", context={"device": {"id": token, "token": token}}) for token in tokens))
    with hub.store.write() as connection:
        ana = find_profile_id(connection, Identifier("user_id", "ana"))
        assert ana is not None
        content = {"recipients": list(tokens)} if len(tokens) > 1 else {}
        outbox.plan(connection, [PlannedDelivery("nudge", "d1", ana, "push", "fcm_push", tokens[0], content)], utcnow())
        [claimed] = outbox.claim_due(connection, 1, utcnow(), timedelta(seconds=30))
        record_attempts(connection, [AttemptResult(claimed, AttemptRecord(
            utcnow(), 1.0, "permanent", None, "fcm.INVALID_ARGUMENT", "refused", {}, {}), "failed", None)])


def unregistered(hub: Hub, token: str) -> None:
    """FCM said the app is gone from the device: what the record of its UNREGISTERED answer does."""
    with hub.store.write() as connection:
        assert SqlIdentityGraph(connection).detach("push_token", [token], "FCM: UNREGISTERED") == 1


def replayed_push(hub: Hub) -> tuple[str | None, tuple[str, str, list[str] | None]]:
    with hub.store.write() as connection:
        answer = delivery_replay.replay(connection, "nudge", utcnow(), hub.router.recipient)
        row = connection.execute(select(deliveries.c.status, deliveries.c.target, deliveries.c.content)
                                 .where(deliveries.c.delivery_id == "nudge")).one()
    return answer, (row.status, row.target, row.content.get("recipients"))


def test_a_failed_push_to_an_unregistered_token_is_not_replayed(hub: Hub) -> None:
    """FCM's UNREGISTERED takes the token off the profile; the failed push kept it, and its replay sent it there
    again."""
    failed_push(hub, "tok-gone")
    unregistered(hub, "tok-gone")
    answer, row = replayed_push(hub)
    assert row == ("failed", "tok-gone", None)
    assert answer is not None
    assert "to an address its person no longer has" in delivery_replay.why_not_replayed("nudge", answer)


def test_a_replayed_push_goes_to_the_persons_devices_still_registered(hub: Hub) -> None:
    """The same for one of several devices: the replay goes to the others only."""
    failed_push(hub, "tok-gone", "tok-phone")
    unregistered(hub, "tok-gone")
    assert replayed_push(hub) == ("failed", ("pending", "tok-phone", ["tok-phone"]))


# 3. Replays of one delivery at once ---------------------------------------------------------------------------

def lock_waits(hub: Hub) -> int:
    """The sessions of the database waiting for a row lock."""
    with hub.store.read() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar_one()


@POSTGRESQL
def test_a_second_replay_of_a_dead_delivery_at_once_is_refused(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """Two operators replay one dead SMS at once, on two nodes: the second read `dead` before the first committed,
    then rewrote the row by its id alone, and both were told "replayed" (in the audit, 2 to 6 of 16 callers)."""
    pipeline_node, first_node, second_node = nodes(tmp_path, database_url, sandbox, "pipeline", "first", "second",
                                                  delivery_max_attempts=1)
    try:
        sandbox.twilio.fail_next(503, code=20500, message="down")
        accept(pipeline_node, *support_ticket("u-race", {"phone": PHONE}))
        deliver(pipeline_node)
        with pipeline_node.store.read() as connection:
            [(dead, status)] = connection.execute(
                select(deliveries.c.delivery_id, deliveries.c.status).where(deliveries.c.channel == "sms")
            ).all()
        assert status == "dead"

        def second_replay() -> str | None:
            with second_node.store.write() as connection:
                return delivery_replay.replay(connection, dead, utcnow(), second_node.router.recipient)

        with ThreadPoolExecutor(1) as pool, first_node.store.write() as connection:
            assert delivery_replay.replay(connection, dead, utcnow(), first_node.router.recipient) == "dead"
            second = pool.submit(second_replay)
            deadline = time.monotonic() + 10
            while not lock_waits(pipeline_node) and time.monotonic() < deadline:  # the second waits on the row
                time.sleep(0.01)
        assert second.result(timeout=10) == "pending"  # a 409: "delivery ... is pending"
    finally:
        for node in (pipeline_node, first_node, second_node):
            node.stop()


# 4. An attempt recorded just after its person was forgotten ----------------------------------------------------

@POSTGRESQL
def test_a_send_in_flight_while_another_node_forgets_the_person_is_logged_without_them(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery node has the SMS in flight when an operator's DELETE /api/profiles/{id} runs on another node:
    forget wipes the person's attempts, and the attempt recorded a moment later was written whole, the masked
    number ("+1******0142") and the provider's answer kept in the delivery log for good."""
    pipeline_node, admin_node, delivery_node = nodes(tmp_path, database_url, sandbox, "pipeline", "admin", "delivery")
    try:
        accept(pipeline_node, *support_ticket("forgotten", {"phone": PHONE}))
        with admin_node.store.read() as connection:
            person = find_profile_id(connection, Identifier("phone", PHONE))
        record = delivery_node.delivery._recorder.record

        def forget_then_record(connection: Any, outcomes: Any) -> None:  # forces the interleaving only
            if outcomes:
                with admin_node.store.write() as admin:
                    forget.forget(admin, person, utcnow(), True)
                monkeypatch.setattr(delivery_node.delivery._recorder, "record", record)
            record(connection, outcomes)

        monkeypatch.setattr(delivery_node.delivery._recorder, "record", forget_then_record)
        deliver(delivery_node)
        assert [m["to"] for m in sandbox.twilio.messages] == [PHONE]  # it was in flight: it went
        with admin_node.store.read() as connection:
            logged = connection.execute(
                select(attempts.c.request_summary, attempts.c.response_summary, attempts.c.error_message)
                .join_from(attempts, deliveries, attempts.c.delivery_id == deliveries.c.delivery_id)
                .where(deliveries.c.channel == "sms")
            ).all()
        assert [tuple(row) for row in logged] == [({}, {}, None)]
    finally:
        for node in (pipeline_node, admin_node, delivery_node):
            node.stop()


# 5. A send after the receiver closed an idle connection ---------------------------------------------------------

def test_a_webhook_sent_after_the_receiver_closed_the_idle_connection_goes_at_the_first_attempt(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """The sandbox receiver (uvicorn) closes a connection idle for 5 s; aiohttp kept it for 15 s, and a destination
    without a rate limit sends without yielding to the loop first, so the first send after such a gap went out on
    the closed connection: a failed attempt (network.ClientOSError) and a retry."""
    hub = hub_on(tmp_path, **sandbox.settings_overrides())
    try:
        for n, gap in enumerate((0, 5.5)):
            time.sleep(gap)
            with hub.store.write() as connection:
                outbox.plan(connection, [PlannedDelivery(
                    f"chat-{n}", f"d-{n}", "profile", "chat", "chat_webhook", "profile", CHAT_OFFER,
                )], utcnow())
            deliver(hub)
        with hub.store.read() as connection:
            logged = connection.execute(select(attempts.c.delivery_id, attempts.c.outcome, attempts.c.error_class)
                                        .order_by(attempts.c.id)).all()
        assert [tuple(row) for row in logged] == [("chat-0", "sent", None), ("chat-1", "sent", None)]
        assert sandbox.webhooks.count == 2
    finally:
        hub.stop()
