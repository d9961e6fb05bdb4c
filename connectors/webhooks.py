"""Building blocks webhook sources stack: HMAC signatures, replay windows, JSON event lists.

Each vendor signs differently (which bytes, which hash, hex or base64, which
header), but the checks are the same few steps; sources compose these instead
of repeating them. Every failure raises `AuthenticationError` (401) or
`BadPayloadError` (400) with a message that tells the sender what to fix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal

import orjson
from jmespath.parser import ParsedResult
from pydantic import SecretStr

from connectors.base import ParseResult, RejectedItem
from hub.errors import AuthenticationError, BadPayloadError, ItemProblem
from hub.model import RawEvent
from hub.paths import DATA_ERRORS
from hub.signing_secrets import in_use
from hub.store import json_text

Algorithm = Literal["sha1", "sha256", "sha512"]
Encoding = Literal["hex", "base64"]
# Unix time as vendors send it: whole seconds or milliseconds, ASCII digits only (float() would also take
# "nan", "inf", "1e9", "1_700_000_000" and non-ASCII digits); 15 digits reach far beyond any real clock.
_UNIX_TIME = re.compile(r"[0-9]{1,15}")
# Characters valid in a JSON string that no store holds in text: NUL (PostgreSQL's text type refuses it) and lone
# UTF-16 surrogates (no UTF-8 form, so neither sqlite3 nor psycopg can send them).
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
# How a UTF-8 body spells one: the escape \u0000, a surrogate's escape \ud800-\udfff (paired ones, which are fine,
# match too), or a surrogate's three UTF-8-like bytes (0xED 0xA0-0xBF), which json.loads takes ("surrogatepass").
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_SURROGATE_BYTES = re.compile(rb"\xed[\xa0-\xbf]")
_NUL_ESCAPE = b"\\u0000"  # how orjson writes NUL
MAX_MESSAGE_ID = 200  # characters: the width of the inbox's message_id column
# Levels of objects and arrays inside each other one message or event may have (itself level 1, wherever it sits in
# the body): Segment-spec payloads nest about 5 deep and vendors' webhooks about 10. README's bad-input table says it.
MAX_JSON_DEPTH = 64
TOO_DEEP = f"is nested deeper than {MAX_JSON_DEPTH} levels of objects and arrays, the most the hub takes; flatten the payload"


def sign(secret: bytes, algorithm: Algorithm, message: bytes, encoding: Encoding) -> str:
    digest = hmac.new(secret, message, getattr(hashlib, algorithm)).digest()
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode("ascii")


def require_header(headers: dict[str, str] | Any, name: str) -> str:
    value = headers.get(name.lower(), "").strip()
    if not value:
        raise AuthenticationError(f"missing {name} header: the request carries no signature or token")
    return value


# The `previous_*` settings of sources that sign: what lets a sender rotate its secret without refused requests.
PREVIOUS_SECRET_HELP = (
    "The secret being rotated out: requests signed with it are accepted too, until you remove it "
    "(once the sender signs with the new one)."
)


def secrets_in_use(current: SecretStr | None, previous: SecretStr | None) -> list[bytes]:
    """The HMAC keys a signature may be made with (`hub.signing_secrets.in_use`: never an empty one)."""
    return [secret.encode() for secret in in_use(current, previous)]


def check_signature(expected: Iterable[str], presented: list[str], header: str) -> None:
    """Accept when any presented signature is one expected (by the current secret or, during a rotation, the
    previous one); each compared in constant time."""
    if not any(hmac.compare_digest(wanted.encode(), candidate.encode()) for wanted in expected for candidate in presented):
        raise AuthenticationError(f"{header}: signature does not match; check the signing secret")


def check_timestamp(value: str, header: str, now: datetime, tolerance_seconds: float, *, milliseconds: bool = False) -> None:
    """Refuse a request signed too long ago or too far in the future (a replayed or forged request).

    Only a whole number of seconds (or milliseconds) is a timestamp: "nan"
    would otherwise be inside every window, as no difference compares
    greater than the tolerance.
    """
    if not _UNIX_TIME.fullmatch(value):
        raise AuthenticationError(f"{header}: {value!r} is not a Unix timestamp")
    sent = int(value) / (1000 if milliseconds else 1)
    skew = now.timestamp() - sent
    if abs(skew) > tolerance_seconds:
        direction = "old" if skew > 0 else "far in the future"
        raise AuthenticationError(
            f"{header}: timestamp is {abs(skew):.0f} s {direction}, outside the {tolerance_seconds:.0f} s replay window"
        )


class _NotJson(ValueError):
    """A value json.loads would take but JSON (RFC 8259) has no place for."""


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value; RFC 8259 has no NaN or Infinity")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: read as inf, stored as Infinity, which no JSON column takes
        raise _NotJson(f"the number {text[:40]} is too large for a double-precision float")
    return value


def json_document(body: bytes) -> Any:
    """The body as JSON (`json_value`), refused when it nests deeper than `MAX_JSON_DEPTH`: for a body that is one
    document (an admin request, a webhook of one event). A body of many messages or events is read with
    `json_value` and each item counts its own levels (`depth_problem`), as it does alone."""
    document = json_value(body)
    if may_nest_too_deep(body, document):
        refuse_deep_envelope(document, [])
    return document


def json_value(body: bytes) -> Any:
    """The body as JSON (`_strict_document`'s reading) whatever its depth, by orjson where it reads what the json
    module would: a hook per float made every request 1.2x slower to parse."""
    return json_text.loads_bytes(body, _strict_document)


def may_nest_too_deep(body: bytes, document: Any) -> bool:
    """Whether an object or array of `document` (read from `body`) may sit more than `MAX_JSON_DEPTH` levels below
    the body: only then are its envelope and items looked at (`refuse_deep_envelope`, `depth_problem`), as
    `may_hold_unstorable_text` gates `text_problem`.

    Why a limit: the admin API's answers (pydantic) give up past 255 levels
    and the json module's writer at Python's recursion limit, so one event
    nested 300 deep made every page showing it a 500. Kept cheap: a body
    with no more '[' and '{' bytes than the limit cannot nest past it (two
    byte counts: a single message, a small batch); any other is cleared by
    orjson, in C (`_within_limit`); an item is at least as shallow as its body.
    """
    return body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and not _within_limit(document)


def refuse_deep_envelope(document: Any, items: list[Any]) -> None:
    """Refuse (`BadPayloadError` naming the path) a body whose envelope, all of it but `items`, nests deeper than
    `MAX_JSON_DEPTH`: the items count their own levels (`depth_problem`) and are refused one by one."""
    path = _first_too_deep(document, {id(item) for item in items})
    if path is not None:
        raise BadPayloadError(f"body: {path} {TOO_DEEP}")


def depth_problem(index: int | None, item: dict[str, Any] | list[Any]) -> ItemProblem | None:
    """The problem naming the first object or array of `item` more than `MAX_JSON_DEPTH` levels below it, if any.

    Counted from the item, so a message has as many levels in a batch as
    alone (/v1/track); refused here, it goes to quarantine with its path
    named and its neighbours are kept, as a 400 would lose them all (SDKs
    do not resend a 400).
    """
    path = None if _within_limit(item) else _first_too_deep(item, set())
    return None if path is None else ItemProblem(index, path, TOO_DEEP)


def storage_problem(
    index: int | None, item: dict[str, Any] | list[Any], *, check_text: bool, check_depth: bool
) -> ItemProblem | None:
    """What keeps an item out of every store: nesting past the limit (`depth_problem`) or text no store holds
    (`text_problem`), each looked for only where its body's gate (`may_nest_too_deep`,
    `may_hold_unstorable_text`) says it may be."""
    return (depth_problem(index, item) if check_depth else None) or (text_problem(index, item) if check_text else None)


def _orjson_depth() -> int | None:
    """How many levels of arrays orjson writes before it refuses (254 in orjson 3.13); None if it writes 1,024,
    as releases before 3.11.5 did (CVE-2025-67221): then `_within_limit` clears nothing. Measured once, as orjson
    documents no such limit."""
    value: Any = []
    for depth in range(1, 1025):
        try:
            orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError
            return depth - 1
        value = [value]
    return None


_ORJSON_DEPTH = _orjson_depth()


def _within_limit(document: Any) -> bool:
    """Whether orjson writes `document` under as many enclosing arrays as take it to orjson's own limit: then it
    nests at most `MAX_JSON_DEPTH` deep. A 500-message batch (200 KB, parsed in 2 ms) is cleared in 0.3 ms, where a
    walk in Python takes 3 ms. False when orjson has no limit or refuses for another reason (an integer beyond 64
    bits, a lone surrogate): the walk decides."""
    if _ORJSON_DEPTH is None:
        return False
    for _ in range(_ORJSON_DEPTH - MAX_JSON_DEPTH):
        document = [document]
    try:
        orjson.dumps(document)
    except TypeError:
        return False
    return True


def _first_too_deep(document: Any, items: set[int]) -> str | None:
    """The path (as problems name fields) of the first object or array nested past `MAX_JSON_DEPTH`, in the
    document's order; objects and arrays whose id is in `items` are not entered, as they count their own levels.
    A loop over a stack: the parsers take nesting deeper than Python's recursion limit."""
    stack: list[tuple[str, Any, int]] = [] if id(document) in items else [("", document, 1)]
    while stack:
        path, node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return path
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        inside = [
            (_joined(path, _storable(key)), child)
            for key, child in pairs
            if isinstance(child, (dict, list)) and id(child) not in items
        ]
        stack.extend((child_path, child, depth + 1) for child_path, child in reversed(inside))
    return None


