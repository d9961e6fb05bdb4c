"""Email over SMTP with the standard library's `smtplib`: text + HTML parts, one-click unsubscribe.

SMTP: RFC 5321 (reply codes: 4xx transient, 5xx permanent); AUTH: RFC 4954;
one-click unsubscribe: RFC 8058 (``List-Unsubscribe`` + ``List-Unsubscribe-Post``),
which Gmail and Yahoo require of bulk senders; internationalised addresses:
RFC 5891 (IDNA A-labels) and RFC 6531 (SMTPUTF8).

A connection per send keeps the adapter simple and thread-safe; the delivery
engine's thread pool bounds how many are open at once. What a relay's
refusal means (retry, final, park) is `smtp_errors`.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from datetime import timedelta
from email import policy
from email.header import Header
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import formatdate
from html import escape
from typing import Any, Literal
from urllib.parse import urlencode

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from connectors.base import Destination
from connectors.destinations import smtp_errors
from connectors.destinations.email_addresses import one_address, sender_address
from connectors.destinations.html_text import html_as_text
from connectors.destinations.smtp_session import (
    DATA_REPLY_SECONDS, PatientSmtp, PatientSmtpSsl, is_local_host, quit_politely, start_tls, tls_context,
)
from hub.clock import utcnow
from hub.errors import (
    AuthDeliveryError,
    DeliveryError,
    DeliveryFailure,
    PermanentDeliveryError,
)
from hub.model import Delivery, SendResult
from hub.pii import mask_email, mask_text
from hub.unsubscribe import SHORTEST_LINK_DAYS, make_token

log = structlog.get_logger(__name__)

# The C0 and C1 control characters but the tab, which is a blank; `_one_line` takes line breaks out before.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# The last `</body>` of an HTML part, found in the part as it is (`_with_footer`).
_LAST_BODY_END = re.compile(r".*(</body\s*>)", re.IGNORECASE | re.DOTALL)
# The AUTH mechanisms smtplib's `login` speaks, spelt as it matches them in the relay's EHLO reply (RFC 4954).
SMTPLIB_AUTH_MECHANISMS = frozenset({"CRAM-MD5", "PLAIN", "LOGIN"})
# RFC 5322 2.1.1: no line over 998 characters. The link adds its token (~200) and the field name to this.
MAX_UNSUBSCRIBE_URL = 600


class _VerbatimHeader(UnstructuredHeader):
    """A header written exactly as set, never folded or RFC 2047 encoded.

    For ``List-Unsubscribe``: the URL has no whitespace to fold at, so at 78 columns the email library
    turns the whole field into encoded-words (``=?utf-8?q?=3Chttps...?=``), and mailbox providers, which
    read the raw field for ``<https://...>`` (RFC 2369, RFC 8058), then find no link and show no one-click
    unsubscribe. The config guarantees an ASCII URL short enough for SMTP's 998-character line.
    """

    def fold(self, *, policy: Any) -> str:
        return f"{self.name}: {self}{policy.linesep}"


class _TextHeader(UnstructuredHeader):
    """A header holding text to show as it is (the subject, made of traits): never decoded, encoded as it is written.

    The email library reads ``=?utf-8?q?...?=`` in a value it is given as an RFC 2047 encoded-word and decodes
    it, and Python before 3.11.10 writes the decoded text out as it is: a first name sent as
    ``=?utf-8?q?Ann=0D=0AReply-To:_attacker@evil.example?=`` became a line break and a header of the sender's
    choosing. Taken as literal text, the value holds no line break the library's own check of what is set has
    not refused; text that is not ASCII, or that would read as an encoded-word, is written as encoded-words, so
    the reader sees exactly the text that was set.
    """

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        kwds["decoded"] = value
        kwds["parse_tree"] = None  # read only by `BaseHeader.fold`, which `fold` replaces

    def fold(self, *, policy: Any) -> str:
        text = str(self)
        charset = "us-ascii" if text.isascii() and "=?" not in text else "utf-8"
        value = Header(text, charset, policy.max_line_length, header_name=self.name).encode(linesep=policy.linesep)
        return f"{self.name}: {value}{policy.linesep}"


def _message_policy() -> policy.EmailPolicy:
    headers = HeaderRegistry()  # our own: mapping a type on the shared default registry would change every message
    headers.map_to_type("list-unsubscribe", _VerbatimHeader)
    headers.map_to_type("subject", _TextHeader)
    return policy.default.clone(header_factory=headers)


MESSAGE_POLICY = _message_policy()


class EmailSmtpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str
    port: int = Field(ge=1, le=65535)
    tls: Literal["none", "starttls", "tls"] = Field(
        "starttls", description="none (plain: credentials only to a relay on this machine), starttls (usually port 587) "
        "or tls (implicit, port 465)."
    )
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = Field(None, description="PEM bundle to verify the server with, instead of the system's.")
    from_address: str = Field(description="Sender, e.g. 'Shop <news@shop.example>' or 'news@shop.example'.")
    unsubscribe_url: str = Field(description="The hub's public /v1/unsubscribe URL.")
    unsubscribe_secret: SecretStr
    unsubscribe_link_days: int = Field(90, ge=SHORTEST_LINK_DAYS)
    timeout_seconds: float = Field(
        10.0, gt=0, description="Seconds the reply to each command is waited for; the reply to the end of the message "
        f"is waited for {DATA_REPLY_SECONDS:.0f} s (RFC 5321 4.5.3.2.6).",
    )

    @field_validator("username")
    @classmethod
    def _not_in_clear(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked at start: with `tls: none`, AUTH sends the username and password (often a provider API key)
        over plain TCP, which only a relay on this machine may see."""
        host, tls = info.data.get("host"), info.data.get("tls")
        if value and tls == "none" and host is not None and not is_local_host(host):
            raise ValueError(
                f"would be sent in clear to {host}, which is not this machine (tls is none): set tls to starttls "
                "(usually port 587) or tls (port 465), i.e. HUB_SMTP_TLS=starttls or HUB_SMTP_TLS=tls"
            )
        return value

    @field_validator("ca_file")
    @classmethod
    def _loads_as_pem(cls, value: str | None) -> str | None:
        """Loaded here, not first in the destination's constructor, so a bad file is a config problem at start."""
        if value is not None:
            tls_context(value)
        return value

    @field_validator("from_address")
    @classmethod
    def _one_sender(cls, value: str) -> str:
        """Kept as the header will show it (a display name with a comma quoted), so it parses as one mailbox."""
        return str(sender_address(value))

    @field_validator("unsubscribe_url")
    @classmethod
    def _header_safe_url(cls, value: str) -> str:
        """It goes into ``List-Unsubscribe`` verbatim: ASCII (an internationalised host as its xn-- A-label),
        no whitespace or angle brackets, and short enough for one header line."""
        if not (value.isascii() and value.isprintable()) or any(ch in value for ch in " <>"):
            raise ValueError("must be ASCII, without spaces or angle brackets (an internationalised host as xn--...)")
        if len(value) > MAX_UNSUBSCRIBE_URL:
            raise ValueError(f"must be at most {MAX_UNSUBSCRIBE_URL} characters, to fit one header line with its token")
        return value


