"""What FCM's refusals mean for one device token: retry, park (auth), give up, and whether the token is dead.

Tokens FCM calls dead (``UNREGISTERED``, ``SENDER_ID_MISMATCH``, or
``INVALID_ARGUMENT`` that blames the token) leave the profile. But when every
token of a send answers ``SENDER_ID_MISMATCH``, the likelier culprit is the
hub's own Firebase project (a service-account key of another project):
`wrong_sender` parks that send as a setup failure and the tokens stay, or
one swapped key would strip every person of their devices. FCM blames a
malformed or expired token with a bare ``INVALID_ARGUMENT`` whose message
says "The registration token is not a valid FCM registration token"
(firebase/firebase-admin-java#1064), rarely with a field violation on
``message.token``; Firebase's token guide says to delete the token on it.
Any other refusal is the message's problem, never the device's: FCM
answers a message over its size limit, and a proxy a request it cannot
read, with a bare ``INVALID_ARGUMENT`` too, and a person's good tokens must
not go for that.

FCM answers ``QUOTA_EXCEEDED`` (429, with Retry-After) for the project's
message rate, one device's and one topic's alike; its ``google.rpc.QuotaFailure``
detail, or else its message ("Device message rate exceeded."), says which
(`_wait_scope`). Only the project's asks quiet of every push; a device's
wait is its delivery's alone.

Errors: https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from firebase_admin import exceptions
from google.auth.exceptions import GoogleAuthError, RefreshError, TransportError

from hub.clock import utcnow
from hub.errors import (
    AuthDeliveryError,
    DeliveryError,
    DeliveryFailure,
    PermanentDeliveryError,
    RetryableDeliveryError,
    RetryAfterScope,
    unexpected_failure,
)
from hub.pii import mask_token
from hub.retry import outcome_for_status, parse_retry_after

log = structlog.get_logger(__name__)
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
SENDER_ID_MISMATCH = "SENDER_ID_MISMATCH"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
QUOTA_FAILURE_TYPE = "type.googleapis.com/google.rpc.QuotaFailure"
# FCM's word for a rate of one message target (a device's, a topic's), where the project's says neither.
ONE_TARGET_RATE = re.compile(r"\b(device|topic)\b", re.IGNORECASE)
# FCM's text for a malformed or expired registration token, its only word on the token in a bare INVALID_ARGUMENT.
INVALID_TOKEN_TEXT = re.compile(r"registration token is not a valid", re.IGNORECASE)

# FCM's errorCode (or, without one, the canonical status) says what a failure means.
FCM_CODE_OUTCOMES: Mapping[str, type[DeliveryError]] = {
    "UNREGISTERED": PermanentDeliveryError,  # the app was uninstalled or the token expired
    SENDER_ID_MISMATCH: PermanentDeliveryError,  # the token belongs to another Firebase project (see `wrong_sender`)
    "INVALID_ARGUMENT": PermanentDeliveryError,
    "QUOTA_EXCEEDED": RetryableDeliveryError,  # per-project or per-device rate; honour Retry-After
    "RESOURCE_EXHAUSTED": RetryableDeliveryError,
    "UNAVAILABLE": RetryableDeliveryError,
    "INTERNAL": RetryableDeliveryError,
    "DEADLINE_EXCEEDED": RetryableDeliveryError,  # our timeout: firebase-admin's name for it
    "THIRD_PARTY_AUTH_ERROR": AuthDeliveryError,  # APNs certificate or web push key refused
    "UNAUTHENTICATED": AuthDeliveryError,
    "PERMISSION_DENIED": AuthDeliveryError,
}
# The codes FCM answers for a token that will never take a message again, whatever the message.
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", SENDER_ID_MISMATCH})
# Why a token was removed, as the profile's audit trail (`profiles explain`) shows it; INVALID_ARGUMENT counts
# only when it blames the token (`_blames_token`).
DEAD_TOKEN_REASONS: Mapping[str, str] = {
    "UNREGISTERED": "FCM answered UNREGISTERED: the app was uninstalled or the token expired",
    SENDER_ID_MISMATCH: "FCM answered SENDER_ID_MISMATCH: the token belongs to another Firebase project; check "
                          "the hub's FCM project (HUB_FCM_PROJECT_ID, else the service-account key's project_id)",
    "INVALID_ARGUMENT": "FCM answered INVALID_ARGUMENT for the token: it is malformed or expired",
}
# When no device accepted the message, the delivery fails as the most hopeful outcome.
HOPE_ORDER: tuple[type[DeliveryError], ...] = (RetryableDeliveryError, AuthDeliveryError, PermanentDeliveryError)


@dataclass(frozen=True)
class TokenFailure:
    """Why one device token was not reached, already judged.

    `code` is FCM's errorCode (or canonical status); for a failure before FCM
    answered (`from_fcm` false) it names what went wrong, e.g.
    ``credentials.RefreshError``.
    """

    token: str
    outcome: type[DeliveryError]
    code: str
    message: str
    retry_after: float | None
    dead_token: bool
    from_fcm: bool = True
    retry_after_scope: RetryAfterScope = "destination"


def failure(token: str, error: Exception) -> TokenFailure:
    """What `error`, raised sending to `token`, means; an unreadable error is retryable, never an exception."""
    try:
        if isinstance(error, exceptions.FirebaseError):
            return _judge(token, error)
        if isinstance(error, GoogleAuthError):  # no access token: google-auth's errors are not requests errors
            retryable = isinstance(error, TransportError) or (isinstance(error, RefreshError) and error.retryable)
            return TokenFailure(token, RetryableDeliveryError if retryable else AuthDeliveryError,
                                f"credentials.{type(error).__name__}", f"could not get an FCM access token: {error}",
                                None, dead_token=False, from_fcm=False)
        if isinstance(error, ValueError):  # firebase-admin refused to encode the message
            return TokenFailure(token, PermanentDeliveryError, "invalid_message", f"not a valid FCM message: {error}",
                                None, dead_token=False, from_fcm=False)
    except Exception:
        log.exception("could not judge an FCM failure; counting it retryable")
    return TokenFailure(token, RetryableDeliveryError, unexpected_failure(error).error_class, str(error), None,
                        dead_token=False, from_fcm=False)


def _judge(token: str, error: exceptions.FirebaseError) -> TokenFailure:
    response = error.http_response
    body = _error_body(response)
    details = _dicts(body.get("details"))
    fcm_code = next((d.get("errorCode") for d in details if d.get("@type") == FCM_ERROR_TYPE), None)
    code = fcm_code if isinstance(fcm_code, str) and fcm_code else str(error.code)
    outcome = FCM_CODE_OUTCOMES.get(code) or (
        outcome_for_status(response.status_code) if response is not None else RetryableDeliveryError
    )
    dead = code in DEAD_TOKEN_CODES or (code == "INVALID_ARGUMENT" and _blames_token(body, details))
    retry_after = parse_retry_after(response.headers.get("Retry-After"), utcnow()) if response is not None else None
    return TokenFailure(token, outcome, code, f"FCM: {error}", retry_after, dead,
                        retry_after_scope=_wait_scope(code, body, details))


def _wait_scope(code: str, error: Mapping[str, Any], details: list[dict[str, Any]]) -> RetryAfterScope:
    """Whom a refusal's Retry-After concerns: only this delivery when FCM's QUOTA_EXCEEDED names one device's or
    one topic's rate, in its QuotaFailure violations (subject or description) or, without them, its message.

    Anything else, the project's rate included, waits for the whole
    destination; so does a QuotaFailure that names no device or topic.
    """
    if code != "QUOTA_EXCEEDED":
        return "destination"
    violations = [v for d in details if d.get("@type") == QUOTA_FAILURE_TYPE for v in _dicts(d.get("violations"))]
    texts = [v.get(key) for v in violations for key in ("subject", "description")] or [error.get("message")]
    one_target = any(isinstance(text, str) and ONE_TARGET_RATE.search(text) for text in texts)
    return "delivery" if one_target else "destination"


def _blames_token(error: Mapping[str, Any], details: list[dict[str, Any]]) -> bool:
    """Whether an INVALID_ARGUMENT is FCM saying the token is bad, rather than the message.

    A field violation, when FCM sends one, names the culprit; without one,
    only FCM's text tells a bad token from a message over its size limit (a
    bare INVALID_ARGUMENT "Android message is too big") or a proxy's refusal.
    """
    violations = [v for d in details if d.get("@type") == BAD_REQUEST_TYPE for v in _dicts(d.get("fieldViolations"))]
    if violations:
        return any(v.get("field") == "message.token" for v in violations)
    message = error.get("message")
    return isinstance(message, str) and INVALID_TOKEN_TEXT.search(message) is not None


def _error_body(response: Any) -> dict[str, Any]:
    """The ``error`` object of an FCM error body; empty when the body is not FCM's JSON (a proxy's page)."""
    if response is None:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def batch_error(failures: list[TokenFailure], dead: int) -> DeliveryError:
    outcome = next(kind for kind in HOPE_ORDER if any(f.outcome is kind for f in failures))
    chosen = [f for f in failures if f.outcome is outcome]
    waits = [f.retry_after for f in chosen if f.retry_after is not None]
    # The whole destination waits when any of the waits asked for concerns more than its device.
    scopes = {f.retry_after_scope for f in chosen if f.retry_after is not None}
    return outcome(DeliveryFailure(
        error_class=f"fcm.{chosen[0].code}",
        message=f"no device reached ({len(failures)} tried): {chosen[0].message}",
        provider_code=chosen[0].code if chosen[0].from_fcm else None,
        retry_after=max(waits) if waits else None,
        response_summary=summary(failures, dead),
        retry_after_scope="delivery" if scopes == {"delivery"} else "destination",
    ))


def wrong_sender(failures: list[TokenFailure]) -> AuthDeliveryError | None:
    """The setup failure to park a send as when every one of its tokens answered SENDER_ID_MISMATCH, else None.

    A token of another project is a stray (a debug build's, an old app's)
    only while other tokens of the same send get through; when none does, the
    hub's key or HUB_FCM_PROJECT_ID is the likelier mistake, and removing the
    tokens would be the damage.
    """
    if not failures or any(f.code != SENDER_ID_MISMATCH for f in failures):
        return None
    return AuthDeliveryError(DeliveryFailure(
        error_class=f"fcm.{SENDER_ID_MISMATCH}",
        message=(f"every device ({len(failures)}) answered {SENDER_ID_MISMATCH}, so the hub's Firebase project is "
                 "likely not the app's: check that the service-account key (HUB_FCM_CREDENTIALS_FILE) and "
                 "HUB_FCM_PROJECT_ID name the app's project, then replay. The tokens were kept"),
        provider_code=SENDER_ID_MISMATCH,
        response_summary=summary(failures, dead=0),
    ))


def summary(failures: list[TokenFailure], dead: int) -> dict[str, Any]:
    """What a send keeps of FCM's refusals: each token's code, the token masked, and how many tokens were dead."""
    return {"errors": {mask_token(f.token): f.code for f in failures}, "dead_tokens": dead}
