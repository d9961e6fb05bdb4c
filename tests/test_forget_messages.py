"""Forgetting a person beside what the hub still holds of them: queued messages, replays, audit rows, other
people's touchpoints that carried their identifiers."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.clock import utcnow
from hub.model import Delivery, Identifier, PlannedDelivery, SendResult
from hub.pii import holds_values
from hub.runtime import Hub
from hub.store import identity_repair, outbox, quarantine
from hub.store.forget import forget as forget_person
from hub.store.forget_digest import identifier_digest
from hub.store.profile_views import find_profile_id
from hub.store.schema import attempts, deliveries, identity_events, merges, touchpoints
from tests.conftest import WRITE_KEY, RunningHub, message, support_ticket
from tests.test_absence_timers import accept, hub_on
from tests.test_dead_letter_replay import AUTH, touchhub, trigger_sms

NOW = datetime.now(timezone.utc)


def profile(hub: Hub, type_: str, value: str) -> str:
    with hub.store.read() as connection:
        found = find_profile_id(connection, Identifier(type_, value))
    assert found is not None
    return found


def forget(hub: Hub, profile_id: str) -> None:
    """What DELETE /api/profiles/{id} runs, with mappings/identity.yaml's blocking on."""
    with hub.store.write() as connection:
        forget_person(connection, profile_id, utcnow(), block_identifiers=True)


def stored_rows_holding(hub: Hub, text: str) -> list[str]:
    """The tables of every stored row whose text holds `text` (SQLite's dump of the database)."""
    raw = hub.store.engine.raw_connection()
    try:
        return sorted({line.split('"')[1] for line in raw.driver_connection.iterdump() if line.startswith("INSERT") and text in line})
    finally:
        raw.close()


def test_forget_withdraws_the_messages_planned_for_the_person_and_none_reaches_a_provider(tmp_path: Path, sandbox) -> None:
    """post_purchase_support plans an SMS, an email and a CRM update for Sam; Sam is forgotten before the delivery
    worker gets to them. Those messages had their address and content wiped and were left due: the worker sent
    them (or crashed on them). Now each is settled unsent, saying why."""
    hub = hub_on(tmp_path, **sandbox.settings_overrides())
    try:
        accept(hub, *support_ticket("sam", {"phone": "+14155550123", "email": "sam@example.com"}, NOW))
        with hub.store.read() as connection:
            assert sorted(connection.execute(select(deliveries.c.channel, deliveries.c.status))) == [
                ("crm", "pending"), ("email", "pending"), ("sms", "pending"),
            ]
        forget(hub, profile(hub, "user_id", "sam"))
        for _ in range(3):
            hub.delivery.run_once()
        with hub.store.read() as connection:
            after = set(connection.execute(select(deliveries.c.status, deliveries.c.last_error, deliveries.c.attempts)))
        assert after == {("failed", "not sent: profile forgotten", 0)}
        assert (sandbox.twilio.messages, sandbox.smtp.received) == ([], [])
        assert not [request for request in sandbox.salesforce.requests if "/sobjects/" in str(request)]
    finally:
        hub.store.dispose()


def test_a_delivery_its_destination_cannot_summarise_fails_alone_and_its_batch_is_sent(tmp_path: Path, sandbox) -> None:
    """An SMS without a body (Twilio's request summary reads `body`) raised out of the engine's `attempt`, which
    must never raise: the record of its whole batch failed, batch after batch, and nothing was sent. Now it is
    one failed attempt of its own, retried as a connector bug is, and its neighbour goes."""
    hub = hub_on(tmp_path, **{**sandbox.settings_overrides(), "lease_seconds": 30})  # no second claim of a slow send
    try:
        now = utcnow()
        with hub.store.write() as connection:
            outbox.plan(connection, [
                PlannedDelivery("d-bad", "dec-1", "p-1", "sms", "twilio_sms", "+14155550101", {}),
                PlannedDelivery("d-good", "dec-2", "p-2", "sms", "twilio_sms", "+14155550102", {"body": "Your order shipped"}),
            ], now)
        for _ in range(3):
            hub.delivery.run_once()  # raised KeyError: 'body'
        with hub.store.read() as connection:
            statuses = dict(connection.execute(select(deliveries.c.delivery_id, deliveries.c.status)).all())
            tried = connection.execute(
                select(attempts.c.outcome, attempts.c.error_class, attempts.c.request_summary).where(attempts.c.delivery_id == "d-bad")
            ).all()
        assert statuses["d-good"] == "sent" and statuses["d-bad"] in ("retrying", "dead")  # test settings retry at once
        assert tried and all(tuple(row) == ("retryable", "unexpected.KeyError", {"target": "+1******0101"}) for row in tried)
        assert [m["to"] for m in sandbox.twilio.messages] == ["+14155550102"]
    finally:
        hub.store.dispose()


