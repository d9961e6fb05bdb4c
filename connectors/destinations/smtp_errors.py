"""What an SMTP relay's refusal means for the delivery: retry, final, or park as a setup error; and whether the
address it refused is dead.

RFC 5321 says 4xx is transient and 5xx permanent, but a relay's answer also
says whose fault it is: a 5xx refusing the hub's credentials, the hub itself
or to relay for it is the same for every email, so it parks (dead-lettered
until the setup is fixed and the delivery replayed), where a 5xx about one
recipient fails only that email. Relays do not all refuse the hub at the same
step: a sender restriction may answer RCPT or the end of DATA, a TLS policy
STARTTLS, so the refusal is read from the reply as well as from the command.
"""

from __future__ import annotations

import re
import smtplib
import ssl

from hub.errors import (
    AuthDeliveryError,
    DeliveryError,
    DeliveryFailure,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from hub.identifiers import folded
from hub.pii import holds_values, mask_text

# Reply codes that mean our credentials or TLS setup are wrong, not the message.
AUTH_CODES = frozenset({530, 534, 535, 538})
# smtplib's code for a reply line that does not start with one (a proxy's page, a line cut short): the
# conversation broke, nothing was said about the message, so it is retried.
GARBLED = -1
# A recipient refused because the relay will not relay for the hub (Postfix "Relay access denied", Sendmail
# "Relaying denied", Exchange 5.7.54 "Unable to relay"): the hub is not authenticated or not allowed, the same
# for every recipient, so it parks like a setup error. Read from the text: 5.7.1 alone is also one recipient's
# own policy, and "relay recipient table" (Postfix) names a dead address.
RELAY_DENIED = re.compile(
    r"relay(?:ing)?\s+(?:access\s+)?(?:denied|not\s+permitted|prohibited)|unable\s+to\s+relay|(?:not|n't)\s+relay\b",
    re.IGNORECASE,
)


class StartTlsRefused(smtplib.SMTPResponseException):
    """The relay's answer to STARTTLS (RFC 3207) other than 220: smtplib raises a bare SMTPResponseException for it,
    which names no command, so the destination raises this instead."""


# Refusals of the hub itself, not of one message: a 5xx greeting (RFC 5321 3.1, "no SMTP service here": our IP
# is blocklisted), a 5xx to EHLO/HELO, a 5xx to STARTTLS ("554 5.7.3 Unable to initialize security subsystem",
# before any message is named, as a certificate that does not verify), a 5xx to MAIL FROM (our From address is
# not ours to send as). The same for every email, so they park like setup errors; except `MESSAGE_TOO_BIG`,
# MAIL FROM's answer to its SIZE.
REFUSES_THE_HUB: tuple[type[smtplib.SMTPResponseException], ...] = (
    smtplib.SMTPConnectError, smtplib.SMTPHeloError, StartTlsRefused, smtplib.SMTPSenderRefused,
)
MESSAGE_TOO_BIG = 552
# The same refusal of the From address, given after MAIL FROM was accepted: Postfix reports its sender restrictions
# at RCPT by default (smtpd_delay_reject; reject_sender_login_mismatch: "553 5.7.1 <from>: Sender address
# rejected: not owned by user ..."), and Amazon SES checks the sender's identity at the end of DATA ("554 Message
# rejected: Email address is not verified. ... identities failed the check ...: <from>"). Read from the reply:
# it says so, or names the configured From address whole (`hub.pii.holds_values`).
AFTER_MAIL_FROM: tuple[type[smtplib.SMTPResponseException], ...] = (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError)
SENDER_REJECTED = re.compile(r"sender\s+address\s+rejected", re.IGNORECASE)
# Enhanced status codes (RFC 3463) of a refused recipient that say the address itself is dead: no such mailbox
# (5.1.1), no such domain (5.1.2), a domain that takes no mail (5.1.10), a disabled mailbox (5.2.1). Mailing it
# again only costs the sender's reputation, so such a hard bounce takes the address off the person's profile,
# as FCM's dead tokens are (`profiles explain` shows why): an address they give later is used, and this one,
# sent again in an event, is attached afresh.
DEAD_ADDRESS = re.compile(r"(?<![\d.])5\.(?:1\.(?:1|2|10)|2\.1)(?![\d.])")
# TLS failures that are the connection dropping (a relay restarting, a network blip), not our setup: retried.
# A certificate that does not verify or a protocol the two ends do not share is a plain `ssl.SSLError` (or
# `SSLCertVerificationError`): no retry fixes that.
TLS_DROPS: tuple[type[ssl.SSLError], ...] = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def as_tls_error(error: ssl.SSLError) -> DeliveryError:
    """A connection dropped during TLS is retried; a certificate or protocol mismatch is our setup, not an outage."""
    error_class = f"tls.{type(error).__name__}"
    if isinstance(error, TLS_DROPS):
        return RetryableDeliveryError(DeliveryFailure(error_class, f"the SMTP server dropped the connection in TLS: {error}"))
    return AuthDeliveryError(DeliveryFailure(error_class, f"TLS with the SMTP server failed: {error}"))


def as_delivery_error(exc: smtplib.SMTPException, sender: str) -> DeliveryError:
    """SMTP's reply code decides (`_outcome`), read with `sender`, the hub's From address (as in MAIL FROM); a
    recipient refused for good as a dead address (`DEAD_ADDRESS`) leaves the profile too."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
    elif isinstance(exc, smtplib.SMTPResponseException):
        code, text = exc.smtp_code, exc.smtp_error
    else:  # disconnected mid-conversation, or the server lacks what we asked for (AUTH, STARTTLS)
        outcome = AuthDeliveryError if isinstance(exc, smtplib.SMTPNotSupportedError) else RetryableDeliveryError
        return outcome(DeliveryFailure(f"smtp.{type(exc).__name__}", f"SMTP: {exc}"))
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    outcome = _outcome(exc, code, reply, sender)
    return outcome(
        DeliveryFailure(
            error_class=f"smtp.{code}",
            message=mask_text(f"SMTP {code}: {reply}"),
            provider_code=str(code),
            response_summary={"code": code},
            # A refusal parked as the setup says nothing of the recipient, whatever status code it quotes.
            recipient_gone=_hard_bounce(exc, code, reply) if outcome is PermanentDeliveryError else None,
        )
    )


def _outcome(exc: smtplib.SMTPException, code: int, reply: str, sender: str) -> type[DeliveryError]:
    """4xx (and a garbled reply) retries, whatever the command: a 454 or 421 to AUTH is the relay's trouble for now
    (RFC 4954 6), not our credentials. A 5xx refusing our credentials, the hub itself (`REFUSES_THE_HUB`, or
    `AFTER_MAIL_FROM` its From address), or to relay for it (`RELAY_DENIED`) parks the delivery until the setup is
    fixed; any other 5xx is final."""
    if code == GARBLED or 400 <= code < 500:
        return RetryableDeliveryError
    if code in AUTH_CODES or isinstance(exc, smtplib.SMTPAuthenticationError):
        return AuthDeliveryError
    if isinstance(exc, REFUSES_THE_HUB) and code != MESSAGE_TOO_BIG:
        return AuthDeliveryError
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and RELAY_DENIED.search(reply):
        return AuthDeliveryError
    if isinstance(exc, AFTER_MAIL_FROM) and (SENDER_REJECTED.search(reply) or holds_values(reply, {folded(sender)})):
        return AuthDeliveryError
    return PermanentDeliveryError


def _hard_bounce(exc: smtplib.SMTPException, code: int, reply: str) -> str | None:
    """Why the recipient's address leaves the profile, when the server refused it as one that does not exist."""
    dead = DEAD_ADDRESS.search(reply) if isinstance(exc, smtplib.SMTPRecipientsRefused) and code >= 500 else None
    return f"hard bounce: the mail server answered {code} {dead[0]} (the address does not exist)" if dead else None
