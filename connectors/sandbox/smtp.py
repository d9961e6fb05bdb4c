"""A real SMTP server (aiosmtpd) on loopback that keeps what it receives and fails on demand.

It speaks genuine SMTP, so `smtplib` in the email destination runs exactly as
against a production relay: EHLO, optional STARTTLS or implicit TLS, AUTH
LOGIN/PLAIN, MAIL/RCPT/DATA. Received messages are kept parsed
(`email.message.EmailMessage`) beside their envelope. `fail_next` answers
the next MAIL, RCPT or DATA with a chosen reply, such as ``451 4.3.0``,
``550 5.1.1`` or (MAIL FROM) ``553 5.7.1 Sender address rejected``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import deque
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from hub.serving import bind_socket


@dataclass(frozen=True)
class ReceivedEmail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    authenticated_as: str | None


class FakeSmtp:
    """Thread-safe state of the fake relay; `credentials` (user, password) makes AUTH mandatory."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self._lock = threading.Lock()
        self._received: list[ReceivedEmail] = []
        self._faults: deque[tuple[Literal["mail", "rcpt", "data"], str]] = deque()

    @property
    def received(self) -> list[ReceivedEmail]:
        with self._lock:
            return list(self._received)

    def fail_next(self, reply: str, *, stage: Literal["mail", "rcpt", "data"] = "data", times: int = 1) -> None:
        """Answer the next `times` MAIL, RCPT or DATA commands with `reply`, e.g. '451 4.3.0 Try again later'."""
        with self._lock:
            self._faults.extend([(stage, reply)] * times)

    def reset(self) -> None:
        with self._lock:
            self._received.clear()
            self._faults.clear()

    def _fault(self, stage: str) -> str | None:
        with self._lock:
            if self._faults and self._faults[0][0] == stage:
                return self._faults.popleft()[1]
            return None

    # aiosmtpd handler hooks
    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if fault := self._fault("mail"):
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        # Enforced here rather than with aiosmtpd's auth_required, which over a
        # plain connection warns on every start; the client sees the same 530.
        if self.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if fault := self._fault("rcpt"):
            return fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if fault := self._fault("data"):
            return fault
        content = envelope.original_content or b""
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self._lock:
            self._received.append(ReceivedEmail(str(envelope.mail_from), list(envelope.rcpt_tos), parsed, login))
        return "250 2.0.0 Message accepted for delivery"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        given = (auth_data.login.decode(), auth_data.password.decode()) if isinstance(auth_data, LoginPassword) else None
        # handled=False: aiosmtpd itself answers a refusal with 535 (it defaults to True, "already answered").
        return AuthResult(success=given == self.credentials, handled=False, auth_data=auth_data)


class _BoundController(Controller):
    """aiosmtpd's Controller on a socket bound up front, so port 0 (any free port) works."""

    def __init__(self, handler: FakeSmtp, sock: Any, **kwargs: Any) -> None:
        self._sock = sock
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1], **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


class SmtpServer:
    """Runs a `FakeSmtp`; `tls` is 'none', 'starttls' (offered, then required) or 'tls' (implicit)."""

    def __init__(
        self, fake: FakeSmtp, *, tls: Literal["none", "starttls", "tls"] = "none", tls_context: ssl.SSLContext | None = None
    ) -> None:
        self.fake = fake
        self.tls = tls
        sock = bind_socket()
        self.host, self.port = sock.getsockname()[:2]
        options: dict[str, Any] = {"authenticator": fake.authenticate}
        if tls == "starttls":
            options.update(tls_context=tls_context, require_starttls=True)
        else:
            options["auth_require_tls"] = False  # plain relays and implicit TLS: AUTH without STARTTLS
        if tls == "tls":
            options["ssl_context"] = tls_context
        self._controller = _BoundController(fake, sock, **options)

    def __enter__(self) -> "SmtpServer":
        # aiosmtpd logs every envelope (addresses included) and, on each successful
        # AUTH, a deprecation warning it raises against its own code: neither is ours to act on.
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        self._controller.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._controller.stop()