class EmailSmtpDestination(Destination):
    slug = "email_smtp"
    title = "Email (SMTP)"
    docs_url = "https://datatracker.ietf.org/doc/html/rfc5321"
    channel = "email"
    # Something to read besides the subject: without it the subject went out again as the whole message. `body` is
    # the text of a template without blocks (skipped all the same, for its missing subject, saying so); one with
    # an `html` block and no `text` has its text derived.
    message_parts = ("text", "html", "body")
    required_parts = ("subject",)  # without one it went out under the internal rule id, which the customer read
    Config = EmailSmtpConfig

    def __init__(self, destination_id: str, config: BaseModel) -> None:
        super().__init__(destination_id, config)
        assert isinstance(config, EmailSmtpConfig)
        self.settings = config
        self.sender = sender_address(config.from_address)
        self._tls = tls_context(config.ca_file)

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

    def recipient(self, delivery: Delivery) -> Address:
        """The delivery's one recipient, its domain as an A-label.

        Email identifiers are checked when they are normalized; this checks again (identifiers stored before
        that check, a target from elsewhere), because smtplib would send to every address a header parser
        finds in the target, and a line break in it is unsendable: neither is worth a retry.

        Raises:
            PermanentDeliveryError: `smtp.bad_address`, the target is not exactly one address.
        """
        try:
            return one_address(delivery.target)
        except ValueError as exc:
            raise PermanentDeliveryError(DeliveryFailure("smtp.bad_address", f"the target {exc}")) from None

    def build_message(self, delivery: Delivery, recipient: Address) -> EmailMessage:
        content, link = delivery.content, self.unsubscribe_link(delivery)
        message = EmailMessage(policy=MESSAGE_POLICY)
        message["From"] = self.sender
        message["To"] = recipient
        message["Subject"] = _one_line(content.get("subject") or content.get("rule_id", ""))  # as text: `_TextHeader`
        message["Date"] = formatdate(usegmt=True)
        # The same Message-ID on every retry lets receiving systems drop a duplicate.
        message["Message-ID"] = f"<{delivery.delivery_id}@{self.sender.domain}>"
        message["List-Unsubscribe"] = f"<{link}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(f"{_plain_text(content)}\n\nUnsubscribe: {link}\n")
        if content.get("html"):
            message.add_alternative(_with_footer(content["html"], link), subtype="html")
        return message

    def send(self, delivery: Delivery) -> SendResult:
        recipient = self.recipient(delivery)
        message = self.build_message(delivery, recipient)
        smtp = self._connect()
        try:
            if self.settings.username:
                self._log_in(smtp, self.settings.username)
            self._check_smtputf8(smtp, recipient)
            # The envelope named explicitly: one recipient, never what a header parser makes of `To`.
            # With one recipient a refusal raises, never returns.
            smtp.send_message(message, from_addr=self.sender.addr_spec, to_addrs=[recipient.addr_spec])
        finally:
            quit_politely(smtp)
        return SendResult(status="sent", provider_message_id=message["Message-ID"], response_summary={"accepted": True})

    def classify(self, error: Exception) -> DeliveryError:
        if isinstance(error, smtplib.SMTPException):
            return smtp_errors.as_delivery_error(error, self.sender.addr_spec)
        if isinstance(error, ssl.SSLError):  # before OSError, its base
            return smtp_errors.as_tls_error(error)
        return super().classify(error)

    def _check_smtputf8(self, smtp: smtplib.SMTP, recipient: Address) -> None:
        """Refuse, before MAIL FROM, an address only SMTPUTF8 can carry when the relay does not offer it.

        Only a non-ASCII local part needs SMTPUTF8 (domains go as A-labels). smtplib would raise
        `SMTPNotSupportedError`, which also means a relay without AUTH or STARTTLS, a setup error; so the
        verdict is made here, where it is known whose address it is. The recipient's is a permanent failure
        of this delivery: `AuthDeliveryError` would dead-letter it as if the relay setup were wrong, to be
        replayed once "fixed", though no fix to the setup can ever send it, and say the destination is broken
        when every other recipient is fine. Our own From address is the setup, and parks like one.
        """
        smtp.ehlo_or_helo_if_needed()
        if smtp.has_extn("smtputf8"):
            return
        unsupported = "has a non-ASCII local part, and the relay does not offer SMTPUTF8"
        if not self.sender.username.isascii():
            raise AuthDeliveryError(DeliveryFailure("smtp.smtputf8_unsupported", f"the From address {unsupported}"))
        if not recipient.username.isascii():
            raise PermanentDeliveryError(DeliveryFailure("smtp.smtputf8_unsupported", f"the recipient {unsupported}"))

    def _log_in(self, smtp: smtplib.SMTP, username: str) -> None:
        """AUTH as `username`. smtplib speaks CRAM-MD5, PLAIN and LOGIN only; to a relay offering none of them
        (NTLM or GSSAPI on Exchange, XOAUTH2 once basic auth is off) it raises a bare SMTPException, which would read
        as a dropped connection and be retried, though no retry ever logs in: so it is decided before logging in,
        and parked as the setup, naming what the relay offers. What `login` raises is `classify`'s.

        Raises:
            AuthDeliveryError: `smtp.auth_mechanism`, no mechanism both ends speak.
        """
        smtp.ehlo_or_helo_if_needed()
        offered = smtp.esmtp_features.get("auth")  # None when the relay offers no AUTH: `login` says so
        if offered is not None and SMTPLIB_AUTH_MECHANISMS.isdisjoint(offered.split()):
            raise AuthDeliveryError(DeliveryFailure("smtp.auth_mechanism", (
                f"SMTP AUTH: no mechanism in common. The relay offers {offered.strip() or 'nothing'}; the hub logs in "
                "with CRAM-MD5, PLAIN or LOGIN: enable one of them for the username (HUB_SMTP_USERNAME) on the relay, "
                "or send through a relay that has one"
            )))
        smtp.login(username, self.settings.password.get_secret_value() if self.settings.password else "")

    def _connect(self) -> smtplib.SMTP:
        settings = self.settings
        if settings.tls == "tls":
            return PatientSmtpSsl(settings.host, settings.port, timeout=settings.timeout_seconds, context=self._tls)
        smtp = PatientSmtp(settings.host, settings.port, timeout=settings.timeout_seconds)
        if settings.tls == "starttls":
            try:
                start_tls(smtp, self._tls)
            except BaseException:
                smtp.close()
                raise
        return smtp


