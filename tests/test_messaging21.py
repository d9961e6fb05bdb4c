"""Email and SMS as a Novu, Twilio or SendGrid user expects them: the plain part of an HTML email, refusals of the
hub's own setup parked rather than failed, and Twilio's out-of-order and repeated callbacks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.destinations.email_smtp import EmailSmtpDestination
from connectors.sandbox.smtp import FakeSmtp, SmtpServer
from hub.errors import AuthDeliveryError, PermanentDeliveryError
from hub.model import Delivery
from hub.serving import bind_socket
from hub.templates import TemplateRenderer
from tests.conftest import RunningHub, support_ticket

PHONE = "+14155550188"


def email_destination(port: int = 25) -> EmailSmtpDestination:
    values = {
        "host": "127.0.0.1", "port": port, "tls": "none", "from_address": "Shop <help@shop.example>",
        "unsubscribe_url": "https://hub.example.com/v1/unsubscribe", "unsubscribe_secret": "s3cret", "timeout_seconds": 5,
    }
    return EmailSmtpDestination("email_smtp", EmailSmtpDestination.validate_config("test", values))


def email_delivery(folder: Path, source: str) -> Delivery:
    """A delivery of the template `source`, rendered as routing renders it."""
    folder.mkdir(exist_ok=True)
    (folder / "shipped.email.j2").write_text(source)
    rendered = TemplateRenderer(folder).render("shipped.email.j2", {"profile": {"first_name": "Jane"}})
    return Delivery(
        delivery_id="5f0c7a9e-1b2c-5d3e-8f4a-6b7c8d9e0f1a", destination_id="email_smtp", channel="email",
        target="jane@example.com", content={**rendered, "template": "shipped.email.j2", "rule_id": "r", "params": {}},
        attempts=0, created_at=datetime.now(timezone.utc), profile_id="01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",
    )


# --- email ------------------------------------------------------------------------------------------------------


def test_an_html_only_email_template_sends_text_derived_from_its_html_as_the_plain_part(tmp_path: Path) -> None:
    """With `subject` and `html` blocks and no `text` block, the plain part was the whole template rendered: the
    subject line, then the raw HTML source. It is the HTML's words, its links kept as "words (url)"."""
    source = (
        "{% block subject %}Your order has shipped{% endblock %}\n"
        "{% block html %}<html><head><style>p { color: red }</style></head><body><p>Hi {{ profile.first_name }},</p>"
        '<p>It is   on its way: <a href="https://shop.example/track?o=1&amp;k=2">track it</a>.</p></body></html>'
        "{% endblock %}\n"
    )
    destination = email_destination()
    delivery = email_delivery(tmp_path / "templates", source)
    message = destination.build_message(delivery, destination.recipient(delivery))
    plain = message.get_body(("plain",)).get_content()
    words, _, footer = plain.partition("\n\nUnsubscribe: ")
    assert words == "Hi Jane,\n\nIt is on its way: track it (https://shop.example/track?o=1&k=2)."
    assert footer.startswith("https://hub.example.com/v1/unsubscribe?token=")
    assert "<p>" in message.get_body(("html",)).get_content()  # the HTML part itself is unchanged


@pytest.fixture
def relay() -> Iterator[tuple[FakeSmtp, SmtpServer]]:
    fake = FakeSmtp()
    with SmtpServer(fake) as server:
        yield fake, server


@pytest.fixture
def blocklisting_relay() -> Iterator[int]:
    """A relay that greets with 554 (RFC 5321 3.1: "no SMTP service here"), as one that has blocklisted our IP."""
    with bind_socket() as listener:
        listener.listen(1)

        def refuse() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org\r\n")
                connection.recv(4096)  # smtplib's QUIT, if it sends one

        refuser = threading.Thread(target=refuse, daemon=True)
        refuser.start()
        yield listener.getsockname()[1]
        refuser.join(2)


