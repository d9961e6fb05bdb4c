"""One SMTP session as the email destination holds it: verified TLS, a patient wait for the end of DATA, a
polite QUIT. Apart from `email_smtp`, which builds the message and judges the relay's answers, as this is about
the connection alone (and the start-up check that a relay is on this machine, which `hub.runtime` asks too).
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from typing import Any

import structlog

from connectors.destinations import smtp_errors
from hub.pii import mask_text

log = structlog.get_logger(__name__)

# RFC 5321 4.5.3.2.6: the reply to the end of DATA is waited for 10 minutes, while the relay filters the
# message; a client giving up sooner has it sent again on retry, a copy each time if the relay queued it.
DATA_REPLY_SECONDS = 600.0
# Relays on this machine, the only ones `tls: none` may send credentials to.
LOCAL_HOST_NAMES = frozenset({"localhost", "localhost."})


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The context the relay's certificate is verified with: the system's CAs, or only those in `ca_file`.

    Raises:
        ValueError: `ca_file` cannot be read or holds no PEM certificate, said so that ops can fix it.
    """
    try:
        return ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:  # before OSError, its base: the file was read but is not what it should be
        raise ValueError(f"{ca_file!r} holds no PEM certificate ({exc.reason}); point it at a PEM bundle of the "
                         "CA certificates that signed the relay's certificate (-----BEGIN CERTIFICATE----- blocks)") from None
    except OSError as exc:
        raise ValueError(f"cannot read {ca_file!r} ({exc.strerror or exc}); point it at a PEM bundle of the CA "
                         "certificates that signed the relay's certificate, or leave it unset to use the system's") from None


class PatientSmtp(smtplib.SMTP):
    """`smtplib.SMTP` that waits `DATA_REPLY_SECONDS` (or the command timeout, if longer) from DATA on, for the
    reply to the end of the message, and the command timeout for every other reply.

    The socket's timeout is raised at DATA because smtplib sends the message and reads that reply in one call.
    """

    def data(self, msg: Any) -> tuple[int, bytes]:
        assert self.sock is not None, "DATA is only sent on a connection"
        self.sock.settimeout(max(self.timeout, DATA_REPLY_SECONDS))
        return super().data(msg)


class PatientSmtpSsl(PatientSmtp, smtplib.SMTP_SSL):
    """`PatientSmtp` over implicit TLS."""


def start_tls(smtp: smtplib.SMTP, context: ssl.SSLContext) -> None:
    """STARTTLS, a refusal of it raised as `smtp_errors.StartTlsRefused`: smtplib raises a bare SMTPResponseException,
    and a 5xx to STARTTLS refuses the hub's connection, not a message (`smtp_errors.REFUSES_THE_HUB`)."""
    smtp.ehlo_or_helo_if_needed()  # outside: EHLO's refusal is its own (SMTPHeloError)
    try:
        smtp.starttls(context=context)
    except smtplib.SMTPResponseException as exc:
        raise smtp_errors.StartTlsRefused(exc.smtp_code, exc.smtp_error) from exc


def is_local_host(host: str) -> bool:
    """Whether `host` is this machine: localhost, or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() in LOCAL_HOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def quit_politely(smtp: smtplib.SMTP) -> None:
    """Say QUIT and close, whatever the answer.

    Once DATA is answered 250 the relay owns the message (RFC 5321 4.1.1.4): an odd reply to QUIT, or none,
    must not make an accepted message a failure, retried into a duplicate. After a failure it must not
    replace the error that says what went wrong. smtplib's context manager raises on a QUIT not answered
    221, so the connection is not used as one.
    """
    try:
        code, reply = smtp.quit()
    except (smtplib.SMTPException, OSError) as exc:
        smtp.close()
        log.debug("SMTP QUIT failed; the connection is closed anyway", error=f"{type(exc).__name__}: {exc}")
        return
    if code != 221:
        answer = mask_text(reply.decode("utf-8", "replace"))
        log.debug("SMTP QUIT answered oddly; the connection is closed anyway", code=code, reply=answer)