def _strict_document(body: bytes) -> Any:
    """The body as JSON (UTF-8, -16 or -32, as json.loads detects), or `BadPayloadError` naming why not.

    Stricter than json.loads: NaN, Infinity and numbers beyond a double are
    refused, as RFC 8259 and PostgreSQL's json column refuse them. Integers
    longer than Python converts and nesting deeper than the parser recurses
    are refused too, as the bad input they are, not left to become a 500.
    """
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        reason = "nested too deeply"
    except (json.JSONDecodeError, UnicodeDecodeError, _NotJson) as exc:
        reason = str(exc)
    except ValueError:  # int() over sys.get_int_max_str_digits(), the only other ValueError json.loads raises
        reason = f"a number has more than {sys.get_int_max_str_digits()} digits"
    raise BadPayloadError(f"body: not valid JSON ({reason})")


def payload_message_id(item: Any) -> str:
    """A canonical hash of the payload, for senders that give no id: resends still deduplicate."""
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def storable_message_id(sender_id: str) -> str:
    """The sender's message id as the inbox keys it: as sent, or beyond `MAX_MESSAGE_ID` characters a hash of all
    of it. Cut to the column's width instead, two ids sharing their first 200 characters were one message: the
    second acknowledged, then dropped as a duplicate."""
    if len(sender_id) <= MAX_MESSAGE_ID:
        return sender_id
    return "sha256:" + hashlib.sha256(sender_id.encode()).hexdigest()


