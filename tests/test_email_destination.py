"""Email with `smtplib` against a real local SMTP server (aiosmtpd): parts, headers, TLS modes, reply codes,
and what goes over the wire: one recipient, raw header fields, internationalised addresses."""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import trustme

from connectors.destinations.email_smtp import EmailSmtpDestination
from connectors.sandbox.smtp import FakeSmtp, SmtpServer, _BoundController
from hub.errors import AuthDeliveryError, ConfigError, DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery
from hub.serving import bind_socket
from hub.settings import PROJECT_MAPPINGS
from hub.templates import TemplateRenderer
from hub.unsubscribe import read_token
from tests.conftest import RunningHub, support_ticket

CREDENTIALS = ("relay-user", "relay-password")
SECRET = "test-unsubscribe-secret"
RECIPIENT = "jane.doe@example.com"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def fake() -> FakeSmtp:
    return FakeSmtp(credentials=CREDENTIALS)


@pytest.fixture
def plain(fake: FakeSmtp) -> Iterator[SmtpServer]:
    with SmtpServer(fake) as server:
        yield server


def destination(server_port: int, **config: Any) -> EmailSmtpDestination:
    values = {
        "host": "127.0.0.1", "port": server_port, "tls": "none", "username": CREDENTIALS[0], "password": CREDENTIALS[1],
        "from_address": "Shop <help@shop.example>", "unsubscribe_url": "https://hub.example.com/v1/unsubscribe",
        "unsubscribe_secret": SECRET, "timeout_seconds": 5, **config,
    }
    return EmailSmtpDestination("email_smtp", EmailSmtpDestination.validate_config("test", values))


def delivery(first_name: str = "Jane") -> Delivery:
    rendered = TemplateRenderer(PROJECT_MAPPINGS / "templates").render(
        "post_purchase_support.email.j2",
        {"profile": {"first_name": first_name}, "vars": {"help_center_url": "https://help.example.com/orders"}},
    )
    return Delivery(
        delivery_id="5f0c7a9e-1b2c-5d3e-8f4a-6b7c8d9e0f1a", destination_id="email_smtp", channel="email",
        target=RECIPIENT, content={**rendered, "template": "post_purchase_support.email.j2", "rule_id": "r", "params": {}},
        attempts=0, created_at=datetime.now(timezone.utc), profile_id="01JDQ6ZB3T7E3Y0P6M2C1V9XKQ",
    )


def send_expecting(
    target: EmailSmtpDestination, error: type[DeliveryError], to: Delivery | None = None
) -> DeliveryError:
    with pytest.raises(error) as raised:
        target.deliver(to or delivery())
    return raised.value


def to(target: str, **content: Any) -> Delivery:
    """The standard delivery sent to `target`, with some of its content replaced."""
    base = delivery()
    return dataclasses.replace(base, target=target, content={**base.content, **content})


class WireSmtp(FakeSmtp):
    """The sandbox relay, also keeping each accepted message as the bytes that came over the wire (the parsed
    copy has encoded-words decoded), and answering QUIT with `quit_reply`."""

    def __init__(self, quit_reply: str = "221 Bye") -> None:
        super().__init__(credentials=CREDENTIALS)
        self.raw: list[bytes] = []
        self.quit_reply = quit_reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            self.raw.append(envelope.original_content or b"")
        return reply

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return self.quit_reply


def raw_header_fields(raw: bytes) -> dict[str, str]:
    """The header fields of a message as sent (unfolded, nothing decoded), by lower-cased name."""
    head = re.sub(rb"\r\n[ \t]+", b" ", raw.split(b"\r\n\r\n", 1)[0]).decode("utf-8")
    return {name.lower(): value for name, _, value in (line.partition(": ") for line in head.split("\r\n"))}


@pytest.fixture
def wire() -> WireSmtp:
    return WireSmtp()


@pytest.fixture
def ascii_relay(wire: WireSmtp) -> Iterator[SmtpServer]:
    """The sandbox relay without the SMTPUTF8 extension, as Amazon SES and many relays run."""
    server = SmtpServer(wire)
    server._controller = _BoundController(
        wire, server._controller._sock, authenticator=wire.authenticate, auth_require_tls=False, enable_SMTPUTF8=False
    )
    with server:
        yield server


