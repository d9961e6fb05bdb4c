"""The hub's exceptions, in one place.

    Exception
    ├── ConfigError                    bad settings, mapping or rule files; refuse to start
    └── HubError
        ├── IngestError                the request is at fault; answered with a 4xx
        │   ├── AuthenticationError    401: missing or wrong write key / signature
        │   ├── UnknownSourceError     404: no source with that id is configured
        │   ├── ForbiddenError         403: a provider callback whose signature does not match
        │   ├── PayloadTooLargeError   413: body over the configured limit
        │   ├── UnsupportedMediaTypeError 415: a Content-Encoding the hub does not decode
        │   └── BadPayloadError        400: not JSON, wrong shape, no valid item
        ├── MappingError               an accepted event the mapping cannot turn into a touchpoint
        ├── IdentityRepairError        unmerge / forget named a profile or merge that does not exist
        ├── ForgottenIdentityError     every identifier of an event belongs to a forgotten person
        ├── EventDropped               the mapping's drop rules say the event is not kept (not an error to fix)
        ├── StoreBusyError             another writer held the SQLite write lock past HUB_SQLITE_LOCK_TIMEOUT_SECONDS
        └── DeliveryError              a destination failed to deliver
            ├── RetryableDeliveryError timeouts, 429, 5xx: try again later
            ├── PermanentDeliveryError invalid number, unsubscribed: never retry
            └── AuthDeliveryError      our credentials were refused: park until fixed
                └── GoneDeliveryError  the destination says it is gone (410): park its later deliveries too

`ConfigError` stands outside `HubError` on purpose: no retry loop that catches
`HubError` may swallow a configuration mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")
# Whom a Retry-After concerns: every delivery to the destination (a provider's own rate limit), or only the
# delivery it answered (a limit on its recipient, as FCM's per-device message rate).
RetryAfterScope = Literal["destination", "delivery"]


class ConfigError(Exception):
    """One or more configuration problems; `problems` lists each as 'where: what'."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        summary = "; ".join(self.problems)
        super().__init__(f"{len(self.problems)} configuration problem(s): {summary}")


def collect(problems: list[str], build: Callable[[], T]) -> T | None:
    """What `build` returns, or None with its ConfigError's problems added to `problems`: a set-up goes on past a
    problem, so that every one is reported at once."""
    try:
        return build()
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


class HubError(Exception):
    """Base of every runtime error the hub raises on purpose."""


class StoreBusyError(HubError):
    """Another writer held the SQLite store's write lock past HUB_SQLITE_LOCK_TIMEOUT_SECONDS; the message names it
    (`hub.store.writer_lock`) and what to do."""


@dataclass
class ItemProblem:
    """Why one item of a request was refused: which item, which field, and why."""

    index: int | None
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


class IngestError(HubError):
    """The sender's request is at fault; `status_code` is the HTTP answer."""

    status_code = 400

    def __init__(self, message: str, problems: list[ItemProblem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class AuthenticationError(IngestError):
    status_code = 401


class UnknownSourceError(IngestError):
    status_code = 404


class ForbiddenError(IngestError):
    status_code = 403


class PayloadTooLargeError(IngestError):
    status_code = 413


class UnsupportedMediaTypeError(IngestError):
    status_code = 415


class BadPayloadError(IngestError):
    status_code = 400


class MappingError(HubError):
    """A stored raw event the source's mapping could not normalize."""


class IdentityRepairError(HubError):
    """An unmerge or forget request named a profile or merge that does not exist."""


class ForgottenIdentityError(HubError):
    """Every identifier of a touchpoint belongs to a person erased on request, or the event was received before
    its sender was forgotten: the event is dropped."""
class EventDropped(HubError):
    """A drop rule of the mapping matched: the event is acknowledged and not kept."""


@dataclass
class DeliveryFailure:
    """What a destination reports about a failed send, for the delivery log."""

    error_class: str
    message: str
    provider_code: str | None = None
    retry_after: float | None = None  # seconds the provider asked us to wait (Retry-After); the policy honours it
    response_summary: dict[str, Any] = field(default_factory=dict)
    revokes_consent: bool = False  # the provider says the recipient opted out (Twilio 21610): stop the channel
    # The provider says the address does not exist (an email hard bounce): it leaves the person's profile, as a
    # dead push token does, so routing stops choosing it and an address they give later is used.
    recipient_gone: str | None = None
    # The provider refused the message for a reason of its person (Twilio 21614: a landline; 21211: no such number):
    # this channel cannot reach them at this address, though it stays on the profile and they still consent, so
    # their rule's next channel is planned, as it is when the provider reports a message it took undelivered.
    unreachable: bool = False
    # Whether `retry_after` holds back every delivery to the destination (`hub.throttle.ProviderWait`) or only this
    # one: a wait for one recipient (a device FCM rate-limits) must not stop the messages to everyone else.
    retry_after_scope: RetryAfterScope = "destination"


UNEXPECTED = "unexpected."  # the error class prefix of what no destination classified: a connector bug


def unexpected_failure(error: Exception) -> DeliveryFailure:
    """An exception nothing classified, as the delivery log files it; sent as retryable, so a connector bug never
    loses a delivery."""
    return DeliveryFailure(f"{UNEXPECTED}{type(error).__name__}", str(error))


class DeliveryError(HubError):
    """A send failed; subclasses say whether trying again can help."""

    outcome = "error"

    def __init__(self, failure: DeliveryFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class RetryableDeliveryError(DeliveryError):
    outcome = "retryable"


class PermanentDeliveryError(DeliveryError):
    outcome = "permanent"


class AuthDeliveryError(DeliveryError):
    outcome = "auth"


class GoneDeliveryError(AuthDeliveryError):
    """The destination says it takes no deliveries at its address any more (a webhook's 410 Gone): parked as an auth
    outcome is, and the destination's later deliveries parked without a call (`hub.throttle.GoneMark`)."""