def may_hold_unstorable_text(body: bytes) -> bool:
    """Whether a string of this JSON body may hold a character no store can hold, judged from its bytes alone.

    Most bodies are cleared by two byte searches (no backslash, no 0xED) in 0.1% of a 500-message batch's
    parse; others by a regular expression, in 1-2%. Only the rest have their items checked by `text_problem`.
    """
    if not json.detect_encoding(body).startswith("utf-8"):
        return True  # UTF-16 or -32: these bytes do not spell the escapes as searched for below
    if b"\xed" in body and _SURROGATE_BYTES.search(body):
        return True
    return b"\\" in body and _UNSTORABLE_ESCAPE.search(body) is not None


def text_problem(index: int | None, item: dict[str, Any] | list[Any]) -> ItemProblem | None:
    """The problem naming the first string or key of `item` that no store can hold, if it has one.

    JSON may carry "\\u0000" or a lone "\\ud800" in any string. Taken in as a message id, either failed the
    inbox insert: a 500 that lost the whole request, which SDKs resend for ever. In an event name or an
    identifier, it failed every pipeline attempt at the touchpoint or identity tables. Refused here, the item
    goes to quarantine with its path named, and its neighbours are kept.
    """
    found = None if _serializes_cleanly(item) else _first_unstorable(item)
    if found is None:
        return None
    path, character = found
    if character == "\x00":
        return ItemProblem(index, path, "contains \\u0000 (NUL), which the hub cannot store; remove it")
    return ItemProblem(index, path, f"contains \\u{ord(character):04x}, half of a UTF-16 surrogate pair without "
                                    "its other half, which is not text; send the whole character or remove it")


def _serializes_cleanly(item: dict[str, Any] | list[Any]) -> bool:
    """Whether orjson writes `item` without NUL and without refusing a lone surrogate: the common answer, yes, at a
    sixth of the cost of `_first_unstorable`'s walk (0.7 ms for a 500-message batch, against 4 ms). No is not
    certain (an integer beyond 64 bits, nesting past 255 levels, the text "\\u0000"): the walk decides."""
    try:
        return _NUL_ESCAPE not in orjson.dumps(item)
    except TypeError:  # orjson.JSONEncodeError
        return False


def _first_unstorable(value: dict[str, Any] | list[Any]) -> tuple[str, str] | None:
    """(path, character) of the first string or key found holding a character no store can hold.

    A loop over a stack, not recursion: the parsers take nesting deeper than Python's recursion limit.
    """
    stack: list[tuple[str, dict[str, Any] | list[Any]]] = [("", value)]
    while stack:
        path, node = stack.pop()
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(key, str) and (character := _unstorable_character(key)):
                return _joined(path, _storable(key)), character
            if isinstance(child, str):
                if character := _unstorable_character(child):
                    return _joined(path, key), character
            elif isinstance(child, (dict, list)):
                stack.append((_joined(path, key), child))
    return None


