"""Twilio status callbacks and inbound STOP/START, signed by the fake Twilio, verified by the hub."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from hub.clock import utcnow
from hub.model import Identifier, derived_id
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import live_traits
from hub.store.schema import held_reports

from tests.conftest import RunningHub, message, support_ticket

PHONE = "+14155550177"


def at(**delta: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).isoformat()


def trigger_sms(running_hub: RunningHub, user: str = "u-cb", phone: str = PHONE) -> dict:
    running_hub.send(*support_ticket(user, {"phone": phone}))
    running_hub.settle()
    [delivery] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    return delivery


def delivery_now(running_hub: RunningHub, delivery_id: str) -> dict:
    return next(d for d in running_hub.admin("/api/deliveries")["deliveries"] if d["delivery_id"] == delivery_id)


def traits(running_hub: RunningHub, phone: str = PHONE) -> dict:
    return running_hub.admin("/api/profiles/lookup", type="phone", value=phone)["traits"]


def test_message_carries_the_hubs_status_callback_and_callbacks_move_the_status(running_hub: RunningHub) -> None:
    delivery = trigger_sms(running_hub)
    twilio = running_hub.sandbox.twilio
    [sent] = twilio.messages
    assert twilio.status_callbacks == {sent["sid"]: f"{running_hub.url}/v1/callbacks/twilio_sms"}
    assert delivery["status"] == "sent" and delivery["provider_message_id"] == sent["sid"]

    assert twilio.post_status(sent["sid"], "sent").status_code == 200
    assert (delivery_now(running_hub, delivery["delivery_id"])["provider_status"]) == "sent"
    assert twilio.post_status(sent["sid"], "delivered").status_code == 200
    assert twilio.post_status(sent["sid"], "sent").status_code == 200  # late and out of order: ignored
    settled = delivery_now(running_hub, delivery["delivery_id"])
    assert (settled["status"], settled["provider_status"]) == ("delivered", "delivered")


def test_undelivered_callback_fails_the_delivery_with_twilios_error_code(running_hub: RunningHub) -> None:
    delivery = trigger_sms(running_hub)
    sid = running_hub.sandbox.twilio.messages[0]["sid"]
    assert running_hub.sandbox.twilio.post_status(sid, "undelivered", error_code=30003).status_code == 200
    failed = delivery_now(running_hub, delivery["delivery_id"])
    assert (failed["status"], failed["provider_status"], failed["last_error"]) == ("failed", "undelivered", "twilio.30003")
    assert traits(running_hub).get("sms_opt_out") is None


def held_report_count(running_hub: RunningHub) -> int:
    with running_hub.hub.store.read() as connection:
        return connection.execute(select(func.count()).select_from(held_reports)).scalar_one()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_statuses_that_come_before_the_send_is_recorded_are_applied_when_it_is(running_hub: RunningHub) -> None:
    """Twilio's first callbacks may come while the worker has not yet committed the message id: they were
    dropped, and the delivery stayed `sent` for good. They are held and applied when the send is recorded."""
    running_hub.sandbox.twilio.reports_before_answer = [("sent", None), ("delivered", None)]
    delivery = trigger_sms(running_hub)
    assert (delivery["status"], delivery["provider_status"]) == ("delivered", "delivered")
    assert held_report_count(running_hub) == 0


def test_an_early_21610_refusal_revokes_sms_consent_once_the_send_is_recorded(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.reports_before_answer = [("failed", 21610)]
    delivery = trigger_sms(running_hub)
    assert (delivery["status"], delivery["last_error"]) == ("failed", "twilio.21610")
    assert traits(running_hub)["sms_opt_out"] is True


def test_a_status_for_a_message_the_hub_never_sent_is_held_a_day_at_most(running_hub: RunningHub) -> None:
    """Acknowledged (Twilio would not post it again), held in case its send is being recorded, then dropped."""
    twilio = running_hub.sandbox.twilio
    url = f"{running_hub.url}/v1/callbacks/twilio_sms"
    unknown = {"AccountSid": twilio.account_sid, "MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    assert twilio.post_signed(url, unknown).status_code == 200
    assert held_report_count(running_hub) == 1
    with running_hub.hub.store.write() as connection:
        connection.execute(held_reports.update().values(received_at=datetime.now(timezone.utc) - timedelta(days=2)))
    assert twilio.post_signed(url, {**unknown, "MessageSid": "SM" + "1" * 32}).status_code == 200
    assert held_report_count(running_hub) == 1  # the old one went


def test_forged_or_unsigned_callback_is_403_and_changes_nothing(running_hub: RunningHub) -> None:
    delivery = trigger_sms(running_hub)
    sid = running_hub.sandbox.twilio.messages[0]["sid"]
    url = f"{running_hub.url}/v1/callbacks/twilio_sms"
    fields = {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "21610", "AccountSid": "AC" + "0" * 32}
    forged = RequestValidator("not-the-auth-token").compute_signature(url, fields)
    assert httpx.post(url, data=fields, headers={"X-Twilio-Signature": forged}).status_code == 403
    assert httpx.post(url, data=fields).status_code == 403
    genuine = RequestValidator(running_hub.sandbox.twilio.auth_token).compute_signature(url, fields)
    tampered = {**fields, "MessageStatus": "delivered"}
    assert httpx.post(url, data=tampered, headers={"X-Twilio-Signature": genuine}).status_code == 403
    unchanged = delivery_now(running_hub, delivery["delivery_id"])
    assert (unchanged["status"], unchanged["provider_status"]) == ("sent", None)
    assert traits(running_hub).get("sms_opt_out") is None


def test_bad_callback_bodies_are_400_and_unknown_destinations_404(running_hub: RunningHub) -> None:
    url = f"{running_hub.url}/v1/callbacks/twilio_sms"
    assert httpx.post(url, json={"MessageSid": "SM1"}).status_code == 400
    signed_without_status = running_hub.sandbox.twilio.post_signed(url, {"MessageSid": "SM1"})
    assert signed_without_status.status_code == 400
    assert "MessageStatus" in signed_without_status.json()["error"]
    assert running_hub.sandbox.twilio.post_signed(f"{url}/bogus", {"MessageSid": "SM1"}).status_code == 400
    assert httpx.post(f"{running_hub.url}/v1/callbacks/nowhere", data={"a": "b"}).status_code == 404


def test_failed_callback_with_21610_revokes_sms_consent(running_hub: RunningHub) -> None:
    trigger_sms(running_hub)
    sid = running_hub.sandbox.twilio.messages[0]["sid"]
    assert running_hub.sandbox.twilio.post_status(sid, "failed", error_code=21610).status_code == 200
    assert traits(running_hub)["sms_opt_out"] is True


def test_a_repeated_21610_callback_does_not_undo_a_later_start(running_hub: RunningHub) -> None:
    """Twilio may post a status callback again, and a captured one can be replayed (its signature carries no
    time). The repeat finds the delivery settled; revoking again would cancel the START the person texted since."""
    trigger_sms(running_hub)
    twilio = running_hub.sandbox.twilio
    sid = twilio.messages[0]["sid"]
    assert twilio.post_status(sid, "failed", error_code=21610).status_code == 200
    assert traits(running_hub)["sms_opt_out"] is True
    assert twilio.post_inbound(f"{running_hub.url}/v1/callbacks/twilio_sms/inbound", PHONE, "START").status_code == 200
    assert traits(running_hub)["sms_opt_out"] is False

    assert twilio.post_status(sid, "failed", error_code=21610).status_code == 200
    assert traits(running_hub)["sms_opt_out"] is False


def test_a_first_21610_callback_after_the_persons_start_does_not_undo_it(running_hub: RunningHub) -> None:
    """Twilio reports a refusal minutes after the send, and the person may have texted START meanwhile (to a
    hub that had their STOP from elsewhere): the refusal is older than that word and must not cancel it."""
    trigger_sms(running_hub)
    twilio = running_hub.sandbox.twilio
    inbound = f"{running_hub.url}/v1/callbacks/twilio_sms/inbound"
    assert twilio.post_inbound(inbound, PHONE, "START").status_code == 200

    assert twilio.post_status(twilio.messages[0]["sid"], "failed", error_code=21610).status_code == 200
    assert traits(running_hub)["sms_opt_out"] is False
    [sms] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    assert sms["status"] == "failed"  # the status is recorded all the same


def test_unsubscribed_21610_at_send_revokes_consent_and_stops_later_texts(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.unsubscribed.add(PHONE)
    delivery = trigger_sms(running_hub)
    assert delivery["status"] == "failed"
    assert delivery["attempt_log"][0]["error_class"] == "twilio.21610"
    assert traits(running_hub)["sms_opt_out"] is True

    running_hub.send(message(userId="u-cb", event="Ticket Submitted", timestamp=at(seconds=1)))
    running_hub.settle()
    assert len(running_hub.sandbox.twilio.requests) == 1  # the refused one; nothing more was sent


def test_inbound_stop_and_start_change_sms_consent(running_hub: RunningHub) -> None:
    trigger_sms(running_hub)
    inbound = f"{running_hub.url}/v1/callbacks/twilio_sms/inbound"
    twilio = running_hub.sandbox.twilio
    answer = twilio.post_inbound(inbound, PHONE, " stop ")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/xml")
    assert b"<Response>" in answer.content
    assert traits(running_hub)["sms_opt_out"] is True
    assert twilio.post_inbound(inbound, PHONE, "When does my order arrive?").status_code == 200
    assert traits(running_hub)["sms_opt_out"] is True
    assert twilio.post_inbound(inbound, PHONE, "START").status_code == 200
    assert traits(running_hub)["sms_opt_out"] is False


def test_after_a_start_an_opt_out_said_later_anywhere_holds(running_hub: RunningHub) -> None:
    """START was pinned as the end of time's word, like STOP: when the person then turned texts off in the
    app's settings (an identify with `sms_opt_out: true`), the next ticket texted them anyway."""
    trigger_sms(running_hub)
    inbound = f"{running_hub.url}/v1/callbacks/twilio_sms/inbound"
    running_hub.sandbox.twilio.post_inbound(inbound, PHONE, "STOP")
    running_hub.send(message("identify", userId="u-cb", traits={"sms_opt_out": False}, timestamp=at(seconds=30)))
    running_hub.settle()
    assert traits(running_hub)["sms_opt_out"] is True  # a cached trait resent by an SDK does not undo a STOP
    running_hub.sandbox.twilio.post_inbound(inbound, PHONE, "START")
    assert traits(running_hub)["sms_opt_out"] is False
    running_hub.send(message("identify", userId="u-cb", traits={"sms_opt_out": True}, timestamp=at(seconds=-1)))
    running_hub.settle()
    assert traits(running_hub)["sms_opt_out"] is True