@pytest.mark.hub_settings(delivery_max_attempts=1)
def test_a_forgotten_persons_dead_message_is_withdrawn_and_never_replayed(running_hub: RunningHub) -> None:
    """A dead letter of a forgotten person, withdrawn as failed (a replayable status), was queued again by a
    replay and sent to "(forgotten)". The API and the CLI now refuse it and say why."""
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="down", times=1)
    trigger_sms(running_hub, "u-gone", "+14155550191")
    [dead] = running_hub.admin("/api/deliveries", status="dead")["deliveries"]
    assert running_hub.client.delete(f"/api/profiles/{dead['profile_id']}", headers=AUTH).status_code == 200
    [withdrawn] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    assert (withdrawn["status"], withdrawn["last_error"]) == ("failed", "not sent: profile forgotten")

    answer = running_hub.client.post(f"/api/deliveries/{dead['delivery_id']}/replay", headers=AUTH)
    assert answer.status_code == 409
    assert answer.json()["detail"] == (
        f"delivery {dead['delivery_id']!r} was to a person since forgotten (erased on request); it is never sent again"
    )
    cli: subprocess.CompletedProcess[str] = touchhub(running_hub, "replay", dead["delivery_id"])
    assert cli.returncode == 1 and "since forgotten (erased on request); it is never sent again" in cli.stderr
    running_hub.settle()
    [still] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    assert still["status"] == "failed" and running_hub.sandbox.twilio.message_count == 0


def unmerge_bo_then_forget_him(hub: Hub) -> str:
    """Bo's profile, merged into Ana's phone's by the one event that carried his email, split off and forgotten;
    returns Ana's profile id."""
    ana = profile(hub, "anonymous_id", "ana-phone")
    with hub.store.read() as connection:
        [bo] = connection.execute(select(merges.c.merged_id)).scalars()
    with hub.store.write() as connection:
        identity_repair.unmerge(connection, ana, bo, utcnow())
    forget(hub, bo)
    return ana


def test_forgetting_someone_split_off_by_an_unmerge_leaves_no_copy_of_their_identifiers(tmp_path: Path) -> None:
    """Bo's email once rode on Ana's phone's event: the hub merged them, an operator unmerged them, and Bo asks
    to be forgotten. The merge row (Bo its merged side), Ana's touchpoint of that event, its raw payload and the
    trait Ana's profile took from it kept bo@x.io."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "ana@x.io"}, timestamp="2026-01-01T10:00:00Z"))
        accept(hub, message("identify", anonymousId="bo-laptop", traits={"email": "bo@x.io"}, timestamp="2026-01-01T11:00:00Z"))
        accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "bo@x.io"}, timestamp="2026-01-01T12:00:00Z"))
        ana = unmerge_bo_then_forget_him(hub)
        assert stored_rows_holding(hub, "bo@x.io") == []
        with hub.store.read() as connection:
            assert connection.execute(select(merges.c.linking_identifiers)).scalars().all() == [[]]
        assert profile(hub, "email", "ana@x.io") == ana  # Ana keeps what is hers
    finally:
        hub.store.dispose()


def test_a_forgotten_email_sent_again_is_stored_nowhere_and_refused_by_its_digest(tmp_path: Path) -> None:
    """Sam's old app install sends his cached email from a new device: the refusal named the erased address in
    plain text, and the event, its raw body and the new profile's traits kept it. The event is kept without it,
    and the refusal names the blocklist's digest."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", userId="sam", traits={"email": "sam@example.com"}, timestamp="2026-01-01T10:00:00Z"))
        forget(hub, profile(hub, "user_id", "sam"))
        accept(hub, message(anonymousId="new-device", event="Product Viewed", context={"traits": {"email": "sam@example.com"}}))
        with hub.store.read() as connection:
            [refused] = connection.execute(select(identity_events).where(identity_events.c.kind == "refused")).mappings()
        digest = identifier_digest(Identifier("email", "sam@example.com"))
        assert (refused["identifiers"], refused["rule"]) == (
            [["email", f"sha256:{digest}"]], "forgotten: the identifier belonged to a profile erased on request",
        )
        assert stored_rows_holding(hub, "sam@example.com") == []
        assert stored_rows_holding(hub, "new-device") != []  # the event is kept, without what was erased
    finally:
        hub.store.dispose()


