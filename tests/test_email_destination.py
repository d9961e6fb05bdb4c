"""Email with `smtplib` against a real local SMTP server (aiosmtpd): parts, headers, TLS modes, reply codes."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import trustme

from connectors.destinations.email_smtp import EmailSmtpDestination
from connectors.sandbox.smtp import FakeSmtp, SmtpServer
from hub.errors import AuthDeliveryError, DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery
from hub.serving import bind_socket
from hub.settings import PROJECT_MAPPINGS
from hub.templates import TemplateRenderer
from hub.unsubscribe import read_token

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


def send_expecting(target: EmailSmtpDestination, error: type[DeliveryError]) -> DeliveryError:
    with pytest.raises(error) as raised:
        target.deliver(delivery())
    return raised.value


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
    request = read_token(SECRET, link.split("token=")[1], datetime.now(timezone.utc))
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
