"""Segment's `writeKey` in the body: taken as the write key, and never kept.

The write key of the SDK endpoints comes as HTTP Basic auth (the key as user
name) or, as Segment's HTTP API also allows, as a `writeKey` field of the
JSON body (analytics-clj, Analytics.NET and hand-rolled clients send it in
every message). Either way the source checks it against the key's digest,
and it is taken out of the body before anything is parsed, stored or
quarantined: API keys are kept hashed at rest.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from dataclasses import replace
from typing import Any

from connectors.base import InboundRequest
from connectors.sources.segment import basic_auth_user
from connectors.webhooks import json_value
from hub.errors import AuthenticationError, BadPayloadError
from hub.utf8 import has_utf8_form

WRITE_KEY_FIELD = "writeKey"
REDACTED = "[redacted]"
# A writeKey's value in a body that is not valid JSON (kept whole in quarantine), a cut-off value included.
_WRITE_KEY_TEXT = re.compile(rb'("writeKey"\s*:\s*)"(?:[^"\\]|\\.)*(?:"|\\?$)')
_REDACTED_VALUE = rb'\1"' + REDACTED.encode() + rb'"'


def without_write_keys(inbound: InboundRequest) -> tuple[set[str], InboundRequest]:
    """The write keys the body carries, and the request with every `writeKey` field taken out of its body.

    The field is looked for at the top level of the body (a batch, the one
    message of /v1/track, ..., or each object of a top-level array) and at
    the top level of each message of a batch. A JSON body loses the fields
    (re-serialised, only when it had one, with non-ASCII characters escaped
    so that lone surrogates and UTF-16 or -32 bodies come out as the same
    JSON); a body that is not JSON, quarantined as it came, keeps them with
    their values replaced by "[redacted]". So does a body nested deeper than
    the json module writes back (~1,000 levels), but its keys are read: the
    sender is told what is wrong with the body, not that its key is missing
    (the source takes each message as deep as it may go). Only a
    body that names the field (in its bytes, or in the text of a UTF-16 or
    -32 body) is parsed here, so Basic-auth senders pay nothing; no SDK
    spells the name with JSON escapes.
    """
    encoding = json.detect_encoding(inbound.body)  # as json.loads reads the body: UTF-8, -16 or -32
    if not _names_write_key(inbound.body, encoding):
        return set(), inbound
    try:
        document = json_value(inbound.body)
    except BadPayloadError:
        return set(), replace(inbound, body=_redacted(inbound.body, encoding))
    holders = _write_key_holders(document)
    found = [holder.pop(WRITE_KEY_FIELD) for holder in holders if WRITE_KEY_FIELD in holder]
    if not found:
        return set(), inbound
    keys = {key for key in found if _usable_key(key)}
    try:
        stripped = json.dumps(document).encode("ascii")
    except RecursionError:  # read by orjson (1,024 levels), past what json writes: the ingest route refuses it whole
        stripped = _redacted(inbound.body, encoding)
    return keys, replace(inbound, body=stripped)


def _names_write_key(body: bytes, encoding: str) -> bool:
    """Whether the body spells the field's name, in UTF-8 bytes or, for a UTF-16 or -32 body, in its text."""
    if WRITE_KEY_FIELD.encode() in body:
        return True
    return not encoding.startswith("utf-8") and WRITE_KEY_FIELD in body.decode(encoding, "replace")


def _write_key_holders(document: Any) -> list[dict[str, Any]]:
    """The objects a `writeKey` field may sit in: the body, each object of a top-level array, each message of a batch."""
    if isinstance(document, list):
        return [item for item in document if isinstance(item, dict)]
    if not isinstance(document, dict):
        return []
    batch = document.get("batch")
    return [document, *(item for item in batch if isinstance(item, dict))] if isinstance(batch, list) else [document]


def _redacted(body: bytes, encoding: str) -> bytes:
    """A body that is not JSON with each writeKey value replaced; a UTF-16 or -32 one that names it, as UTF-8."""
    body = _WRITE_KEY_TEXT.sub(_REDACTED_VALUE, body)
    if encoding.startswith("utf-8") or WRITE_KEY_FIELD not in (text := body.decode(encoding, "replace")):
        return body
    return _WRITE_KEY_TEXT.sub(_REDACTED_VALUE, text.encode("utf-8", "replace"))


def credentials(inbound: InboundRequest, body_keys: set[str]) -> InboundRequest:
    """The request as the source authenticates it: the body's write key, if any, as its Basic auth.

    A key in both the Authorization header and the body must be the same key,
    and so must the keys of a batch's messages: a mismatch is refused (401,
    naming it) rather than settled for one side, as Segment settles it for
    the body. Two different keys mean a misconfigured client or proxy;
    picking either could file the events under a source the operator did not
    mean (two sources may each have a valid key), or let whatever can add a
    JSON field override the transport's credential. The source then checks
    the key against its digest in constant time, as it does a header's, so a
    wrong or missing key is the same 401 with the same message. A body over
    the size limit is refused (413) while it is read, before any key, header
    or body, is looked at.
    """
    if not body_keys:
        return inbound
    if len(body_keys) > 1:
        raise AuthenticationError("conflicting write keys: the body's messages carry different writeKey values")
    [body_key] = body_keys
    header_key = basic_auth_user(inbound.headers.get("authorization", ""))
    if header_key is not None and not hmac.compare_digest(header_key.encode(), body_key.encode()):
        raise AuthenticationError(
            "conflicting write keys: the Authorization header and the body's writeKey differ; send one key"
        )
    basic = base64.b64encode(f"{body_key}:".encode()).decode("ascii")
    return replace(inbound, headers={**inbound.headers, "authorization": f"Basic {basic}"})


def _usable_key(key: Any) -> bool:
    """A key the source can check: non-empty text with a UTF-8 form (a lone surrogate has none). Any other
    is no key, so the request is the 401 a missing key gets, not a 500."""
    return isinstance(key, str) and bool(key) and has_utf8_form(key)