def test_a_send_in_flight_when_the_person_is_forgotten_is_never_retried(tmp_path: Path, sandbox, monkeypatch) -> None:
    """Twilio is down for Sam's SMS while he is forgotten: the attempt's record put the withdrawn message back to
    retrying, to "(forgotten)". It stays withdrawn; the attempt is still counted and logged."""
    hub = hub_on(tmp_path, **sandbox.settings_overrides())
    try:
        accept(hub, *support_ticket("sam", {"phone": "+14155550123"}, NOW))
        sam = profile(hub, "phone", "+14155550123")
        sandbox.twilio.fail_next(503)
        sms = hub.destinations["twilio_sms"]
        deliver = sms.deliver_async

        async def forgotten_meanwhile(delivery: Delivery) -> SendResult:  # forces the interleaving only
            try:
                return await deliver(delivery)
            finally:
                forget(hub, sam)

        monkeypatch.setattr(sms, "deliver_async", forgotten_meanwhile)
        hub.delivery.run_once()
        with hub.store.read() as connection:
            [row] = connection.execute(select(deliveries).where(deliveries.c.channel == "sms")).mappings()
        assert (row["status"], row["last_error"], row["attempts"]) == ("failed", "not sent: profile forgotten", 1)
        monkeypatch.undo()
        while hub.delivery.run_once():
            pass
        assert sandbox.twilio.message_count == 0
    finally:
        hub.store.dispose()


def test_forget_wipes_quarantined_bodies_that_hold_the_persons_address(running_hub: RunningHub) -> None:
    """Sam's app once sent an event with a bad timestamp: refused and quarantined with his email in its body.
    Nothing links it to his profile, so forgetting him looks for his addresses there; other bodies stay."""
    sam = {"userId": "sam", "context": {"traits": {"email": "Sam@Example.com"}}}
    running_hub.send(message("identify", userId="sam", traits={"email": "sam@example.com"}),
                     message(event="Cart Viewed", timestamp="yesterday", **sam),
                     message(event="Cart Viewed", timestamp="yesterday", userId="ana"))
    running_hub.settle()
    [profile_id] = {d["profile_id"] for d in running_hub.admin("/api/touchpoints")["touchpoints"]}
    assert running_hub.client.delete(f"/api/profiles/{profile_id}", headers=AUTH).status_code == 200
    kept = running_hub.admin("/api/quarantine")["quarantine"]
    assert sorted(entry["reason"] == quarantine.ERASED_REASON for entry in kept) == [False, True]
    assert "sam" not in json.dumps(kept).lower() and any('"ana"' in entry["raw_body"] for entry in kept)