def _one_line(text: str) -> str:
    """`text` with its line breaks (and the blanks around them) as single spaces, and no other control character.

    A header value cannot hold a line break, and a subject rendered from a trait may ("Jane\\r\\n" from a
    form): the email library refuses it, and the message could never be sent, whereas the same words on one
    line are the subject that was meant. `splitlines` knows every break the library refuses (\\u2028 too).
    Other control characters (an ESC, a DEL) are nothing a reader can see, but a terminal or a log may act on them.
    """
    return " ".join(stripped for line in text.splitlines() if (stripped := _CONTROL.sub("", line).strip()))


def _plain_text(content: dict[str, Any]) -> str:
    """The text/plain part: the `text` block, else text derived from the `html` block (see `html_text`).

    Never the whole template: in a template with blocks that was the subject line followed by the HTML source,
    and clients that show the plain part (and spam filters comparing the two) saw markup. Only a delivery planned
    before routing asked for a text or html part may hold nothing else: its `body` goes as it was planned.
    """
    if content.get("text"):
        return str(content["text"])
    if content.get("html"):
        return html_as_text(content["html"])
    return str(content.get("body", ""))


def _with_footer(html: str, link: str) -> str:
    """`html` with the unsubscribe link before its last `</body>`, or after it all when it has none.

    Found in `html` itself: an index into `html.lower()` is off by one for each "İ" before it (lower-cased, it is
    two characters), which cut the message in the wrong place and broke its `</body>`.
    """
    footer = f'<p style="font-size:12px;color:#666"><a href="{escape(link)}">Unsubscribe</a></p>'
    closing = _LAST_BODY_END.match(html)
    if closing is None:
        return html + footer
    return html[:closing.start(1)] + footer + html[closing.start(1):]
