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
from connectors.webhooks import json_items_value
from hub.errors import AuthenticationError, BadPayloadError
from hub.utf8 import has_utf8_form

WRITE_KEY_FIELD = "writeKey"
REDACTED = "[redacted]"
_CHARACTERS = rb'(?:[^"\\]|\\.)*'  # of a JSON string, between its quotes
# A writeKey's value in a body that is not valid JSON (kept whole in quarantine), a cut-off value included.
_WRITE_KEY_TEXT = re.compile(rb'("writeKey"\s*:\s*)("' + _CHARACTERS + rb'(?:"|\\?$))')
_REDACTED_VALUE = rb'\1"' + REDACTED.encode() + rb'"'
# A writeKey member of a JSON body: its name, its value (a string, or a number, true, false or null) and the comma
# after it, if any. Starting with the name, the search runs at memchr speed: a leading `,\s*` or a lookbehind made
# it 20-40 times slower, longer than parsing the body (`_without_members` looks behind instead).
_WRITE_KEY_MEMBER = re.compile(rb'"writeKey"\s*:\s*(?:"' + _CHARACTERS + rb'"|[-+.\w]+)(\s*,)?')
_JSON_SPACE = b" \t\r\n"
UNSPELLED_KEY = "writeKey: send it as a string under that very name (no escapes in it), or as HTTP Basic auth"


def without_write_keys(inbound: InboundRequest) -> tuple[set[str], InboundRequest]:
    """The write keys the body carries, and the request with every `writeKey` field taken out of its body.

    The keys are the field's values at the top level of the body (a batch,
    the one message of /v1/track, ..., or each object of a top-level array)
    and at the top level of each message of a batch, read as `json_items_value`
    reads the body, so that a number beyond a double refuses only its message,
    as with Basic auth. The fields are cut out of the body's bytes (at any
    depth: bytes tell none), which go on otherwise as sent (a UTF-16 or -32
    body is cut in its UTF-8 form and written back): re-serialised, a 1e400
    became Infinity, which refused the whole batch. A body that is not JSON is quarantined as it came but for
    each writeKey value, replaced by "[redacted]", and its keys are read from
    its text, so the sender is told what is wrong with the body (400), not
    that its key is missing; the source checks each key all the same. Only a
    body that names the field (in its bytes, or in the text of a UTF-16 or -32
    body) is read here, so Basic-auth senders pay nothing; no SDK spells the
    name with JSON escapes, and a body whose key is found only so is refused.
    """
    encoding = json.detect_encoding(inbound.body)  # as json.loads reads the body: UTF-8, -16 or -32
    if not _names_write_key(inbound.body, encoding):
        return set(), inbound
    try:
        document, _beyond_double = json_items_value(inbound.body)
    except BadPayloadError:
        return _text_keys(inbound.body, encoding), replace(inbound, body=_redacted(inbound.body, encoding))
    found = [holder[WRITE_KEY_FIELD] for holder in _write_key_holders(document) if WRITE_KEY_FIELD in holder]
    if not found:
        return set(), inbound
    return {key for key in found if _usable_key(key)}, replace(inbound, body=_cut(inbound.body, encoding, len(found)))


def _cut(body: bytes, encoding: str, members: int) -> bytes:
    """The body without its writeKey members, all else byte for byte as sent; refused (400) when fewer than the
    `members` the parse found are spelled plainly (a value that is an object, a name with escapes), as no other
    way of taking them out would leave the body as sent."""
    if encoding.startswith("utf-8"):
        cut, count = _without_members(body)
    else:  # surrogates pass through both ways: the source refuses a lone one naming its field, as with Basic auth
        utf8, count = _without_members(body.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass"))
        cut = utf8.decode("utf-8", "surrogatepass").encode(encoding, "surrogatepass")
    if count < members:
        raise BadPayloadError(UNSPELLED_KEY)
    return cut


def _without_members(body: bytes) -> tuple[bytes, int]:
    """`body` with each writeKey member cut out, and how many were. A member with no comma after it (the last of
    its object) takes the comma before it. A name after a backslash is inside a string: only a string holds one."""
    pieces: list[bytes] = []
    kept_from = count = 0
    for match in _WRITE_KEY_MEMBER.finditer(body):
        start = match.start()
        if body[start - 1:start] == b"\\":
            continue
        pieces.append(body[kept_from:start if match[1] else _comma_before(body, start)])
        kept_from, count = match.end(), count + 1
    pieces.append(body[kept_from:])
    return b"".join(pieces), count


def _comma_before(body: bytes, start: int) -> int:
    """Where the comma before `start` is, past JSON whitespace; `start` when there is none (an object's only member)."""
    before = start
    while before and body[before - 1] in _JSON_SPACE:
        before -= 1
    return before - 1 if before and body[before - 1] == ord(",") else start


def _text_keys(body: bytes, encoding: str) -> set[str]:
    """The usable writeKey values a body that is not JSON spells out whole (a cut-off one is no key)."""
    text = body if encoding.startswith("utf-8") else body.decode(encoding, "replace").encode("utf-8", "replace")
    return {key for match in _WRITE_KEY_TEXT.finditer(text) if _usable_key(key := _string_value(match[2]))}


def _string_value(literal: bytes) -> str | None:
    """A JSON string literal's text, or None for one cut off or badly escaped."""
    try:
        return json.loads(literal)
    except ValueError:
        return None


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