def test_email_has_text_and_html_parts_and_a_signed_one_click_unsubscribe(plain: SmtpServer, fake: FakeSmtp) -> None:
    result = destination(plain.port).send(delivery(first_name="<b>Jo</b>"))
    [received] = fake.received
    message = received.message
    assert (received.mail_from, received.rcpt_tos, received.authenticated_as) == ("help@shop.example", [RECIPIENT], "relay-user")
    assert (message["From"], message["To"], message["Subject"]) == ("Shop <help@shop.example>", RECIPIENT, "Help with your order")
    assert message["Message-ID"] == "<5f0c7a9e-1b2c-5d3e-8f4a-6b7c8d9e0f1a@shop.example>" == result.provider_message_id
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert text.startswith("Hi <b>Jo</b>,") and "https://help.example.com/orders" in text
    assert "Hi &lt;b&gt;Jo&lt;/b&gt;," in html and "<b>Jo</b>" not in html  # the html block escapes profile values

    [link] = re.findall(r"^<(.+)>$", message["List-Unsubscribe"])
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert link.startswith("https://hub.example.com/v1/unsubscribe?token=")
    assert f"Unsubscribe: {link}" in text and f'href="{link}"' in html.replace("&amp;", "&")
    request = read_token([SECRET], link.split("token=")[1], datetime.now(timezone.utc))
    assert (request.profile_id, request.channel) == ("01JDQ6ZB3T7E3Y0P6M2C1V9XKQ", "email")
    assert 89 <= (request.expires_at - datetime.now(timezone.utc)).days <= 90


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_starttls_and_implicit_tls_verify_the_server_with_the_configured_ca(
    ca: trustme.CA, ca_file: str, fake: FakeSmtp, mode: str
) -> None:
    with SmtpServer(fake, tls=mode, tls_context=server_context(ca)) as server:  # type: ignore[arg-type]
        assert destination(server.port, tls=mode, ca_file=ca_file).send(delivery()).status == "sent"
        untrusted = send_expecting(destination(server.port, tls=mode), AuthDeliveryError)  # system CAs do not know ours
        assert untrusted.failure.error_class == "tls.SSLCertVerificationError"
    assert len(fake.received) == 1


def test_starttls_wanted_but_not_offered_parks_the_delivery(plain: SmtpServer) -> None:
    error = send_expecting(destination(plain.port, tls="starttls"), AuthDeliveryError)
    assert error.failure.error_class == "smtp.SMTPNotSupportedError"


@pytest.mark.parametrize(("stage", "reply", "error"), [
    ("rcpt", "450 4.2.1 Mailbox busy, try later", RetryableDeliveryError),
    ("data", "451 4.3.0 Temporary local problem", RetryableDeliveryError),
    ("data", "421 4.7.0 Too many connections", RetryableDeliveryError),
    ("rcpt", "550 5.1.1 <jane.doe@example.com>: user unknown", PermanentDeliveryError),
    ("data", "554 5.7.1 Message rejected as spam", PermanentDeliveryError),
])
def test_4xx_replies_retry_and_5xx_replies_are_permanent(
    plain: SmtpServer, fake: FakeSmtp, stage: str, reply: str, error: type[DeliveryError]
) -> None:
    fake.fail_next(reply, stage=stage)  # type: ignore[arg-type]
    failure = send_expecting(destination(plain.port), error).failure
    assert failure.error_class == f"smtp.{reply[:3]}"
    assert RECIPIENT not in failure.message  # masked in the delivery log
    if RECIPIENT in reply:
        assert "j***@example.com" in failure.message
    assert fake.received == []


@pytest.mark.parametrize(("username", "password", "code"), [("relay-user", "wrong", "535"), (None, None, "530")])
def test_refused_or_missing_credentials_are_auth_errors(
    plain: SmtpServer, username: str | None, password: str | None, code: str
) -> None:
    error = send_expecting(destination(plain.port, username=username, password=password), AuthDeliveryError)
    assert error.failure.error_class == f"smtp.{code}"