def test_start_takes_back_an_opt_out_given_as_a_consent_object(running_hub: RunningHub) -> None:
    """`consent: {sms: false}` (Segment-style traits) stayed in force after a START, so texts never resumed."""
    trigger_sms(running_hub)
    running_hub.send(message("identify", userId="u-cb", traits={"consent": {"sms": False, "email": True}}, timestamp=at(seconds=30)))
    running_hub.settle()
    running_hub.sandbox.twilio.post_inbound(f"{running_hub.url}/v1/callbacks/twilio_sms/inbound", PHONE, "START")
    assert (traits(running_hub)["sms_opt_out"], traits(running_hub)["consent"]) == (False, {"sms": True, "email": True})


def test_forged_inbound_stop_is_403_and_consent_stays(running_hub: RunningHub) -> None:
    trigger_sms(running_hub)
    url = f"{running_hub.url}/v1/callbacks/twilio_sms/inbound"
    fields = {"From": PHONE, "Body": "STOP", "MessageSid": "SM" + "1" * 32}
    forged = RequestValidator("guessed").compute_signature(url, fields)
    assert httpx.post(url, data=fields, headers={"X-Twilio-Signature": forged}).status_code == 403
    assert traits(running_hub).get("sms_opt_out") is None


def test_a_stop_from_a_number_stored_before_phones_had_to_be_valid_revokes_sms_consent(running_hub: RunningHub) -> None:
    """Phones had only to be possible numbers until 646b223, and such a profile is still texted; the inbound
    route then normalized the sender as ingest does, valid numbers only, so its STOP was a 400 and the opt-out
    was lost. A possible number nobody holds is accepted and changes nothing; a From that is no number is a 400."""
    possible_only = "+19995550100"  # area code 999 is assigned nowhere (yet): possible, not valid
    with running_hub.hub.store.write() as connection:
        graph = SqlIdentityGraph(connection)
        profile_id = graph.create_profile(utcnow())
        graph.attach(profile_id, [Identifier("phone", possible_only)], derived_id("test", "before-646b223"), utcnow())
    inbound = f"{running_hub.url}/v1/callbacks/twilio_sms/inbound"
    twilio = running_hub.sandbox.twilio
    assert twilio.post_inbound(inbound, possible_only, "STOP").status_code == 200
    assert twilio.post_inbound(inbound, "+19995550101", "STOP").status_code == 200  # nobody's number
    assert twilio.post_inbound(inbound, "not a number", "STOP").status_code == 400
    with running_hub.hub.store.read() as connection:
        assert live_traits(connection, [profile_id])[profile_id]["sms_opt_out"] is True