def test_forgetting_a_phone_takes_it_out_of_other_peoples_touchpoints_however_it_is_written(tmp_path: Path) -> None:
    """Bo's phone once rode on Ana's event, also typed by hand in its properties; an unmerge split them and Bo is
    forgotten. Only "+14155550100" was taken out: "(415) 555-0100" and "+1 415-555-0100" there kept his number.
    Another number sharing all but its last digits, and text that is no phone, stay Ana's."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "ana@x.io"}, timestamp="2026-01-01T10:00:00Z"))
        accept(hub, message("identify", anonymousId="bo-laptop", traits={"phone": "+14155550100"}, timestamp="2026-01-01T11:00:00Z"))
        accept(hub, message(
            anonymousId="ana-phone", event="Callback Requested", context={"traits": {"phone": "+14155550100"}},
            properties={"callback": "(415) 555-0100", "alternative": "+1 415-555-0100", "office": "415-555-0199",
                        "tried": ["14155550100", "+1.415.555.0100", "after 5 pm"], "note": "call me after 5 pm"},
            timestamp="2026-01-01T12:00:00Z",
        ))
        unmerge_bo_then_forget_him(hub)
        with hub.store.read() as connection:
            [carried] = connection.execute(
                select(touchpoints.c.properties).where(touchpoints.c.event == "Callback Requested")
            ).scalars()
        assert carried == {"office": "415-555-0199", "tried": ["after 5 pm"], "note": "call me after 5 pm"}
        assert stored_rows_holding(hub, "555-0100") == [] and stored_rows_holding(hub, "4155550100") == []
    finally:
        hub.store.dispose()


def test_forget_wipes_quarantined_bodies_that_hold_the_persons_phone_in_national_format(running_hub: RunningHub) -> None:
    """Sam's app sent his callback number as he types it, "(415) 555-0100", in an event refused for its timestamp.
    The quarantine was searched for "+14155550100" only, and kept it. Ana's body, with a number one digit off,
    stays."""
    running_hub.send(message("identify", userId="sam", traits={"phone": "+14155550100"}),
                     message(event="Callback Requested", timestamp="yesterday", userId="sam-app",
                             properties={"callback": "(415) 555-0100"}),
                     message(event="Callback Requested", timestamp="yesterday", userId="ana",
                             properties={"callback": "(415) 555-0101"}))
    running_hub.settle()
    [profile_id] = {d["profile_id"] for d in running_hub.admin("/api/touchpoints")["touchpoints"]}
    assert running_hub.client.delete(f"/api/profiles/{profile_id}", headers=AUTH).status_code == 200
    kept = running_hub.admin("/api/quarantine")["quarantine"]
    assert sorted(entry["reason"] == quarantine.ERASED_REASON for entry in kept) == [False, True]
    assert "sam-app" not in json.dumps(kept) and any("(415) 555-0101" in entry["raw_body"] for entry in kept)


def test_forget_finds_an_address_as_sdks_escape_it_and_only_as_a_whole(running_hub: RunningHub) -> None:
    """analytics-python escapes non-ASCII (ensure_ascii): Zoë's email reaches the quarantine as
    "zo\\u00eb@example.com", and forgetting her must find it there. Jimbo's body, whose address merely contains
    hers as a string (jimbo@...), is his, and stays."""
    zoe, jimbo = "zoë@example.com", "xzoë@example.com"
    running_hub.send(message("identify", userId="zoe", traits={"email": zoe}))
    running_hub.settle()
    refused = [{"type": "track", "messageId": f"m-{who}", "userId": who, "event": "Signed Up", "timestamp": "yesterday",
                "properties": {"contact": address}} for who, address in (("zoe-app", zoe), ("jimbo", jimbo))]
    for item in refused:  # a body each: one quarantined row each
        body = json.dumps({"batch": [item]}).encode()  # ensure_ascii: zo\u00eb
        assert b"\\u00eb" in body
        running_hub.client.post("/v1/batch", content=body, auth=(WRITE_KEY, ""), headers={"content-type": "application/json"})
    running_hub.settle()
    [profile_id] = {t["profile_id"] for t in running_hub.admin("/api/touchpoints")["touchpoints"]}
    assert running_hub.client.delete(f"/api/profiles/{profile_id}", headers=AUTH).status_code == 200
    kept = running_hub.admin("/api/quarantine")["quarantine"]
    assert sorted(entry["reason"] == quarantine.ERASED_REASON for entry in kept) == [False, True]
    assert any("jimbo" in entry["raw_body"] for entry in kept)


@pytest.mark.parametrize("text", [
    "Receipts go to bo@example.com.", "write to bo@example.com&x=1", '{"email":"bo@example.com"}', "(bo@example.com)",
])
def test_an_address_is_found_however_the_text_around_it_ends(text: str) -> None:
    """A full stop ending a sentence is no part of the address: forget and unmerge must find it there as they
    find it in JSON."""
    assert holds_values(text, {"bo@example.com"})


@pytest.mark.parametrize("text", ["jimbo@example.com", "jane+bo@example.com", "bo@example.com.au", "bo@example.com-mail.net"])
def test_an_address_inside_a_longer_one_is_not_found(text: str) -> None:
    assert not holds_values(text, {"bo@example.com"})
