"""Twilio SMS and SMTP email refusals of the hub's own setup, wherever the provider gives them: parked (auth) to be
replayed once fixed, not failed for good; and an aiohttp connection Twilio closed is a network failure."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from socket import socket
from typing import Literal

import pytest

from connectors.destinations.twilio_sms import TwilioSmsConfig, TwilioSmsDestination
from connectors.sandbox.smtp import FakeSmtp, SmtpServer
from connectors.sandbox.twilio import FakeTwilio, create_app
from hub.errors import AuthDeliveryError, DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery
from hub.serving import BackgroundServer, bind_socket
from tests.conftest import vendor_fake_fixtures
from tests.test_email_destination import CREDENTIALS, RECIPIENT, destination, send_expecting
from tests.test_sandbox_twilio import RECIPIENT as PHONE
from tests.test_sandbox_twilio import SENDER, refusals, sms_destination
from tests.test_webhook_destination import RawReceiver

fake, server, fresh = vendor_fake_fixtures("fake", FakeTwilio, create_app)

# ---------------------------------------------------------------------------------------------- Twilio


@pytest.mark.parametrize(("code", "says"), [
    (21212, f"The 'From' number {SENDER} is not a valid phone number, shortcode, or alphanumeric sender ID."),
    (21603, "A 'From' phone number is required."),
    (21659, f"'From' {SENDER} is not a Twilio phone number or Short Code country mismatch"),
    (21660, f"Mismatch between the 'From' number {SENDER} and the account"),
])
def test_a_from_number_twilio_refuses_parks_every_sms_as_the_hubs_setup(
    server: BackgroundServer, fake: FakeTwilio, code: int, says: str
) -> None:
    """HUB_TWILIO_FROM_NUMBER that Twilio refuses (not a valid sender, not a Twilio number, another account's) is
    refused on every SMS alike, as the StatusCallback URL's 21609 is; these codes fell through to the 400 status,
    so each SMS failed for good, none left to replay once the sender number was fixed."""
    fake.fail_next(400, code=code, message=says)
    [refused] = refusals(sms_destination(server, fake), engine_loop=True, sends=1)
    assert isinstance(refused, AuthDeliveryError), refused.failure
    assert (refused.failure.error_class, refused.failure.unreachable) == (f"twilio.{code}", False)


def test_a_pooled_connection_twilio_closed_is_a_network_failure_not_a_connector_bug() -> None:
    """The engine sends SMS with twilio's aiohttp client over pooled keep-alive connections; one Twilio closed
    meanwhile fails as aiohttp.ServerDisconnectedError, no OSError, which was filed `unexpected.` (the mark of a
    connector bug, logged with a stack trace each time) where the webhooks' aiohttp sends file it `network.`."""
    with RawReceiver(lambda connection: None) as closing:  # reads the request, closes without an answer
        port = closing.listener.getsockname()[1]
        config = TwilioSmsConfig(account_sid="AC" + "0" * 32, auth_token="token", from_number=SENDER,
                                 api_base_url=f"http://127.0.0.1:{port}")
        sms = Delivery("d-1", "twilio_sms", "sms", PHONE, {"body": "Hi Jane"}, 0, datetime.now(timezone.utc))

        async def send() -> DeliveryError:
            target = TwilioSmsDestination("twilio_sms", config)
            try:
                with pytest.raises(DeliveryError) as failed:
                    await target.deliver_async(sms)
                return failed.value
            finally:
                await target.close_async()

        error = asyncio.run(send())
    assert isinstance(error, RetryableDeliveryError)
    assert error.failure.error_class == "network.ServerDisconnectedError", error.failure


# ---------------------------------------------------------------------------------------------- SMTP


def scripted_relay(replies: Mapping[bytes, bytes], auth: bytes = b"PLAIN LOGIN") -> int:
    """The port of a relay for one conversation, on a thread: it offers AUTH `auth` and STARTTLS to EHLO and
    answers each other verb from `replies` (else 250). For answers the sandbox relay (aiosmtpd) never gives."""
    listener = bind_socket()
    listener.listen(1)
    threading.Thread(target=_converse, args=(listener, replies, auth), daemon=True).start()
    return int(listener.getsockname()[1])


def _converse(listener: socket, replies: Mapping[bytes, bytes], auth: bytes) -> None:
    with listener, listener.accept()[0] as connection, connection.makefile("rb") as lines:
        connection.sendall(b"220 relay.example ESMTP\r\n")
        for line in lines:
            verb = line.split(b" ")[0].strip().upper()
            if verb == b"EHLO":
                connection.sendall(b"250-relay.example\r\n250-AUTH " + auth + b"\r\n250 STARTTLS\r\n")
            elif verb == b"QUIT":
                connection.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                connection.sendall(replies.get(verb, b"250 2.0.0 OK\r\n"))


@pytest.mark.parametrize(("reply", "outcome"), [
    (b"554 5.7.3 Unable to initialize security subsystem", AuthDeliveryError),
    (b"454 4.7.0 TLS not available due to temporary reason", RetryableDeliveryError),  # RFC 3207: for now
])
def test_a_relay_refusing_starttls_with_a_5xx_parks_the_email_as_a_setup_error(
    reply: bytes, outcome: type[DeliveryError]
) -> None:
    """A 5xx to STARTTLS refuses the hub's connection before any message or recipient is named, the same for every
    email, as a certificate that does not verify does: it fell through to "any other 5xx is final", and every
    email failed for good, none left to replay once the relay or HUB_SMTP_TLS was fixed."""
    port = scripted_relay({b"STARTTLS": reply + b"\r\n"})
    error = send_expecting(destination(port, tls="starttls"), outcome)
    assert error.failure.error_class == f"smtp.{reply[:3].decode()}"


def test_a_relay_offering_no_auth_mechanism_smtplib_speaks_parks_the_email() -> None:
    """A relay offering AUTH only as NTLM/GSSAPI (Exchange on premises) or XOAUTH2 (Microsoft 365 and Gmail once
    basic auth is off) never takes the hub's password: smtplib's bare SMTPException("No suitable authentication
    method found.") was retried as a dropped connection for the whole retry budget, where a relay without AUTH at
    all is parked at once."""
    port = scripted_relay({}, auth=b"NTLM GSSAPI XOAUTH2")
    failure = send_expecting(destination(port), AuthDeliveryError).failure
    assert failure.error_class == "smtp.auth_mechanism"
    assert "The relay offers NTLM GSSAPI XOAUTH2" in failure.message and "PLAIN or LOGIN" in failure.message


@pytest.mark.parametrize(("stage", "reply"), [
    # Amazon SES checks the sender's identity at the end of DATA
    ("data", "554 Message rejected: Email address is not verified. The following identities failed the check in "
             "region US-EAST-1: help@shop.example"),
    # Postfix reject_sender_login_mismatch, reported at RCPT (smtpd_delay_reject = yes, the default)
    ("rcpt", "553 5.7.1 <help@shop.example>: Sender address rejected: not owned by user relay-user"),
    ("rcpt", "550 5.1.1 <Help@Shop.example>: Sender address rejected: undeliverable address"),
])
def test_a_relay_refusing_the_hubs_from_address_after_mail_from_parks_the_email(
    stage: Literal["rcpt", "data"], reply: str
) -> None:
    """The same refusal of the hub's From address at MAIL FROM parks; given at RCPT or after DATA it fell through to
    "any other 5xx", and every email failed for good (one quoting 5.1.1 also took the recipient's address off
    their profile), none left to replay once the sender was set up."""
    smtp = FakeSmtp(credentials=CREDENTIALS)
    smtp.fail_next(reply, stage=stage)
    with SmtpServer(smtp) as relay:
        failure = send_expecting(destination(relay.port), AuthDeliveryError).failure
    assert (failure.error_class, failure.recipient_gone) == (f"smtp.{reply[:3]}", None)


@pytest.mark.parametrize("reply", [
    f"550 5.1.1 <{RECIPIENT}>: Recipient address rejected: User unknown in virtual mailbox table",
    "550 5.1.1 The email account that you tried to reach does not exist (help@shop.example.org)",
])
def test_a_recipient_refused_as_unknown_is_still_a_hard_bounce(reply: str) -> None:
    """Reading the reply for the hub's From address must not park a dead recipient, nor one whose address merely
    contains the From address."""
    smtp = FakeSmtp(credentials=CREDENTIALS)
    smtp.fail_next(reply, stage="rcpt")
    with SmtpServer(smtp) as relay:
        failure = send_expecting(destination(relay.port), PermanentDeliveryError).failure
    assert failure.recipient_gone is not None and "5.1.1" in failure.recipient_gone


def test_a_relay_challenging_auth_for_ever_is_retried_not_named_as_offering_no_mechanism() -> None:
    """A relay answering every AUTH PLAIN line with another 334 ends in smtplib's bare SMTPException ("Server AUTH
    mechanism infinite loop"): it was parked as `smtp.auth_mechanism`, saying the relay offers PLAIN and the hub
    needs PLAIN or LOGIN."""
    user, password = CREDENTIALS
    answer = base64.b64encode(f"\0{user}\0{password}".encode()).upper()
    port = scripted_relay({b"AUTH": b"334 \r\n", answer: b"334 \r\n"}, auth=b"PLAIN")
    failure = send_expecting(destination(port), RetryableDeliveryError).failure
    assert failure.error_class == "smtp.SMTPException"
    assert "infinite loop" in failure.message
