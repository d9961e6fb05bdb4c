"""Unsubscribe links: signed and expiring tokens, a GET that changes nothing, a one-click POST that revokes email."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.consent import set_consent_by_identifier
from hub.model import Identifier, RawEvent
from hub.runtime import Hub
from hub.store import delivery_log, inbox, outbox
from hub.store.forget_digest import identifier_digest
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import find_profile_id
from hub.store.schema import consent_changes, deliveries
from hub.unsubscribe import ExpiredToken, InvalidToken, make_token, read_token
from tests.conftest import RunningHub, make_settings, message, support_ticket
from tests.test_absence_timers import accept

NOW = datetime.now(timezone.utc)
EMAIL = "ana@example.com"
PHONE = "+14155550142"
DELIVERY = "0193b6f0-2f6c-7c2e-9d1a-5f0e6a7b8c9d"


def test_tokens_round_trip_and_refuse_tampering_other_secrets_and_expiry() -> None:
    token = make_token("s3cret", "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ", "email", DELIVERY, NOW + timedelta(days=1))
    request = read_token(["s3cret"], token, NOW)
    assert (request.profile_id, request.channel, request.delivery_id) == ("01JDQ6ZB3T7E3Y0P6M2C1V9XKQ", "email", DELIVERY)
    payload, signature = token.split(".")
    forged = make_token("guess", "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ", "email", DELIVERY, NOW + timedelta(days=1))
    someone_else = make_token("guess", "01JDQ70000000000000000000", "email", DELIVERY, NOW + timedelta(days=1)).split(".")[0]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for bad in (forged, f"{payload}.{flipped}", f"{someone_else}.{signature}", "garbage", "", "a.b.c", "é.é"):
        with pytest.raises(InvalidToken):
            read_token(["s3cret"], bad, NOW)
    with pytest.raises(ExpiredToken):
        read_token(["s3cret"], token, NOW + timedelta(days=2))


def test_a_link_signed_before_the_secret_changed_works_until_it_expires(tmp_path: Path) -> None:
    """A leaked unsubscribe secret must be replaceable without breaking the links in emails already sent."""
    settings = make_settings(tmp_path, unsubscribe_secret="new-secret", unsubscribe_previous_secret="s3cret")
    sent_before = make_token("s3cret", "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ", "email", DELIVERY, NOW + timedelta(days=1))
    assert read_token(settings.unsubscribe_secrets(), sent_before, NOW).profile_id == "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ"
    with pytest.raises(InvalidToken):
        read_token(make_settings(tmp_path, unsubscribe_secret="new-secret").unsubscribe_secrets(), sent_before, NOW)


def trigger_email(running_hub: RunningHub, user: str = "u-mail") -> None:
    running_hub.send(*support_ticket(user, {"email": EMAIL, "first_name": "Ana"}, NOW - timedelta(minutes=5)))
    running_hub.settle()


def email_traits(running_hub: RunningHub) -> dict:
    return running_hub.admin("/api/profiles/lookup", type="email", value=EMAIL)["traits"]


def test_one_click_unsubscribe_revokes_email_consent_and_stops_the_next_email(running_hub: RunningHub) -> None:
    trigger_email(running_hub)
    [received] = running_hub.sandbox.smtp.received
    [link] = re.findall(r"^<(.+)>$", received.message["List-Unsubscribe"])
    assert link.startswith(f"{running_hub.url}/v1/unsubscribe?token=")

    page = httpx.get(link)  # what a link scanner or a click does: nothing changes yet
    assert page.status_code == 200 and "<form method=\"post\"" in page.text
    assert "email_opt_out" not in email_traits(running_hub)

    one_click = httpx.post(link, content="List-Unsubscribe=One-Click",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert one_click.status_code == 200 and "Unsubscribed" in one_click.text
    assert email_traits(running_hub)["email_opt_out"] is True
    with running_hub.hub.store.read() as connection:  # said through the address the email went to (for unmerges)
        [said] = connection.execute(select(consent_changes)).mappings().all()
    assert (said["channel"], said["granted"], said["reason"]) == ("email", False, "unsubscribe link")
    assert said["identifier_digest"] == identifier_digest(Identifier("email", EMAIL))

    running_hub.send(message(userId="u-mail", event="Ticket Submitted", timestamp=(NOW + timedelta(days=2)).isoformat()))
    running_hub.settle()
    assert len(running_hub.sandbox.smtp.received) == 1
    email_deliveries = running_hub.admin("/api/deliveries", channel="email")["deliveries"]
    assert len(email_deliveries) == 1 and email_deliveries[0]["target"] == "a***@example.com"


def test_forged_expired_and_unknown_profile_links_change_nothing(running_hub: RunningHub) -> None:
    trigger_email(running_hub)
    profile_id = running_hub.admin("/api/profiles/lookup", type="email", value=EMAIL)["profile_id"]
    secret = running_hub.hub.settings.unsubscribe_secret.get_secret_value()
    url = f"{running_hub.url}/v1/unsubscribe"
    forged = make_token("not-our-secret", profile_id, "email", DELIVERY, NOW + timedelta(days=1))
    expired = make_token(secret, profile_id, "email", DELIVERY, NOW - timedelta(seconds=1))
    nobody = make_token(secret, "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ", "email", DELIVERY, NOW + timedelta(days=1))
    assert httpx.post(url, params={"token": forged}).status_code == 403
    assert httpx.get(url, params={"token": forged}).status_code == 403
    answer = httpx.post(url, params={"token": expired})
    assert answer.status_code == 410 and "expired" in answer.text
    assert httpx.post(url, params={"token": nobody}).status_code == 404
    assert httpx.post(url).status_code == 400  # no token at all: the "Invalid link" page
    assert "email_opt_out" not in email_traits(running_hub)


@pytest.mark.parametrize("revoked_by", ["sms STOP", "opt-out trait"])
def test_a_message_planned_before_consent_was_revoked_is_not_sent(
    tmp_path: Path, sandbox: SandboxProviders, revoked_by: str
) -> None:
    """A message held by a delay or quiet hours can meet a STOP or an opt-out before it goes: the delivery
    engine checks consent again when it claims it, and the delivery fails unsent, saying why."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides()))  # workers not started: each step by hand
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m)
                                  for m in support_ticket("u-stop", {"phone": PHONE, "sms_opt_out": "false"})], utcnow())
    while hub.pipeline.run_once():
        pass
    with hub.store.write() as connection:  # held an hour (a delay, quiet hours), then consent is revoked
        connection.execute(update(deliveries).values(created_at=utcnow() - timedelta(hours=1)))
        if revoked_by == "sms STOP":
            set_consent_by_identifier(connection, Identifier("phone", PHONE), "sms", False, utcnow(), "STOP")
        else:
            profile_id = find_profile_id(connection, Identifier("phone", PHONE))
            assert profile_id is not None
            SqlIdentityGraph(connection).update_traits(profile_id, {"sms_opt_out": "yes"}, utcnow())
    while hub.delivery.run_once():
        pass
    hub.delivery.close()
    assert sandbox.twilio.messages == []
    with hub.store.read() as connection:
        [sms] = delivery_log.search(connection, limit=10, channel="sms")
        spent = outbox.going_since(connection, [sms["profile_id"]], ["sms"], utcnow() - timedelta(days=1))
    assert (sms["status"], sms["attempts"]) == ("failed", 0)
    assert sms["last_error"] == "not sent: consent was revoked after it was planned"
    assert spent == {}  # it reached nobody, so it spends none of the person's daily cap
    hub.store.dispose()


