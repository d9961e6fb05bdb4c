"""Push notifications through Firebase Cloud Messaging (HTTP v1) with `firebase-admin`.

One delivery on the ``push`` channel goes to every push token routing found
for the profile (``content["recipients"]``, else the target): one FCM message
per token, sent together with ``messaging.send_each``. The person counts as
reached when any of their devices accepted the message, so a partial failure
is a success and is never retried (that would notify the other devices
twice); only when no device accepted it does the delivery fail, as the most
hopeful of its failures (retryable, then auth, then permanent).

Tokens FCM calls dead (``UNREGISTERED``, ``SENDER_ID_MISMATCH``, or
``INVALID_ARGUMENT`` about the token rather than the payload) are handed to
`forget_tokens`, which the hub wires to the identity graph.

API: https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send
Errors: https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import firebase_admin
import structlog
from firebase_admin import credentials, exceptions, messaging
from google.auth.exceptions import RefreshError, TransportError
from pydantic import BaseModel, ConfigDict, Field, FilePath

from connectors.base import Destination
from connectors.destinations.requests_transport import VendorAdapter
from hub.clock import utcnow
from hub.errors import (
    AuthDeliveryError,
    ConfigError,
    DeliveryError,
    DeliveryFailure,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from hub.model import Delivery, SendResult
from hub.pii import mask_text, mask_token
from hub.retry import outcome_for_status

log = structlog.get_logger(__name__)
FCM_ORIGIN = re.compile(r"^https://fcm\.googleapis\.com(?=[/?]|$)")
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"

# FCM's errorCode (or, without one, the canonical status) says what a failure means.
FCM_CODE_OUTCOMES: Mapping[str, type[DeliveryError]] = {
    "UNREGISTERED": PermanentDeliveryError,  # the app was uninstalled or the token expired
    "SENDER_ID_MISMATCH": PermanentDeliveryError,  # the token belongs to another Firebase project
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
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
# When no device accepted the message, the delivery fails as the most hopeful outcome.
HOPE_ORDER: tuple[type[DeliveryError], ...] = (RetryableDeliveryError, AuthDeliveryError, PermanentDeliveryError)


class FcmPushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    credentials_file: FilePath = Field(description="Service-account key JSON of the Firebase project.")
    project_id: str | None = Field(None, description="Firebase project; defaults to the key's project_id.")
    api_base_url: str | None = Field(None, description="FCM-compatible endpoint instead of fcm.googleapis.com.")
    timeout_seconds: float = Field(10.0, gt=0)


@dataclass(frozen=True)
class TokenFailure:
    """Why FCM refused one device token, already judged."""

    token: str
    outcome: type[DeliveryError]
    code: str
    message: str
    retry_after: float | None
    dead_token: bool


class FcmPushDestination(Destination):
    slug = "fcm_push"
    title = "Firebase Cloud Messaging (HTTP v1)"
    docs_url = "https://firebase.google.com/docs/cloud-messaging/send-message"
    channel = "push"
    Config = FcmPushConfig

    def __init__(
        self, destination_id: str, config: BaseModel, forget_tokens: Callable[[Sequence[str]], None] | None = None
    ) -> None:
        super().__init__(destination_id, config)
        assert isinstance(config, FcmPushConfig)
        self.settings = config
        self.forget_tokens = forget_tokens
        options: dict[str, Any] = {"httpTimeout": config.timeout_seconds}
        if config.project_id:
            options["projectId"] = config.project_id
        try:
            certificate = credentials.Certificate(str(config.credentials_file))
        except ValueError as exc:
            raise ConfigError(f"{config.credentials_file}: not a service-account key: {exc}") from None
        # Apps live in a process-wide registry keyed by name; a unique name lets
        # several hubs (tests, the demo) each own and delete theirs.
        self.app = firebase_admin.initialize_app(certificate, options, name=f"touchhub-{destination_id}-{uuid.uuid4().hex}")
        # firebase-admin has no setting for the FCM host or its retry policy;
        # its one seam is the session the messaging service mounts an adapter
        # on for https://fcm.googleapis.com. Ours replaces it (see VendorAdapter).
        service = messaging._get_messaging_service(self.app)
        service._client.session.mount(
            "https://fcm.googleapis.com", VendorAdapter(FCM_ORIGIN, config.timeout_seconds, config.api_base_url)
        )

    def request_summary(self, delivery: Delivery) -> dict[str, Any]:
        tokens = _tokens(delivery)
        return {"tokens": len(tokens), "first_token": mask_token(tokens[0]), "title": mask_text(delivery.content.get("title") or "")}

    def send(self, delivery: Delivery) -> SendResult:
        tokens = _tokens(delivery)
        messages = [self._message(token, delivery) for token in tokens]
        try:
            batch = messaging.send_each(messages, app=self.app)
        except ValueError as exc:  # firebase-admin checks each message before sending any
            raise PermanentDeliveryError(DeliveryFailure("fcm.invalid_message", f"not a valid FCM message: {exc}")) from exc
        except exceptions.UnknownError as exc:
            # send_each wraps what escapes its worker threads, such as a failed
            # OAuth token refresh, which is not a requests error.
            raise _credential_error(exc.cause or exc) from exc
        failures = [_judge(token, answer.exception) for token, answer in zip(tokens, batch.responses) if not answer.success]
        dead = [failure.token for failure in failures if failure.dead_token]
        if dead and self.forget_tokens is not None:
            self._forget(dead)
        if batch.success_count:
            ids = [answer.message_id for answer in batch.responses if answer.success]
            return SendResult(status="sent", provider_message_id=ids[0], response_summary={
                "sent": batch.success_count, "failed": batch.failure_count, "message_ids": ids,
                "errors": {mask_token(f.token): f.code for f in failures}, "dead_tokens": len(dead),
            })
        raise _batch_error(failures, dead=len(dead))

    def _forget(self, tokens: list[str]) -> None:
        assert self.forget_tokens is not None
        try:
            self.forget_tokens(tokens)
        except Exception:  # the send already happened: failing it now would notify the live devices again
            log.exception("could not forget dead push tokens; FCM will report them again", tokens=len(tokens))

    def _message(self, token: str, delivery: Delivery) -> messaging.Message:
        data = delivery.content.get("params", {}).get("data") or {}
        # firebase-admin 7.7 deprecates `token` in favour of Firebase
        # installation ids (`fid`); push_token identifiers are registration
        # tokens, which FCM v1 still takes in `token`.
        return messaging.Message(
            token=token,
            notification=messaging.Notification(title=delivery.content.get("title"), body=delivery.content.get("body")),
            data={str(key): str(value) for key, value in data.items()},
        )

    def close(self) -> None:
        firebase_admin.delete_app(self.app)


def _tokens(delivery: Delivery) -> list[str]:
    return list(delivery.content.get("recipients") or [delivery.target])


def _judge(token: str, error: exceptions.FirebaseError) -> TokenFailure:
    response = error.http_response
    details: list[dict[str, Any]] = []
    if response is not None:
        try:
            details = response.json().get("error", {}).get("details", [])
        except ValueError:
            details = []
    fcm_code = next((d.get("errorCode") for d in details if d.get("@type") == FCM_ERROR_TYPE), None)
    code = fcm_code or error.code
    outcome = FCM_CODE_OUTCOMES.get(code) or (
        outcome_for_status(response.status_code) if response is not None else RetryableDeliveryError
    )
    # FCM answers a malformed token with a bare INVALID_ARGUMENT, and a bad
    # payload with the same code plus field violations naming the payload.
    violations = [v for d in details if d.get("@type") == BAD_REQUEST_TYPE for v in d.get("fieldViolations", [])]
    token_at_fault = code == "INVALID_ARGUMENT" and all(v.get("field") == "message.token" for v in violations)
    retry_after = _retry_after(response.headers.get("Retry-After")) if response is not None else None
    return TokenFailure(token, outcome, code, str(error), retry_after, code in DEAD_TOKEN_CODES or token_at_fault)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds; FCM sends delta-seconds, HTTP also allows a date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


def _batch_error(failures: list[TokenFailure], dead: int) -> DeliveryError:
    outcome = next(kind for kind in HOPE_ORDER if any(f.outcome is kind for f in failures))
    chosen = [f for f in failures if f.outcome is outcome]
    waits = [f.retry_after for f in chosen if f.retry_after is not None]
    return outcome(DeliveryFailure(
        error_class=f"fcm.{chosen[0].code}",
        message=f"FCM refused {len(failures)} device(s): {chosen[0].message}",
        provider_code=chosen[0].code,
        retry_after=max(waits) if waits else None,
        response_summary={"errors": {mask_token(f.token): f.code for f in failures}, "dead_tokens": dead},
    ))


def _credential_error(cause: BaseException) -> DeliveryError:
    """A failed OAuth token exchange: refused credentials park the delivery, an unreachable endpoint retries."""
    retryable = isinstance(cause, TransportError) or (isinstance(cause, RefreshError) and cause.retryable)
    outcome = RetryableDeliveryError if retryable else AuthDeliveryError
    return outcome(DeliveryFailure(
        error_class=f"fcm.credentials.{type(cause).__name__}", message=f"could not get an FCM access token: {cause}"
    ))