def test_silent_server_times_out_and_closed_port_is_refused_both_retryable() -> None:
    with bind_socket() as silent:
        silent.listen(1)  # accepts the TCP connection, never sends the SMTP greeting
        timed_out = send_expecting(destination(silent.getsockname()[1], timeout_seconds=0.2), RetryableDeliveryError)
    # smtplib reports a greeting that never comes as a disconnect "timed out"
    assert timed_out.failure.error_class == "smtp.SMTPServerDisconnected" and "timed out" in timed_out.failure.message
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    refused = send_expecting(destination(port), RetryableDeliveryError)
    assert refused.failure.error_class == "network.ConnectionRefusedError"


def test_request_summary_masks_the_recipient() -> None:
    summary = destination(25).request_summary(delivery())
    assert summary == {"to": "j***@example.com", "subject": "Help with your order", "parts": ["text", "html"]}


def test_list_unsubscribe_goes_over_the_wire_as_a_plain_angle_bracketed_url(wire: WireSmtp) -> None:
    """Mailbox providers read the raw field for `<https://...>` (RFC 2369, RFC 8058); folded into RFC 2047
    encoded-words (=?utf-8?q?=3Chttps...) it is no link to them, and they offer no one-click unsubscribe."""
    with SmtpServer(wire) as server:
        destination(server.port).send(delivery())
    [raw] = wire.raw
    fields = raw_header_fields(raw)
    link = r"<https://hub\.example\.com/v1/unsubscribe\?token=[A-Za-z0-9_.=%-]+>"
    assert re.fullmatch(link, fields["list-unsubscribe"]), fields["list-unsubscribe"]
    assert fields["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize("target", [
    "ana@example.com, eve@evil.example",
    "Ana <ana@example.com>",
    "ana@example.com\nbcc: eve@evil.example",
    "ana@example.com\r\n",
])
def test_a_target_that_is_not_exactly_one_address_fails_permanently_and_mails_no_one(
    plain: SmtpServer, fake: FakeSmtp, target: str
) -> None:
    """Left to smtplib, a comma sends the person's email (and their unsubscribe link) to a second mailbox, and a
    line break was an `unexpected.ValueError`, retried as a connector bug though no retry can send it."""
    error = send_expecting(destination(plain.port), PermanentDeliveryError, to(target))
    assert error.failure.error_class == "smtp.bad_address"
    assert fake.received == []


def test_an_email_trait_naming_two_mailboxes_reaches_neither(running_hub: RunningHub) -> None:
    """The email identifier is refused at ingest, as an unparseable phone is: the person is still known (and
    texted), but no email goes to 'ana@example.com, eve@evil.example'."""
    traits = {"email": "ana@example.com, eve@evil.example", "phone": "+14155550142"}
    running_hub.send(*support_ticket("u-comma", traits, datetime.now(timezone.utc) - timedelta(minutes=5)))
    running_hub.settle()
    assert len(running_hub.sandbox.twilio.messages) == 1
    assert running_hub.sandbox.smtp.received == []
    profile = running_hub.admin("/api/profiles/lookup", type="phone", value="+14155550142")
    assert "email" not in profile["identifiers"]


def test_a_subject_with_a_line_break_from_a_trait_goes_out_on_one_line(plain: SmtpServer, fake: FakeSmtp) -> None:
    """A form can leave 'Jane\\r\\n' in a trait; a header cannot hold it, and the message was never sent, each attempt
    retried as `unexpected.ValueError` until it went dead."""
    assert destination(plain.port).deliver(to(RECIPIENT, subject="Jane\r\n, your order\u2028is late")).status == "sent"
    [received] = fake.received
    assert received.message["Subject"] == "Jane , your order is late"


def test_a_from_display_name_with_a_comma_is_one_mailbox(wire: WireSmtp) -> None:
    """Unquoted, 'Acme, Inc. <news@acme.example>' is two mailboxes to a header parser: MAIL FROM:<Acme> (bounces
    lost, SPF/DMARC alignment broken), a From naming two mailboxes (DMARC rejects it), Message-ID '<id@Acme>'."""
    with SmtpServer(wire) as server:
        destination(server.port, from_address="Acme, Inc. <news@acme.example>").send(delivery())
    [received] = wire.received
    assert received.mail_from == "news@acme.example"
    assert raw_header_fields(wire.raw[0])["from"] == '"Acme, Inc." <news@acme.example>'
    [sender] = received.message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Acme, Inc.", "news@acme.example")
    assert received.message["Message-ID"].endswith("@acme.example>")


