"""What Twilio posts back: message status callbacks and inbound messages (STOP / START).

Status callbacks: https://www.twilio.com/docs/messaging/guides/track-outbound-message-status
Inbound webhook: https://www.twilio.com/docs/messaging/guides/webhook-request
Signatures: https://www.twilio.com/docs/usage/security#validating-requests
Opt-out keywords: https://help.twilio.com/articles/223134027

Twilio sends both form-encoded, not JSON, and signs them with the account's
auth token over the full URL it called plus the sorted form fields
(``X-Twilio-Signature``). Verification uses twilio's own `RequestValidator`,
which also accepts the URL with or without an explicit port, as Twilio signs
either depending on how the callback URL was written.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qs

from twilio.request_validator import RequestValidator

from connectors.base import CallbackRequest, ConsentSignal
from hub.errors import BadPayloadError, ForbiddenError
from hub.identifiers import possible_phone
from hub.model import ProviderStatus

# MessageStatus -> the delivery status it settles on; None while still in transit.
# "read" is WhatsApp's; "canceled" a scheduled message called off.
MESSAGE_STATUSES: Mapping[str, str | None] = {
    "accepted": None,
    "scheduled": None,
    "queued": None,
    "sending": None,
    "sent": None,
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}
UNSUBSCRIBED_ERROR = "21610"
# Twilio's error codes that say SMS cannot reach the person at that number, whether Twilio refuses the message at
# send (the create call's 400) or takes it and reports it `undelivered` / `failed` later: Twilio tries no more, so
# the rule's next channel may (https://www.twilio.com/docs/api/errors/21614, .../30003 ... 30007). One table for
# both, keyed as the delivery log files either (`status_update`'s error, `twilio_sms`'s error class). 30003 is
# often a handset switched off or out of coverage: the text is lost all the same. Left out, Twilio's or the
# sender's: every text fails alike, and emailing instead would hide that (30001 queue overflow, 30008 unknown
# error, 30034 an unregistered sender number, 21408 the account not enabled for the number's country, a Twilio 5xx).
UNREACHABLE_ERRORS = frozenset(f"twilio.{code}" for code in (
    UNSUBSCRIBED_ERROR,
    "21211",  # at send: the 'To' number is not a valid phone number
    "21612",  # at send: the 'To' number cannot receive SMS (from this sender's kind of number)
    "21614",  # at send: the 'To' number is not a mobile number: a landline
    "30003",  # unreachable handset: off, no signal, roaming off-network
    "30004",  # message blocked: the person blocked the sender, or their carrier blocks it
    "30005",  # unknown handset: the number does not exist (any more)
    "30006",  # landline, or a carrier this sender cannot reach
    "30007",  # filtered by the carrier
))

# Twilio's default keywords (matched on the whole trimmed body, any case). With
# Advanced Opt-Out, Twilio also sends OptOutType, which covers custom keywords.
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
OPT_OUT_TYPES: Mapping[str, bool] = {"STOP": False, "START": True}
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class _Form(dict[str, list[str]]):
    """`parse_qs` output plus the `getlist` twilio's validator looks for, since a field may repeat."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def verified_form(request: CallbackRequest, auth_token: str) -> dict[str, list[str]]:
    """The form fields, once the signature is proven; ForbiddenError (403) otherwise."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/x-www-form-urlencoded":
        raise BadPayloadError(f"Content-Type: expected application/x-www-form-urlencoded, got {content_type or 'none'!r}")
    try:
        form = _Form(parse_qs(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(request.body)))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadPayloadError(f"body: not a valid form-encoded body ({exc})") from None
    signature = request.headers.get("x-twilio-signature", "")
    if not signature or not RequestValidator(auth_token).validate(request.url, form, signature):
        raise ForbiddenError("X-Twilio-Signature: missing or does not match this request and the account's auth token")
    return form


def status_update(form: Mapping[str, list[str]]) -> ProviderStatus:
    sid, status = _field(form, "MessageSid"), _field(form, "MessageStatus").lower()
    if not sid or not status:
        raise BadPayloadError("MessageSid and MessageStatus: a status callback must carry both")
    error_code = _field(form, "ErrorCode")
    return ProviderStatus(
        provider_message_id=sid,
        provider_status=status,
        final_status=MESSAGE_STATUSES.get(status),
        error=f"twilio.{error_code}" if error_code else None,
        revokes_consent=error_code == UNSUBSCRIBED_ERROR,
    )


def cannot_reach(report: ProviderStatus) -> bool:
    """Whether a status failed its message for a reason of the person (`UNREACHABLE_ERRORS`)."""
    return report.final_status == "failed" and report.error in UNREACHABLE_ERRORS


def consent_change(form: Mapping[str, list[str]]) -> ConsentSignal | None:
    """The consent an inbound message expresses, if it is an opt-out or opt-in keyword, with its MessageSid (a
    repeat of the message is not applied again).

    The sender is any possible number (`possible_phone`), not only a valid
    one as ingest takes: a STOP is the person's own word, and a number stored
    before phones had to be valid still receives texts. One no profile holds
    changes nothing, and is no error either (Twilio's own opt-out list
    keeps the number from texts).
    """
    sender = possible_phone(_field(form, "From"), "US")  # Twilio always sends E.164
    if sender is None:
        raise BadPayloadError("From: an inbound message must carry the sender's phone number in E.164 (+14155550100)")
    opt_out_type = _field(form, "OptOutType").upper()
    keyword = _field(form, "Body").strip().upper()
    if opt_out_type in OPT_OUT_TYPES:
        granted = OPT_OUT_TYPES[opt_out_type]
    elif keyword in OPT_OUT_KEYWORDS or keyword in OPT_IN_KEYWORDS:
        granted = keyword in OPT_IN_KEYWORDS
    else:
        return None
    return ConsentSignal(sender, "sms", granted, _field(form, "MessageSid") or None)


def _field(form: Mapping[str, list[str]], name: str) -> str:
    return form.get(name, [""])[0]
