"""Email over SMTP with the standard library's `smtplib`: text + HTML parts, one-click unsubscribe.

SMTP: RFC 5321 (reply codes: 4xx transient, 5xx permanent); AUTH: RFC 4954;
one-click unsubscribe: RFC 8058 (``List-Unsubscribe`` + ``List-Unsubscribe-Post``),
which Gmail and Yahoo require of bulk senders.

A connection per send keeps the adapter simple and thread-safe; the delivery
engine's thread pool bounds how many are open at once.
"""

from __future__ import annotations

import smtplib
import ssl
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from html import escape
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.base import Destination
from hub.clock import utcnow
from hub.errors import (
    AuthDeliveryError,
    DeliveryError,
    DeliveryFailure,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from hub.model import Delivery, SendResult
from hub.pii import mask_email, mask_text
from hub.unsubscribe import make_token

# Reply codes that mean our credentials or TLS setup are wrong, not the message.
AUTH_CODES = frozenset({530, 534, 535, 538})


class EmailSmtpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str
    port: int = Field(ge=1, le=65535)
    tls: Literal["none", "starttls", "tls"] = Field(
        "starttls", description="none (plain, local relays only), starttls (usually port 587) or tls (implicit, port 465)."
    )
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = Field(None, description="PEM bundle to verify the server with, instead of the system's.")
    from_address: str = Field(pattern=r"@", description="Sender, e.g. 'Shop <news@shop.example>'.")
    unsubscribe_url: str = Field(description="The hub's public /v1/unsubscribe URL.")
    unsubscribe_secret: SecretStr
    unsubscribe_link_days: int = Field(90, ge=1)
    timeout_seconds: float = Field(10.0, gt=0)


class EmailSmtpDestination(Destination):
    slug = "email_smtp"
    title = "Email (SMTP)"
    docs_url = "https://datatracker.ietf.org/doc/html/rfc5321"
    channel = "email"
    Config = EmailSmtpConfig

    def __init__(self, destination_id: str, config: BaseModel) -> None:
        super().__init__(destination_id, config)
        assert isinstance(config, EmailSmtpConfig)
        self.settings = config
        self._tls = ssl.create_default_context(cafile=config.ca_file)

    def request_summary(self, delivery: Delivery) -> dict[str, Any]:
        return {
            "to": mask_email(delivery.target),
            "subject": mask_text(delivery.content.get("subject", "")),
            "parts": ["text", "html"] if delivery.content.get("html") else ["text"],
        }

    def unsubscribe_link(self, delivery: Delivery) -> str:
        expires = utcnow() + timedelta(days=self.settings.unsubscribe_link_days)
        secret = self.settings.unsubscribe_secret.get_secret_value()
        token = make_token(secret, delivery.profile_id, self.channel, delivery.delivery_id, expires)
        return f"{self.settings.unsubscribe_url}?{urlencode({'token': token})}"

    def build_message(self, delivery: Delivery) -> EmailMessage:
        content, link = delivery.content, self.unsubscribe_link(delivery)
        message = EmailMessage()
        message["From"] = self.settings.from_address
        message["To"] = delivery.target
        message["Subject"] = content.get("subject") or content.get("rule_id", "")
        message["Date"] = formatdate(usegmt=True)
        # The same Message-ID on every retry lets receiving systems drop a duplicate.
        domain = parseaddr(self.settings.from_address)[1].rpartition("@")[2]
        message["Message-ID"] = f"<{delivery.delivery_id}@{domain}>"
        message["List-Unsubscribe"] = f"<{link}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(f"{content.get('text') or content['body']}\n\nUnsubscribe: {link}\n")
        if content.get("html"):
            message.add_alternative(_with_footer(content["html"], link), subtype="html")
        return message

    def send(self, delivery: Delivery) -> SendResult:
        message = self.build_message(delivery)
        with self._connect() as smtp:
            if self.settings.username:
                password = self.settings.password.get_secret_value() if self.settings.password else ""
                smtp.login(self.settings.username, password)
            smtp.send_message(message)  # one recipient: a refusal raises, never returns
        return SendResult(status="sent", provider_message_id=message["Message-ID"], response_summary={"accepted": True})

    def classify(self, error: Exception) -> DeliveryError:
        if isinstance(error, smtplib.SMTPException):
            return _as_delivery_error(error)
        if isinstance(error, ssl.SSLError):  # before OSError, its base: a TLS mismatch is our setup, not an outage
            return AuthDeliveryError(DeliveryFailure(f"tls.{type(error).__name__}", f"TLS with the SMTP server failed: {error}"))
        return super().classify(error)

    def _connect(self) -> smtplib.SMTP:
        settings = self.settings
        if settings.tls == "tls":
            return smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout_seconds, context=self._tls)
        smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_seconds)
        if settings.tls == "starttls":
            try:
                smtp.starttls(context=self._tls)
            except BaseException:
                smtp.close()
                raise
        return smtp


def _with_footer(html: str, link: str) -> str:
    footer = f'<p style="font-size:12px;color:#666"><a href="{escape(link)}">Unsubscribe</a></p>'
    closing = html.lower().rfind("</body>")
    return html[:closing] + footer + html[closing:] if closing >= 0 else html + footer


def _as_delivery_error(exc: smtplib.SMTPException) -> DeliveryError:
    """SMTP's reply code decides: auth codes park the delivery, 4xx retries, 5xx is final."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
    elif isinstance(exc, smtplib.SMTPResponseException):
        code, text = exc.smtp_code, exc.smtp_error
    else:  # disconnected mid-conversation, or the server lacks what we asked for (AUTH, STARTTLS)
        outcome = AuthDeliveryError if isinstance(exc, smtplib.SMTPNotSupportedError) else RetryableDeliveryError
        return outcome(DeliveryFailure(f"smtp.{type(exc).__name__}", f"SMTP: {exc}"))
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    if code in AUTH_CODES or isinstance(exc, smtplib.SMTPAuthenticationError):
        outcome = AuthDeliveryError
    elif 400 <= code < 500:
        outcome = RetryableDeliveryError
    else:
        outcome = PermanentDeliveryError
    return outcome(
        DeliveryFailure(
            error_class=f"smtp.{code}",
            message=mask_text(f"SMTP {code}: {reply}"),
            provider_code=str(code),
            response_summary={"code": code},
        )
    )
