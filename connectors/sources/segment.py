"""Segment-spec ingest: what analytics.js, analytics-python and RudderStack SDKs send.

Spec: https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/
The SDKs authenticate with HTTP Basic auth, the source's write key as user
name and an empty password. A batch is ``{"batch": [message, ...]}``; the
single-message endpoints (/v1/track, ...) take one message whose type is
implied by the path.

Segment's Webhooks destination posts one message per request to
``/v1/webhooks/{source_id}``; Webhooks (Actions) with batching on (its
``Send`` action, 1000 events a request by default) posts a bare JSON array of
messages there instead, which the hub takes as a batch. With a shared secret
configured either signs the body in ``X-Signature`` (hex HMAC-SHA1). That
signature covers no timestamp, so replays are stopped by the messageId
deduplication of the inbox instead.
A source configured with only a shared secret takes signed requests only, and
does not answer the SDK endpoints. A message's times, and their correction
for the device's clock, are `segment_times`'.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors.base import (
    InboundRequest,
    ParseResult,
    RejectedItem,
    Source,
    matches_digest,
    secret_digest,
)
from connectors.sources.segment_times import batch_sent_at, is_timestamp, latest_if_ahead, skew_corrected
from connectors.storable_json import refuse_deep_envelope, storage_problem
from connectors.webhooks import (
    MAX_MESSAGE_ID,
    PREVIOUS_SECRET_HELP,
    StorageChecks,
    check_signature,
    json_items,
    lower_case_hex,
    numbered_copy,
    payload_message_id,
    require_header,
    secrets_in_use,
    sign,
)
from hub.errors import AuthenticationError, BadPayloadError, ItemProblem
from hub.model import RawEvent
from hub.settings import PROJECT_MAPPINGS
from hub.signing_secrets import CurrentSecret

MESSAGE_TYPES = ("track", "identify", "page", "screen", "alias", "group")
MISSING_WRITE_KEY = "missing write key: send HTTP Basic auth with the write key as user name, or a writeKey field in the body"
TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt")
OBJECT_FIELDS = ("properties", "traits", "context")
# Fields each message type cannot do without, beyond the user/anonymous id.
REQUIRED_BY_TYPE = {"track": "event", "alias": "previousId", "group": "groupId"}
# analytics.js (@segment/analytics-next) pointed at the hub with `apiHost` posts each call to the first letter of
# its type, and a batch to /b, as text/plain with the writeKey in the body: last path segment -> message type,
# None for a batch. hub/api/ingest.py serves /v1/<key> for each key.
ANALYTICS_JS_PATHS: dict[str, str | None] = {
    "t": "track", "p": "page", "i": "identify", "a": "alias", "g": "group", "s": "screen", "b": None,
}
# What a batch may carry for all its messages (Segment's batch API, analytics-java), each message's own values
# winning key by key.
BATCH_SHARED_FIELDS = ("context", "integrations")
# Fields about one sending of a message, not the message: a resend (an SDK's retry) changes them.
TRANSPORT_FIELDS = frozenset({"sentAt", "receivedAt", "writeKey", "_metadata"})
# Who sent a message from the person's own device, whose address is the person's: Segment's client libraries by
# `context.library.name`, RudderStack's SDKs by the `channel` they set (web, mobile; server for their server SDKs),
# and any sender by `context.direct: true`, as Segment's HTTP API docs tell a device calling it directly to say.
CLIENT_LIBRARIES = frozenset({"analytics.js", "analytics-ios", "analytics-android", "analytics-kotlin",
                              "analytics-swift", "analytics-react-native", "analytics-xamarin"})
CLIENT_CHANNELS = frozenset({"web", "mobile"})


class SegmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    write_key: CurrentSecret | None = None
    shared_secret: CurrentSecret | None = None
    previous_shared_secret: SecretStr | None = Field(None, description=PREVIOUS_SECRET_HELP)

    @model_validator(mode="after")
    def _some_credential(self) -> "SegmentConfig":
        if self.write_key is None and self.shared_secret is None:
            raise ValueError("set write_key (SDK ingest), shared_secret (Webhooks destination) or both")
        if self.previous_shared_secret is not None and self.shared_secret is None:
            raise ValueError("previous_shared_secret is the one a rotation replaces: set shared_secret too")
        return self


class SegmentSource(Source):
    slug = "segment"
    title = "Segment-compatible HTTP API (Segment and RudderStack SDKs) and Segment Webhooks destination"
    docs_url = "https://segment.com/docs/connections/spec/"
    default_mapping = "segment.yaml"
    sdk_ingest = True
    Config = SegmentConfig

    def __init__(self, source_id: str, config: BaseModel, folder: Path = PROJECT_MAPPINGS) -> None:
        super().__init__(source_id, config, folder)
        assert isinstance(config, SegmentConfig)
        # What is kept of the write key: the hub matches SDK requests against it, and refuses two sources sharing one.
        self.write_key_digest = secret_digest(config.write_key.get_secret_value()) if config.write_key else None
        # Only a source with a write key answers the SDK endpoints; one with only a shared secret is a Webhooks
        # destination's, which signs every request instead.
        self.sdk_ingest = self.write_key_digest is not None
        self._shared_secrets = secrets_in_use(config.shared_secret, config.previous_shared_secret)

    def verify(self, request: InboundRequest) -> None:
        if self._shared_secrets and (self.write_key_digest is None or "x-signature" in request.headers):
            presented = lower_case_hex(require_header(request.headers, "X-Signature"))
            expected = [sign(secret, "sha1", request.body, "hex") for secret in self._shared_secrets]
            check_signature(expected, [presented], "X-Signature")
            return
        assert self.write_key_digest is not None  # the config holds a write key, a shared secret or both
        write_key = basic_auth_user(request.headers.get("authorization", ""))
        if write_key is None:
            raise AuthenticationError(MISSING_WRITE_KEY)
        if not matches_digest(write_key, self.write_key_digest):
            raise AuthenticationError("unknown write key: check the source's write key")

    def parse(self, request: InboundRequest) -> ParseResult:
        document, checks = _json_object(request.body, request.path)
        message_type = _message_type(request.path, document)
        if message_type is None:
            items = _batch_messages(document, checks["check_depth"])
        else:
            items = [{**document, "type": document.get("type") or message_type or None}]
        received_at = datetime.now(timezone.utc)
        sent_at = batch_sent_at(document) if message_type is None else None
        request_sent_at = sent_at or latest_if_ahead(items, received_at)
        result = ParseResult()
        content_ids: Counter[str] = Counter()  # ids made from content: identical messages of a batch are numbered
        for index, item in enumerate(items):
            taken = take_message(self.source_id, item, index if message_type is None else None, **checks)
            if isinstance(taken, RejectedItem):
                result.rejected.append(taken)
                continue
            where = index if message_type is None else None
            corrected = skew_corrected(item, item.get("sentAt") or request_sent_at, received_at, where)
            if isinstance(corrected, ItemProblem):
                result.rejected.append(RejectedItem(item, [corrected]))
                continue
            payload = _with_client_ip({**corrected, "receivedAt": received_at.isoformat()}, request.client_ip)
            message_id = taken.message_id if _sender_id(item) else numbered_copy(taken.message_id, content_ids)
            result.events.append(RawEvent(self.source_id, message_id, payload))
        if not result.events:
            raise BadPayloadError("no valid message in the request", result.problems)
        return result


def _with_client_ip(message: dict[str, Any], client_ip: str | None) -> dict[str, Any]:
    """The message with the request's address as `context.ip` when it was sent from the person's own device and
    has none, as Segment's servers fill it "for client side events only": analytics.js and the mobile SDKs leave
    it to them, and without it no destination could place the person. A server library's request comes from the
    sender's back end, whose address is no person's, so its messages are left as sent; an `ip` a message carries
    (`0.0.0.0` is how senders opt out) is never replaced. The address is uvicorn's: X-Forwarded-For counts only
    from the proxies in FORWARDED_ALLOW_IPS. The messageId the inbox deduplicates on was taken before, so a
    resend from elsewhere is still a duplicate."""
    context = message.get("context")
    if client_ip is None or not _sent_from_device(message, context) or (isinstance(context, dict) and context.get("ip")):
        return message
    # A new context: a batch's shared `context` is one object under all its messages.
    return {**message, "context": {**(context if isinstance(context, dict) else {}), "ip": client_ip}}


def _sent_from_device(message: dict[str, Any], context: Any) -> bool:
    if _one_of(message.get("channel"), CLIENT_CHANNELS):
        return True
    if not isinstance(context, dict):
        return False
    library = context.get("library")
    return context.get("direct") is True or _one_of(library.get("name") if isinstance(library, dict) else None,
                                                    CLIENT_LIBRARIES)


def _one_of(value: Any, names: frozenset[str]) -> bool:
    """`value in names` for any JSON value: a list or an object is no name, and no key of a set either."""
    return isinstance(value, str) and value in names


def take_message(
    source_id: str, item: Any, index: int | None = None, *, check_text: bool = True, check_depth: bool = True,
    check_numbers: bool = True,
) -> RawEvent | RejectedItem:
    """One message as the hub takes it in, under the id its inbox deduplicates on, or refused with every problem.

    `touchhub triggers test` takes the messages of its events file in here too,
    so it tries exactly what the hub would, and drops the same resends.
    `index` is the message's place in a batch, for the problems it names.
    `check_text` False skips looking for text no store can hold, for a body
    that `may_hold_unstorable_text` cleared; `check_depth` False skips
    looking for nesting too deep, for one `may_nest_too_deep` cleared;
    `check_numbers` False skips looking for a number beyond a double, for a
    body `json_items_value` read without one.
    """
    problems = _problems(index, item, check_text, check_depth, check_numbers)
    if problems:
        return RejectedItem(item, problems)
    return RawEvent(source_id, _message_id(item), item)


def _batch_messages(document: dict[str, Any], check_depth: bool) -> list[Any]:
    """The messages of a batch, each under the batch's own `context` and `integrations`: analytics-java sends the
    library's context (device id, push token) once, at the top of the batch, for every message in it."""
    batch = document.get("batch")
    if not isinstance(batch, list):
        raise BadPayloadError("batch: the body must be a JSON object with a 'batch' array of messages")
    if check_depth:
        refuse_deep_envelope(document, batch)
    return _under_batch_fields(document, batch)