def _unstorable_character(text: str) -> str | None:
    if "\x00" in text:
        return "\x00"
    if text.isascii():  # O(1) in CPython: most strings end here
        return None
    found = _UNSTORABLE_CHARACTER.search(text)
    return found[0] if found else None


def _joined(path: str, key: str | int) -> str:
    """A field path as problems name it: ``properties.items[2].name``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _storable(key: str | int) -> str | int:
    """A key as a stored problem may name it: a character no store holds written as its JSON escape."""
    return _UNSTORABLE_CHARACTER.sub(_escape, key) if isinstance(key, str) else key


def _escape(match: re.Match[str]) -> str:
    """A character no store holds, written as its JSON escape, so a problem naming it can be stored."""
    return f"\\u{ord(match[0]):04x}"


def json_events(
    source_id: str, document: Any, *, events: ParsedResult | None, message_id: ParsedResult | None,
    received_at: str, transform: Callable[[int, dict[str, Any]], dict[str, Any] | ItemProblem] | None = None,
    check_text: bool = True, check_depth: bool = True,
) -> ParseResult:
    """Events from a JSON document: the list `events` selects (or the document itself), one per object.

    Each kept payload gains `receivedAt` (the hub's time) unless the sender gave
    its own (RudderStack's is when its server took the event in, perhaps hours
    before a retried forward), so a mapping can fall back on it when the vendor
    sends no event time. `transform` may enrich an item or refuse it
    with an ItemProblem (kept for quarantine). An item's id is taken from the
    item as received, before `transform`: a resend is the same message however
    the enrichment has changed since. Items holding text no store can hold are
    refused (`text_problem`), and so are items nested too deep (`depth_problem`,
    each counted from the item; a body whose envelope nests too deep is a
    `BadPayloadError`); pass ``check_text=may_hold_unstorable_text(body)`` and
    ``check_depth=may_nest_too_deep(body, document)`` to skip those walks for
    the bodies that cannot need them. An `events` expression that fails on the
    body refuses it (`BadPayloadError`, quarantined); a `message_id` expression
    that fails on an item refuses that item.
    """
    selected = document if events is None else _selected(events, document)
    items = selected if isinstance(selected, list) else [selected]
    if check_depth:
        refuse_deep_envelope(document, items)
    result = ParseResult()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problem = ItemProblem(index, "(event)", f"expected a JSON object, got {type(item).__name__}")
            result.rejected.append(RejectedItem(item, [problem]))
            continue
        problem = storage_problem(index, item, check_text=check_text, check_depth=check_depth)
        outcome = problem or (transform(index, item) if transform is not None else item)
        if isinstance(outcome, ItemProblem):
            result.rejected.append(RejectedItem(item, [outcome]))
            continue
        identity = _message_id(index, item, message_id)
        if isinstance(identity, ItemProblem):
            result.rejected.append(RejectedItem(item, [identity]))
            continue
        result.events.append(RawEvent(source_id, storable_message_id(identity), {"receivedAt": received_at, **outcome}))
    if not result.events:
        raise BadPayloadError("no event object in the request", result.problems)
    return result


def _selected(events: ParsedResult, document: Any) -> Any:
    """What the source's `events` expression selects from the body. A function given data it does not take
    (`sort_by` over numbers and strings) raised out of parse(): a 500 the sender retried for ever, nothing kept."""
    try:
        return events.search(document)
    except DATA_ERRORS as exc:
        raise BadPayloadError(f"events: {events.expression!r} failed on this body: {exc}; "
                              "change the source's `events` setting in sources.yaml to suit it") from None


def _message_id(index: int, item: dict[str, Any], message_id: ParsedResult | None) -> str | ItemProblem:
    """The item's id: what the source's `message_id` expression finds, else a hash of the item as received. An
    expression failing on the item's data (`join` of a number) refuses that item alone, where it was a 500 for
    the whole request."""
    if message_id is None:
        return payload_message_id(item)
    try:
        found = message_id.search(item)
    except DATA_ERRORS as exc:
        return ItemProblem(index, "message_id", f"{message_id.expression!r} failed on this event: {exc}; "
                                                "change the source's `message_id` setting in sources.yaml to suit it")
    return str(found) if isinstance(found, (str, int)) and str(found) else payload_message_id(item)