@pytest.mark.parametrize(
    "from_address", ["news@acme.example, eve@evil.example", "Acme <news@acme.example>\r\nBcc: eve@evil.example", "Acme"]
)
def test_a_from_setting_that_is_not_one_mailbox_stops_the_hub_at_start_up(from_address: str) -> None:
    with pytest.raises(ConfigError, match="from_address"):
        destination(25, from_address=from_address)


def test_an_internationalised_domain_goes_as_its_a_label_to_a_relay_without_smtputf8(
    ascii_relay: SmtpServer, wire: WireSmtp
) -> None:
    """Only a non-ASCII local part needs SMTPUTF8. smtplib asked for it for 'jane@bücher.example' too, the relay
    lacked it, and SMTPNotSupportedError was judged an auth error: dead-lettered as if the relay setup were wrong."""
    assert destination(ascii_relay.port).deliver(to("jane@bücher.example")).status == "sent"
    [received] = wire.received
    assert received.rcpt_tos == ["jane@xn--bcher-kva.example"]
    assert raw_header_fields(wire.raw[0])["to"] == "jane@xn--bcher-kva.example"


def test_a_non_ascii_local_part_fails_permanently_only_where_the_relay_lacks_smtputf8(
    ascii_relay: SmtpServer, wire: WireSmtp, plain: SmtpServer, fake: FakeSmtp
) -> None:
    """That recipient cannot be reached through this relay, but every other one can: a permanent failure of the
    delivery, not an auth error that parks it as the destination's setup."""
    error = send_expecting(destination(ascii_relay.port), PermanentDeliveryError, to("jäne@bücher.example"))
    assert error.failure.error_class == "smtp.smtputf8_unsupported"
    assert wire.received == []
    assert destination(plain.port).deliver(to("jäne@bücher.example")).status == "sent"  # the sandbox offers SMTPUTF8
    assert fake.received[0].rcpt_tos == ["jäne@xn--bcher-kva.example"]


def test_a_message_the_relay_accepted_is_sent_whatever_quit_is_answered() -> None:
    """After 250 to DATA the relay owns the message (RFC 5321 4.1.1.4); smtplib's context manager raised on a QUIT
    not answered 221, and the accepted message was retried into a duplicate (4xx) or failed (5xx)."""
    wire = WireSmtp(quit_reply="421 4.4.2 closing connection")
    with SmtpServer(wire) as server:
        assert destination(server.port).deliver(delivery()).status == "sent"
    assert len(wire.received) == 1


def test_a_refusal_is_judged_by_its_own_reply_not_by_the_answer_to_quit() -> None:
    """The QUIT after a failure must not replace the error that says what went wrong."""
    odd = WireSmtp(quit_reply="421 4.4.2 closing connection")
    odd.fail_next("550 5.1.1 user unknown", stage="rcpt")
    with SmtpServer(odd) as server:
        assert send_expecting(destination(server.port), PermanentDeliveryError).failure.error_class == "smtp.550"


def test_a_connection_dropped_during_the_tls_handshake_is_retried() -> None:
    """ssl.SSLEOFError is an ssl.SSLError, all of which were judged auth errors: a relay restarting mid-handshake
    dead-lettered the delivery without one retry. Only certificate and protocol mismatches are our setup."""
    with bind_socket() as listener:
        listener.listen(1)

        def drop_during_handshake() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)  # the ClientHello, read so the close is a clean FIN, not a reset

        dropper = threading.Thread(target=drop_during_handshake, daemon=True)
        dropper.start()
        implicit_tls = destination(listener.getsockname()[1], tls="tls", timeout_seconds=2)
        error = send_expecting(implicit_tls, RetryableDeliveryError)
        dropper.join(2)
    assert error.failure.error_class == "tls.SSLEOFError"


def test_implicit_tls_to_a_plain_relay_is_a_setup_error(plain: SmtpServer) -> None:
    """A protocol mismatch (tls=tls against a plain port) stays an auth error: no retry fixes the setting."""
    error = send_expecting(destination(plain.port, tls="tls"), AuthDeliveryError)
    assert error.failure.error_class == "tls.SSLError"