def test_the_development_unsubscribe_secret_is_among_the_secrets_the_hub_warns_about(tmp_path: Path) -> None:
    """With it anyone can forge a link that opts any profile out."""
    settings = make_settings(tmp_path, unsubscribe_secret="dev-unsubscribe-secret")
    assert settings.development_credentials() == ["HUB_UNSUBSCRIBE_SECRET"]  # make_settings sets the other two
    assert make_settings(tmp_path, unsubscribe_secret="s3cret").development_credentials() == []


def test_a_trait_in_a_later_event_does_not_undo_what_the_person_said_through_a_provider(tmp_path: Path) -> None:
    """Mobile SDKs resend cached traits on every event: `sms_opt_out: false` from an old identify, stamped with
    the new event's time, turned SMS back on right after a STOP. Only the person's next word (START) does."""
    hub = Hub(make_settings(tmp_path))

    def accept(event: dict) -> None:
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent("default", event["messageId"], event)], utcnow())
        while hub.pipeline.run_once():
            pass

    def sms_opt_out() -> object:
        with hub.store.read() as connection:
            profile_id = find_profile_id(connection, Identifier("phone", PHONE))
            return SqlIdentityGraph(connection).traits(profile_id or "")["sms_opt_out"]

    cached = {"phone": PHONE, "sms_opt_out": False}
    accept(message("identify", userId="u-sdk", traits=cached, timestamp=(NOW - timedelta(days=1)).isoformat()))
    with hub.store.write() as connection:
        set_consent_by_identifier(connection, Identifier("phone", PHONE), "sms", False, utcnow(), "STOP")
    accept(message(userId="u-sdk", event="Product Viewed", context={"traits": cached},
                   timestamp=(utcnow() + timedelta(minutes=1)).isoformat()))
    assert sms_opt_out() is True
    with hub.store.write() as connection:
        set_consent_by_identifier(connection, Identifier("phone", PHONE), "sms", True, utcnow(), "START")
    assert sms_opt_out() is False
    hub.store.dispose()


