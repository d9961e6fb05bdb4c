"""Push notifications through Firebase Cloud Messaging (HTTP v1) with `firebase-admin`.

One delivery on the ``push`` channel goes to every push token routing found
for the profile (``content["recipients"]``, else the target): one FCM message
per token, sent side by side (see `FcmPushDestination.send`). The person
counts as reached when any of their devices accepted the message, so a
partial failure is a success and is never retried (that would notify the
other devices twice); only when no device accepted it does the delivery
fail, as the most hopeful of its failures (retryable, then auth, then
permanent).

Each push carries a collapse key (`collapse_key`: the action's
``params.collapse_key``, else its rule's id), so a retry, a replay or the
rule's next nudge replaces the notification shown instead of stacking a
second one beside it. It lives no longer than the hub would still send it
(`_lifespan`): FCM keeps a push for a device that is off for four weeks
unless told otherwise.

Tokens FCM calls dead are handed to `forget_tokens` with the reason, which
the hub wires to the identity graph; which refusals blame the token, and
when a refusal of every token blames the hub's own setup instead, is
`connectors.destinations.fcm_errors`'s to say.

API: https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import firebase_admin
import structlog
from firebase_admin import credentials, messaging
from pydantic import BaseModel, ConfigDict, Field, FilePath, field_validator

from connectors.base import Destination
from connectors.destinations import fcm_errors
from connectors.destinations.fcm_errors import DEAD_TOKEN_REASONS, TokenFailure
from connectors.destinations.json_form import no_json_form
from connectors.destinations.requests_transport import VendorAdapter
from hub.clock import utcnow
from hub.errors import DeliveryFailure, PermanentDeliveryError
from hub.model import SEND_BY, Delivery, SendResult
from hub.pii import mask_text, mask_token

log = structlog.get_logger(__name__)
FCM_ORIGIN = re.compile(r"^https://fcm\.googleapis\.com(?=[/?]|$)")
# FCM's limit on a message's payload (https://firebase.google.com/docs/cloud-messaging/concept-options); see
# `payload_bytes` for how it is measured.
FCM_PAYLOAD_LIMIT = 4096
# Data keys FCM refuses ("from", "message_type", or any word starting with "google" or "gcm"), and
# "notification", which would clash with the notification payload on the device.
RESERVED_DATA_KEY = re.compile(r"^(from|message_type|notification|google.*|gcm.*)$")
# APNs refuses an `apns-collapse-id` longer than this, in bytes; FCM hands the header on as it is.
COLLAPSE_KEY_BYTES = 64
# The longest FCM keeps a message for a device that is off (and its default): 28 days; it refuses a longer ttl.
FCM_MAX_TTL_SECONDS = 2_419_200
# Devices sent to at once for one delivery: more than anyone carries, few enough to share the connection pool.
MAX_PARALLEL_SENDS = 16

# Data values that are not text, as JSON: one encoder for the process (`json.dumps` with options builds one a call).
_DATA_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


KEY_ADVICE = "point it at the key JSON the Firebase console gives (Project settings > Service accounts)"


def service_account(path: Path) -> credentials.Certificate:
    """The credentials in a service-account key file.

    Read here rather than by firebase-admin, which ends in an AttributeError
    on JSON that is not an object (``[]``, ``null``).

    Raises:
        ValueError: the file cannot be read or is not such a key, said so that ops can fix it.
    """
    try:
        key = json.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror or exc}); {KEY_ADVICE}") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ValueError(f"{path} is not JSON ({exc}); {KEY_ADVICE}") from None
    if not isinstance(key, dict):
        raise ValueError(f'{path} is JSON but not an object, as a key is ({{"type": "service_account", ...}}); {KEY_ADVICE}')
    try:
        return credentials.Certificate(key)
    except ValueError as exc:
        raise ValueError(f"{path} is not a service-account key ({exc}); {KEY_ADVICE}") from None


class FcmPushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    credentials_file: FilePath = Field(description="Service-account key JSON of the Firebase project.")
    project_id: str | None = Field(None, description="Firebase project; defaults to the key's project_id.")
    api_base_url: str | None = Field(None, description="FCM-compatible endpoint instead of fcm.googleapis.com.")
    timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("credentials_file")
    @classmethod
    def _is_a_key(cls, value: Path) -> Path:
        """Read here, not first in the destination's constructor, so a bad key is a config problem at start."""
        service_account(value)
        return value