def test_a_relay_refusing_our_from_address_or_our_host_parks_the_delivery_as_setup(
    tmp_path: Path, relay: tuple[FakeSmtp, SmtpServer], blocklisting_relay: int
) -> None:
    """A 5xx to MAIL FROM (our From address is not ours to send as) and a 554 greeting (our IP is blocklisted) are
    the same for every email, but failed each one for good, as if its recipient were at fault: nothing was left in
    the dead-letter queue to replay once the setup was fixed, and the circuit breaker never opened. A 552 to MAIL FROM
    (the relay's size limit, RFC 1870) is about the message, and stays permanent."""
    fake, server = relay
    delivery = email_delivery(tmp_path / "templates", "{% block subject %}Hi{% endblock %}{% block text %}Hi{% endblock %}")
    fake.fail_next("553 5.7.1 <help@shop.example>: Sender address rejected: not owned by user", stage="mail")
    with pytest.raises(AuthDeliveryError) as sender_refused:
        email_destination(server.port).deliver(delivery)
    assert sender_refused.value.failure.error_class == "smtp.553"
    with pytest.raises(AuthDeliveryError) as host_refused:
        email_destination(blocklisting_relay).deliver(delivery)
    assert host_refused.value.failure.error_class == "smtp.554"
    fake.fail_next("552 5.3.4 Message size exceeds fixed limit", stage="mail")
    with pytest.raises(PermanentDeliveryError):
        email_destination(server.port).deliver(delivery)
    assert fake.received == []


# --- Twilio -----------------------------------------------------------------------------------------------------


def trigger_sms(running_hub: RunningHub) -> dict[str, Any]:
    running_hub.send(*support_ticket("u-m21", {"phone": PHONE}))
    running_hub.settle()
    [delivery] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    return delivery


def sms_delivery(running_hub: RunningHub, delivery_id: str) -> dict[str, Any]:
    return next(d for d in running_hub.admin("/api/deliveries")["deliveries"] if d["delivery_id"] == delivery_id)


def test_twilio_refusing_the_hubs_own_status_callback_url_parks_the_sms_as_setup(running_hub: RunningHub) -> None:
    """Twilio's 21609 ("Invalid StatusCallback URL") is about the hub's own callback URL (HUB_PUBLIC_BASE_URL),
    the same on every message; as a plain 400 it failed every SMS for good, none left to replay once it was fixed."""
    running_hub.sandbox.twilio.fail_next(400, code=21609, message="Invalid StatusCallback URL")
    delivery = trigger_sms(running_hub)
    assert delivery["status"] == "dead"
    [attempt] = delivery["attempt_log"]
    assert (attempt["outcome"], attempt["error_class"]) == ("auth", "twilio.21609")


def test_a_late_in_transit_twilio_status_does_not_overwrite_a_later_one(running_hub: RunningHub) -> None:
    """Twilio posts status callbacks out of order; a `queued` that came after `sent` set the delivery log back to
    `queued`, as if the message had never left Twilio. Later statuses still replace earlier ones."""
    delivery = trigger_sms(running_hub)
    twilio = running_hub.sandbox.twilio
    sid = twilio.messages[0]["sid"]
    for status in ("sending", "sent", "queued", "sending"):  # the last two late
        assert twilio.post_status(sid, status).status_code == 200
    assert sms_delivery(running_hub, delivery["delivery_id"])["provider_status"] == "sent"
    assert twilio.post_status(sid, "delivered").status_code == 200
    after = sms_delivery(running_hub, delivery["delivery_id"])
    assert (after["status"], after["provider_status"]) == ("delivered", "delivered")


def sms_opted_out(running_hub: RunningHub) -> bool:
    return running_hub.admin("/api/profiles/lookup", type="phone", value=PHONE)["traits"]["sms_opt_out"]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_repeated_signed_start_does_not_undo_the_stop_the_person_texted_after_it(running_hub: RunningHub) -> None:
    """An inbound message's signature carries no time and Twilio retries a webhook with the same MessageSid: a START
    posted again after the person's later STOP turned SMS back on for someone who had just opted out."""
    trigger_sms(running_hub)
    twilio, inbound = running_hub.sandbox.twilio, f"{running_hub.url}/v1/callbacks/twilio_sms/inbound"
    start = "SM" + "a" * 32
    assert twilio.post_inbound(inbound, PHONE, "STOP").status_code == 200
    assert twilio.post_inbound(inbound, PHONE, "START", sid=start).status_code == 200
    assert sms_opted_out(running_hub) is False
    assert twilio.post_inbound(inbound, PHONE, "STOP").status_code == 200
    assert twilio.post_inbound(inbound, PHONE, "START", sid=start).status_code == 200  # the same START again
    assert sms_opted_out(running_hub) is True
    assert twilio.post_inbound(inbound, PHONE, "START").status_code == 200  # a new one is the person's word
    assert sms_opted_out(running_hub) is False
