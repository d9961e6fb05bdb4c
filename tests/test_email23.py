"""Email (SMTP) as RFC 5321 and RFC 4954 ask: a relay's passing trouble retried, its slow end of DATA waited for,
a refusal of the hub's own setup parked, and credentials never sent in clear to a relay on another machine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult

from connectors.base import load_registry
from connectors.sandbox.smtp import FakeSmtp, SmtpServer
from hub.destination_settings import email_destination
from hub.errors import AuthDeliveryError, ConfigError, DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from tests.conftest import make_settings
from tests.test_email_destination import CREDENTIALS, RECIPIENT, delivery, destination, send_expecting


class AuthFaultSmtp(FakeSmtp):
    """The sandbox relay, answering AUTH with a chosen reply instead of judging the credentials."""

    def __init__(self, auth_reply: str) -> None:
        super().__init__(credentials=CREDENTIALS)
        self.auth_reply = auth_reply

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, message=self.auth_reply)


class SlowSmtp(FakeSmtp):
    """The sandbox relay, taking `seconds` to answer RCPT or the end of DATA (a relay scanning content)."""

    def __init__(self, stage: str, seconds: float) -> None:
        super().__init__(credentials=CREDENTIALS)
        self.stage, self.seconds = stage, seconds

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        await self._linger("rcpt")
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await self._linger("data")
        return await super().handle_DATA(server, session, envelope)

    async def _linger(self, stage: str) -> None:
        if stage == self.stage:
            await asyncio.sleep(self.seconds)


@pytest.mark.parametrize("reply", [
    "454 4.7.0 Temporary authentication failure",
    "421 4.3.2 Service not available, closing transmission channel",
])
def test_a_transient_4xx_answer_to_auth_is_retried_not_parked_as_bad_credentials(reply: str) -> None:
    """RFC 4954 6: a 454 to AUTH is the relay's auth back end failing for now, a 421 the relay closing for now.
    smtplib raises both as SMTPAuthenticationError, and they were parked as wrong credentials, never retried."""
    fake = AuthFaultSmtp(reply)
    with SmtpServer(fake) as server:
        error = send_expecting(destination(server.port), RetryableDeliveryError)
    assert error.failure.error_class == f"smtp.{reply[:3]}"
    assert fake.received == []


def test_a_relay_slow_to_answer_the_end_of_data_is_waited_for_as_rfc_5321_asks() -> None:
    """RFC 5321 4.5.3.2.6: the client waits 10 minutes for the reply to the final ".", as the relay filters the
    message then. The 10 s command timeout applied there: a relay slower than that was hung up on at every
    retry (or, queueing before it filtered, delivered a copy each time). Here 0.3 s and a relay taking 1 s."""
    fake = SlowSmtp("data", 1.0)
    with SmtpServer(fake) as server:
        assert destination(server.port, timeout_seconds=0.3).deliver(delivery()).status == "sent"
    assert [email.rcpt_tos for email in fake.received] == [[RECIPIENT]]


@pytest.mark.parametrize("host", ["smtp.sendgrid.net", "10.0.0.25", "2001:db8::25"])
def test_smtp_credentials_are_not_sent_in_clear_to_a_relay_that_is_not_local(tmp_path: Path, host: str) -> None:
    """`tls: none` is documented "plain, local relays only", but a username and password for a relay on another
    machine were sent over plain TCP (AUTH before STARTTLS): the relay password, often an API key, in clear."""
    settings = make_settings(tmp_path, smtp_host=host, smtp_port=587, smtp_tls="none",
                             smtp_username="apikey", smtp_password="SG.not-a-real-key")
    with pytest.raises(ConfigError, match="username") as refused:
        email_destination(load_registry(), settings)
    assert "HUB_SMTP_TLS=starttls" in str(refused.value) and host in str(refused.value)


@pytest.mark.parametrize(("host", "tls"), [
    ("127.0.0.1", "none"), ("127.0.0.2", "none"), ("::1", "none"), ("LocalHost", "none"),
    ("smtp.sendgrid.net", "starttls"), ("smtp.sendgrid.net", "tls"),
])
def test_credentials_go_to_a_local_relay_in_clear_and_to_any_relay_over_tls(host: str, tls: str) -> None:
    assert destination(587, host=host, tls=tls).settings.username == CREDENTIALS[0]


@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_a_garbled_reply_is_retried_not_a_refusal_of_the_message(stage: str) -> None:
    """A reply line without a reply code (smtplib's -1: a proxy's page, a cut connection) says nothing about the
    message; at RCPT or DATA it failed the email for good, as if the relay had refused it."""
    fake = FakeSmtp(credentials=CREDENTIALS)
    fake.fail_next("OK then", stage=stage)  # type: ignore[arg-type]
    with SmtpServer(fake) as server:
        send_expecting(destination(server.port), RetryableDeliveryError)
    assert fake.received == []


@pytest.mark.parametrize(("reply", "error"), [
    ("554 5.7.1 <jane.doe@example.com>: Relay access denied", AuthDeliveryError),  # Postfix
    ("550 5.7.1 <jane.doe@example.com>... Relaying denied", AuthDeliveryError),  # Sendmail
    ("550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain", AuthDeliveryError),  # Exchange
    ("550 5.7.1 Recipient address rejected: Access denied", PermanentDeliveryError),  # this recipient's policy
    ("550 5.1.1 <jane.doe@example.com>: User unknown in relay recipient table", PermanentDeliveryError),
])
def test_a_relay_refusing_to_relay_parks_the_email_as_a_setup_error(reply: str, error: type[DeliveryError]) -> None:
    """A relay that will not relay for the hub refuses every recipient alike: the hub is not authenticated or
    not allowed, which no retry and no other address fixes. Each email failed for good, none left to replay
    once the relay was set up."""
    fake = FakeSmtp(credentials=CREDENTIALS)
    fake.fail_next(reply, stage="rcpt")
    with SmtpServer(fake) as server:
        failure = send_expecting(destination(server.port), error).failure
    assert failure.error_class == f"smtp.{reply[:3]}"
    assert fake.received == []