class FcmPushDestination(Destination):
    slug = "fcm_push"
    title = "Firebase Cloud Messaging (HTTP v1)"
    docs_url = "https://firebase.google.com/docs/cloud-messaging/send-message"
    channel = "push"
    message_parts = ("title", "body")
    Config = FcmPushConfig

    def __init__(
        self, destination_id: str, config: BaseModel, forget_tokens: Callable[[Sequence[str], str], None] | None = None
    ) -> None:
        """`forget_tokens(tokens, reason)` is told of the tokens FCM called dead, once per reason."""
        super().__init__(destination_id, config)
        assert isinstance(config, FcmPushConfig)
        self.settings = config
        self.forget_tokens = forget_tokens
        # httpTimeout bounds the access-token fetch too: google-auth's
        # AuthorizedSession hands each call's timeout to the credentials'
        # refresh, so a token endpoint that stalls fails the send as retryable.
        options: dict[str, Any] = {"httpTimeout": config.timeout_seconds}
        if config.project_id:
            options["projectId"] = config.project_id
        certificate = service_account(config.credentials_file)
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

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> list[str]:
        """What `send` would refuse in ``params`` at every send (`fcm.bad_params`): ``data`` not a map, a key FCM
        reserves, a value with no JSON form; a ``collapse_key`` that is no text or longer than APNs takes."""
        return _params_problems(params)

    def request_summary(self, delivery: Delivery) -> dict[str, Any]:
        tokens = _tokens(delivery)
        return {"tokens": len(tokens), "first_token": mask_token(tokens[0]), "title": mask_text(delivery.content.get("title") or "")}

    def send(self, delivery: Delivery) -> SendResult:
        """One `messaging.send` per token, side by side, each failure caught and judged in its own thread.

        Not `messaging.send_each`, although it does the same fan-out: an
        exception that is not a requests error, such as google-auth's
        RefreshError when the access token must be renewed mid-multicast,
        escapes its worker thread, and send_each then raises UnknownError
        and drops the BatchResponse, so the devices that did accept the
        message are unknown and a retry notifies them again. firebase-admin
        exposes nothing else that keeps per-token results; catching each
        send's failure ourselves does, at the same cost (one request per
        token, in parallel).
        """
        tokens = _tokens(delivery)
        problems = _params_problems(delivery.content.get("params") or {})
        if problems:
            raise PermanentDeliveryError(DeliveryFailure("fcm.bad_params", "; ".join(problems)))
        messages = self._messages(tokens, delivery)
        if len(tokens) == 1:  # the common case: no pool to start
            answers = [self._send_one(tokens[0], messages[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(len(tokens), MAX_PARALLEL_SENDS)) as pool:
                answers = list(pool.map(self._send_one, tokens, messages))
        ids = [answer for answer in answers if isinstance(answer, str)]
        failures = [answer for answer in answers if isinstance(answer, TokenFailure)]
        if not ids and (setup := fcm_errors.wrong_sender(failures)) is not None:
            raise setup
        dead = [failure for failure in failures if failure.dead_token]
        for code in sorted({failure.code for failure in dead}):
            self._forget([f.token for f in dead if f.code == code], DEAD_TOKEN_REASONS.get(code, f"FCM answered {code}"))
        if ids:
            return SendResult(status="sent", provider_message_id=ids[0], response_summary={
                "sent": len(ids), "failed": len(failures), "message_ids": ids, **fcm_errors.summary(failures, len(dead)),
            })
        raise fcm_errors.batch_error(failures, dead=len(dead))

    def _messages(self, tokens: list[str], delivery: Delivery) -> list[messaging.Message]:
        """One message per token; PermanentDeliveryError (`fcm.message_too_big`) when FCM would refuse its size."""
        title, body = delivery.content.get("title"), delivery.content.get("body")
        data = {key: _data_value(value) for key, value in ((delivery.content.get("params") or {}).get("data") or {}).items()}
        size = payload_bytes(title, body, data)
        if size > FCM_PAYLOAD_LIMIT:
            raise PermanentDeliveryError(DeliveryFailure("fcm.message_too_big", (
                f"the push is {size} bytes (title, body and params.data keys and values); FCM takes at most "
                f"{FCM_PAYLOAD_LIMIT}: shorten the template or the data"
            )))
        platforms = _platform_options(collapse_key(delivery), _lifespan(delivery, utcnow()))
        # firebase-admin 7.7 deprecates `token` in favour of Firebase
        # installation ids (`fid`); push_token identifiers are registration
        # tokens, which FCM v1 still takes in `token`.
        return [messaging.Message(token=token, notification=messaging.Notification(title=title, body=body), data=data,
                                  **platforms) for token in tokens]

    def _send_one(self, token: str, message: messaging.Message) -> str | TokenFailure:
        """The message id, or why the device was not reached; never raises, so one device's failure cannot
        hide the others' results."""
        try:
            return messaging.send(message, app=self.app)
        except Exception as exc:  # judged per token: see `send`
            return fcm_errors.failure(token, exc)

    def _forget(self, tokens: list[str], reason: str) -> None:
        if self.forget_tokens is None:
            return
        try:
            self.forget_tokens(tokens, reason)
        except Exception:  # the send already happened: failing it now would notify the live devices again
            log.exception("could not forget dead push tokens; FCM will report them again", tokens=len(tokens))

    def close(self) -> None:
        firebase_admin.delete_app(self.app)


def _tokens(delivery: Delivery) -> list[str]:
    return list(delivery.content.get("recipients") or [delivery.target])


def collapse_key(delivery: Delivery) -> str | None:
    """What the push replaces on the device: the action's ``params.collapse_key``, else its rule's id (at most
    `COLLAPSE_KEY_BYTES`; a rule id is ASCII). Without one, a retried or replayed push, or the rule's next nudge
    to the person, stacked beside the one shown as a second notification."""
    given = (delivery.content.get("params") or {}).get("collapse_key")
    return given or (delivery.content.get("rule_id") or "")[:COLLAPSE_KEY_BYTES] or None


def _lifespan(delivery: Delivery, now: datetime) -> tuple[int, datetime] | None:
    """How long FCM may keep the push for a device that is off, in whole seconds from `now` (0 past it, at most
    FCM's 28 days), and until when: until the send-by time routing gave it (`SEND_BY`), after which the hub itself
    would no longer send it; None when routing gave it none."""
    send_by = delivery.content.get(SEND_BY)
    if send_by is None:
        return None
    until = datetime.fromisoformat(send_by)
    return min(max(0, math.floor((until - now).total_seconds())), FCM_MAX_TTL_SECONDS), until


def _platform_options(key: str | None, life: tuple[int, datetime] | None) -> dict[str, Any]:
    """The platform options of a push, as `messaging.Message` arguments: one config per platform, so both
    collapsing (`key`) and the lifespan (`life`) go into the same one, which neither may build alone.

    Collapsing: on Android the notification's ``tag`` replaces the one shown
    and ``collapse_key`` keeps only the last while the device is offline; on
    iOS the ``apns-collapse-id`` header does both. Lifespan: Android's
    ``ttl``, the web's ``TTL`` header (seconds), and APNs' ``apns-expiration``
    (epoch seconds; 0, "try once, keep nothing", once the time has passed).
    """
    android: dict[str, Any] = {}
    apns: dict[str, str] = {}
    webpush: dict[str, str] = {}
    if key is not None:
        android.update(collapse_key=key, notification=messaging.AndroidNotification(tag=key))
        apns["apns-collapse-id"] = key
    if life is not None:
        seconds, until = life
        android["ttl"] = seconds  # firebase-admin sends it as FCM's duration text, "3600s"
        apns["apns-expiration"] = str(math.floor(until.timestamp()) if seconds else 0)
        webpush["TTL"] = str(seconds)
    options: dict[str, Any] = {}
    if android:
        options["android"] = messaging.AndroidConfig(**android)
    if apns:
        options["apns"] = messaging.APNSConfig(headers=apns)
    if webpush:
        options["webpush"] = messaging.WebpushConfig(headers=webpush)
    return options


def payload_bytes(title: str | None, body: str | None, data: Mapping[str, str]) -> int:
    """A message's size as counted against FCM's 4096-byte limit: the UTF-8 bytes of the data keys and values
    plus the notification's title and body.

    FCM documents the limit as "the total size of the payload data ... both
    the keys and the values" and no more precisely. This count leaves out
    what FCM adds or wraps around it (its own keys on Android, the APNs JSON
    on iOS), so it is never more than FCM's: a message refused here FCM
    would refuse too, and one FCM still refuses below it fails as a message
    problem (a bare INVALID_ARGUMENT, `fcm_errors`) with the tokens kept.
    """
    texts = [*data.keys(), *data.values(), title or "", body or ""]
    return sum(len(text.encode("utf-8")) for text in texts)


def _data_value(value: Any) -> str:
    """An FCM data value, which must be a string: a string as it is, anything else as JSON (``true``, ``null``,
    ``7``, ``{"id":7}``), which the apps' platforms all parse; compact, since the payload is limited."""
    if isinstance(value, str):
        return value
    return _DATA_ENCODER.encode(value)


def _params_problems(params: Mapping[str, Any]) -> list[str]:
    """What in ``params`` FCM or APNs can never take, each as ``params.<key>...: <reason>``."""
    problems = _data_problems(params)
    if (why := _collapse_key_problem(params.get("collapse_key"))) is not None:
        problems.append(f"params.collapse_key: {why}")
    return problems


def _collapse_key_problem(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip():
        return "must be text naming what a push replaces on the device (e.g. cart_nudge)"
    size = len(key.encode("utf-8"))
    if size > COLLAPSE_KEY_BYTES:
        return f"is {size} bytes; APNs takes at most {COLLAPSE_KEY_BYTES} (apns-collapse-id): shorten it"
    return None


def _data_problems(params: Mapping[str, Any]) -> list[str]:
    """What in ``params.data`` FCM can never take, each as ``params.data...: <reason>``."""
    data = params.get("data")
    if data is None:
        return []
    if not isinstance(data, Mapping):
        return ["params.data: must be a map of key: value (FCM data)"]
    problems: list[str] = []
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"params.data: key {key!r} is not text: quote it")
            continue
        if RESERVED_DATA_KEY.match(key):
            problems.append(f"params.data.{key}: FCM reserves this key (from, message_type, notification, "
                            f"google*, gcm*): rename it")
        if why := no_json_form(value):
            problems.append(f"params.data.{key}: {why}")
    return problems