def test_no_event_time_undoes_a_withdrawal_or_outranks_later_traits(tmp_path: Path) -> None:
    """A withdrawal is pinned at the end of time. An identify dated 9999-12-31T23:59:59.999999Z (a broken device
    clock, or anyone holding the public write key) tied the pin and turned email back on; and a trait from a clock
    a year ahead beat every correct change after it. Traits count as set no later than the hub received them."""
    hub = Hub(make_settings(tmp_path))

    def traits() -> dict:
        with hub.store.read() as connection:
            return SqlIdentityGraph(connection).traits(find_profile_id(connection, Identifier("email", EMAIL)) or "")

    accept(hub, message("identify", userId="u-pin", traits={"email": EMAIL}, timestamp=(NOW - timedelta(days=1)).isoformat()))
    with hub.store.write() as connection:
        set_consent_by_identifier(connection, Identifier("email", EMAIL), "email", False, utcnow(), "unsubscribe link")
    accept(hub, message("identify", userId="u-pin", traits={"email_opt_out": False, "plan": "pro"},
                        timestamp="9999-12-31T23:59:59.999999+00:00"))
    accept(hub, message("identify", userId="u-pin", traits={"plan": "team"}, timestamp=utcnow().isoformat()))
    assert (traits()["email_opt_out"], traits()["plan"]) == (True, "team")
    hub.store.dispose()


def test_consent_given_for_one_channel_keeps_what_was_said_for_the_others(tmp_path: Path) -> None:
    """`consent` merges channel by channel: a later identify with {email: true} replaced {sms: false} whole,
    and SMS went out again."""
    hub = Hub(make_settings(tmp_path))
    for days_ago, consent in ((2, {"sms": False, "email": False}), (1, {"email": True})):
        event = message("identify", userId="u-c", traits={"phone": PHONE, "consent": consent},
                        timestamp=(NOW - timedelta(days=days_ago)).isoformat())
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent("default", event["messageId"], event)], utcnow())
        while hub.pipeline.run_once():
            pass
    with hub.store.read() as connection:
        profile_id = find_profile_id(connection, Identifier("phone", PHONE))
        assert SqlIdentityGraph(connection).traits(profile_id or "")["consent"] == {"sms": False, "email": True}
    hub.store.dispose()


def test_a_hard_bounce_takes_the_address_off_the_profile_and_a_new_one_is_used(running_hub: RunningHub) -> None:
    """The relay refuses the recipient as a mailbox that does not exist (550 5.1.1): mailing it again only hurts
    the sender's reputation, so it leaves Ana's profile (`profiles explain` says why), as a dead push token does,
    and the address she gives next is the one routing picks, her email consent untouched. A refusal of the message itself (554 5.7.1, as spam)
    takes nothing away."""
    def ticket(user: str, traits: dict) -> None:
        running_hub.send(*support_ticket(user, {"first_name": "Ana", **traits}, NOW - timedelta(minutes=5)))
        running_hub.settle()

    running_hub.sandbox.smtp.fail_next("554 5.7.1 Message rejected as spam", stage="data")
    ticket("u-bo", {"email": "bo@example.com"})
    assert running_hub.admin("/api/profiles/lookup", type="email", value="bo@example.com")["profile_id"]

    running_hub.sandbox.smtp.fail_next(f"550 5.1.1 <{EMAIL}>: user unknown", stage="rcpt")
    ticket("u-ana", {"email": EMAIL, "phone": PHONE})
    ana = running_hub.admin("/api/profiles/lookup", type="phone", value=PHONE)
    assert EMAIL not in ana["identifiers"].get("email", [])
    explained = running_hub.admin(f"/api/profiles/{ana['profile_id']}/explain")
    assert "hard bounce: the mail server answered 550 5.1.1" in json.dumps(explained)

    running_hub.send(message("identify", userId="u-ana", traits={"email": "ana.new@example.com"}))
    running_hub.settle()
    ana = running_hub.admin("/api/profiles/lookup", type="phone", value=PHONE)
    assert (ana["identifiers"]["email"], ana["traits"].get("email_opt_out")) == (["ana.new@example.com"], None)
