"""Signed, expiring unsubscribe tokens for the links in our emails.

A token names a profile, a channel and the message it came in (so the
opt-out is recorded against the address it was sent to) and carries its
expiry, HMAC-SHA256
signed with HUB_UNSUBSCRIBE_SECRET: the link works without a login and
without any state on our side, nobody can forge one for someone else's
profile, and old links stop working. Comparison is constant-time. A link
signed with the secret before a change (HUB_UNSUBSCRIBE_PREVIOUS_SECRET)
still works until it expires: CAN-SPAM wants a link to work for 30 days
after the email is sent, and a leaked secret must be replaceable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

# The shortest life a link may be given (HUB_UNSUBSCRIBE_LINK_DAYS): CAN-SPAM's 30 days after sending.
SHORTEST_LINK_DAYS = 30


class InvalidToken(Exception):
    """The token is malformed or its signature does not match."""


class ExpiredToken(Exception):
    """The token was genuine but is past its expiry."""


@dataclass(frozen=True)
class UnsubscribeRequest:
    profile_id: str
    channel: str
    expires_at: datetime
    delivery_id: str | None  # None in links issued before tokens named their message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), b"unsubscribe." + payload.encode("ascii"), hashlib.sha256).digest()


def make_token(secret: str, profile_id: str, channel: str, delivery_id: str, expires_at: datetime) -> str:
    fields = {"p": profile_id, "c": channel, "d": delivery_id, "e": int(expires_at.timestamp())}
    payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
    return f"{payload}.{_b64(_mac(secret, payload))}"


def read_token(secrets: Sequence[str], token: str, now: datetime) -> UnsubscribeRequest:
    """The request a token signed with any of `secrets` carries; InvalidToken or ExpiredToken when it cannot be
    honoured."""
    payload, _, signature = token.partition(".")
    try:
        presented = _unb64(signature)
        genuine = any(hmac.compare_digest(presented, _mac(secret, payload)) for secret in secrets)
        fields = json.loads(_unb64(payload)) if genuine else None
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidToken("token: not a token this hub issued") from None
    if not isinstance(fields, dict) or not {"p", "c", "e"} <= fields.keys():
        raise InvalidToken("token: not a token this hub issued")
    delivery_id = str(fields["d"]) if "d" in fields else None
    request = UnsubscribeRequest(
        str(fields["p"]), str(fields["c"]), datetime.fromtimestamp(int(fields["e"]), timezone.utc), delivery_id
    )
    if request.expires_at <= now:
        raise ExpiredToken(f"token: expired on {request.expires_at:%Y-%m-%d}")
    return request