def _under_batch_fields(document: dict[str, Any], batch: list[Any]) -> list[Any]:
    """Each message laid over the batch's `BATCH_SHARED_FIELDS`; the batch as it is when it has none (most)."""
    shared = {name: document[name] for name in BATCH_SHARED_FIELDS if document.get(name) is not None}
    if not shared:
        return batch
    for name, value in shared.items():
        if not isinstance(value, dict):
            raise BadPayloadError(f"{name}: the batch's {name} must be a JSON object; it applies to every message")
    return [_deep_merged(shared, item) if isinstance(item, dict) else item for item in batch]


def _deep_merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """`own` laid over `base`, objects merged key by key, so a message's own `context.device` keeps the batch's
    `context.library`."""
    merged = dict(base)
    for key, value in own.items():
        below = merged.get(key)
        if value is None and below is not None:
            continue  # null is absent, as for a message alone (`_problems`): the batch's value stands
        merged[key] = _deep_merged(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


def basic_auth_user(header: str) -> str | None:
    """The user name of an HTTP Basic Authorization header: where Segment SDKs send the write key."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, _, _password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


def _on_webhook_path(path: str) -> bool:
    """Whether the request came to /v1/webhooks/{source_id} rather than an SDK route."""
    return path.rstrip("/").rpartition("/")[0].endswith("/v1/webhooks")


def _message_type(path: str, document: dict[str, Any]) -> str | None:
    """None for a batch; otherwise the type the SDK route implies (/v1/track, analytics.js's /v1/t) or the message
    declares. Only a route right under /v1 names a type: under /v1/webhooks/ the last segment is a source's id,
    and a source may be called `batch` or `t`."""
    parent, _, last = path.rstrip("/").rpartition("/")
    if parent.endswith("/v1"):  # an SDK route
        if last in MESSAGE_TYPES:
            return last
        if last in ANALYTICS_JS_PATHS:
            return ANALYTICS_JS_PATHS[last]
        if last in ("batch", "import"):
            return None
    if "batch" in document:
        return None
    return str(document.get("type") or "")  # "" so a missing type is reported, not taken for a batch


def _json_object(body: bytes, path: str) -> tuple[dict[str, Any], StorageChecks]:
    """The body's object, and the checks its messages need (`json_items`): a number beyond a double, or nesting
    too deep, refuses the message holding it (`storage_problem`), in a batch as alone. A webhook's array is the
    batch Webhooks (Actions) sends (`performBatch` posts its events as one array, signed as one event is), taken
    as ``{"batch": [...]}`` so its messages are indexed and checked as a batch's; refused, every batch was a
    400. The SDK routes take objects only, as Segment's HTTP API does."""
    document, checks = json_items(body)
    if isinstance(document, list) and _on_webhook_path(path):
        return {"batch": document}, checks
    if not isinstance(document, dict):
        raise BadPayloadError(f"body: expected a JSON object, got {type(document).__name__}")
    return document, checks


def _problems(index: int | None, item: Any, check_text: bool, check_depth: bool, check_numbers: bool) -> list[ItemProblem]:
    """Everything wrong with one message, so the sender can fix it in one go."""
    if not isinstance(item, dict):
        return [ItemProblem(index, "(message)", f"expected a JSON object, got {type(item).__name__}")]
    problems = []
    kind = item.get("type")
    known = kind in MESSAGE_TYPES
    if not known:
        reason = "is required" if kind is None else f"{kind!r} is not one of {', '.join(MESSAGE_TYPES)}"
        problems.append(ItemProblem(index, "type", reason))
    if not _present(item.get("userId")) and not _present(item.get("anonymousId")):
        problems.append(ItemProblem(index, "userId", "either userId or anonymousId is required"))
    required = REQUIRED_BY_TYPE.get(kind) if known else None  # an object or array `type` is no key of a dict
    if required and not _present(item.get(required)):
        problems.append(ItemProblem(index, required, f"is required for {kind} messages"))
    elif required == "event" and (name_problem := _event_name_problem(item["event"])):
        problems.append(ItemProblem(index, "event", name_problem))
    for name in TIME_FIELDS:  # null is absent, as for the objects below
        if item.get(name) is not None and not is_timestamp(item[name]):
            problems.append(ItemProblem(index, name, f"{item[name]!r} is not an ISO-8601 timestamp"))
    for name in OBJECT_FIELDS:  # null is absent: SDKs in some languages send it for a map never set
        if item.get(name) is not None and not isinstance(item[name], dict):
            problems.append(ItemProblem(index, name, "must be a JSON object"))
    message_id = item.get("messageId")
    if message_id is not None and (not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID):
        problems.append(ItemProblem(index, "messageId", f"must be a string of 1 to {MAX_MESSAGE_ID} characters"))
    stored = storage_problem(index, item, check_text=check_text, check_depth=check_depth, check_numbers=check_numbers)
    return [*problems, stored] if stored else problems


def _event_name_problem(event: Any) -> str | None:
    """Why a track's `event` can be no event name, if it cannot: Segment's spec makes it text. Taken in, a number
    got its 200 and was quarantined by the pipeline: the sender was told it was kept. How long a name the hub
    keeps is the mapping's to judge (it trims the name, and a value map may shorten it: `normalize`)."""
    if not isinstance(event, str):
        return f"must be text, the event's name (got {type(event).__name__})"
    return None


def _present(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip() != ""


def _message_id(item: dict[str, Any]) -> str:
    """The sender's messageId, or a hash of the canonical message so resends still deduplicate: without the
    fields of its sending (`TRANSPORT_FIELDS`), as an SDK's retry of the event carries a new `sentAt`."""
    if _sender_id(item):
        return item["messageId"]
    return payload_message_id({key: value for key, value in item.items() if key not in TRANSPORT_FIELDS})


def _sender_id(item: dict[str, Any]) -> bool:
    """Whether the message carries its own messageId (else its id is made from its content)."""
    return isinstance(item.get("messageId"), str)
