"""Building blocks webhook sources stack: HMAC signatures, replay windows, JSON event lists.

Each vendor signs differently (which bytes, which hash, hex or base64, which
header), but the checks are the same few steps; sources compose these instead
of repeating them. Every failure raises `AuthenticationError` (401) or
`BadPayloadError` (400) with a message that tells the sender what to fix.
What of a parsed body a store can hold (depth, text) is
`connectors.storable_json`'s to say.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Any, Literal, TypedDict

from jmespath.parser import ParsedResult
from pydantic import SecretStr

from connectors.base import ParseResult, RejectedItem
from connectors.storable_json import may_hold_unstorable_text, may_nest_too_deep, refuse_deep_envelope, storage_problem
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
MAX_MESSAGE_ID = 200  # characters: the width of the inbox's message_id column
# Standard Webhooks: a secret as senders show it, and the bytes a `v1` signature is taken over.
STANDARD_WEBHOOKS_SECRET_PREFIX = "whsec_"


def standard_webhooks_key(key: bytes) -> bytes:
    """`key` (decoded from a ``whsec_`` secret) when an HMAC may be keyed with it; ValueError saying why not.

    Never empty: an HMAC keyed with b"" is one anybody can compute, and a
    template whose variable was unset (``whsec_${SVIX_KEY}``) leaves just the
    prefix. A source takes a sender's key of any other length, as the spec's
    own verifier (the `standardwebhooks` library) does: refused, a sender's
    shorter key would leave its source unable to start. The key the hub signs
    with keeps to the spec's 24 to 64 bytes (`webhook_config.signing_key`).
    """
    if not key:
        raise ValueError(f"holds no key after {STANDARD_WEBHOOKS_SECRET_PREFIX!r}: set the whole secret the sender "
                         "shows (is a variable in it unset?)")
    return key


def signed_content(message_id: str, timestamp: int | str, body: bytes) -> bytes:
    """What a Standard Webhooks signature covers: ``{webhook-id}.{webhook-timestamp}.{body}``."""
    return f"{message_id}.{timestamp}.".encode() + body


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


def lower_case_hex(presented: str, prefix: str = "") -> str:
    """A hex digest presented after `prefix`, in lower case as `sign` writes it: hex is case-blind, and some
    platforms send it in upper case (every such request was a 401). The prefix is left as sent; never call this
    on base64, which is case-sensitive."""
    if not presented.startswith(prefix):
        return presented
    return prefix + presented[len(prefix):].lower()


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
    `json_items_value` and each item counts its own levels (`depth_problem`), as it does alone."""
    document = json_value(body)
    if may_nest_too_deep(body, document):
        refuse_deep_envelope(document, [])
    return document


def json_value(body: bytes) -> Any:
    """The body as JSON (`_strict_document`'s reading) whatever its depth, by orjson where it reads what the json
    module would: a hook per float made every request 1.2x slower to parse."""
    return json_text.loads_bytes(body, _strict_document)


class StorageChecks(TypedDict):
    """Which of `storage_problem`'s walks the items of one body need: each costs a walk of every item, and a body
    that cannot fail one (no text a store refuses, no deep nesting, no number beyond a double) skips it."""

    check_text: bool
    check_depth: bool
    check_numbers: bool


def json_items(body: bytes) -> tuple[Any, StorageChecks]:
    """A body of many items as JSON (`json_items_value`), and the checks its items need (`StorageChecks`), for
    `json_events`, `storage_problem` or a source's own item loop."""
    document, beyond_double = json_items_value(body)
    checks = StorageChecks(
        check_text=may_hold_unstorable_text(body), check_depth=may_nest_too_deep(body, document), check_numbers=beyond_double,
    )
    return document, checks


def json_items_value(body: bytes) -> tuple[Any, bool]:
    """The body as JSON (`json_value`) for a body of many items, each refused alone for what it holds, and whether
    it holds a number beyond a double (1e400), read as an infinity for `storage_problem`'s `check_numbers` to
    refuse the item holding it: refused whole, a 400 lost its neighbours, which SDKs do not resend. Only a body
    `json_value` refuses is read again, taking such numbers and noting them: if it is refused still, the reason is
    another. orjson refuses such a number itself, so its fast path never reads one."""
    beyond = False

    def noting_infinities(text: str) -> float:
        nonlocal beyond
        number = float(text)
        beyond = beyond or math.isinf(number)
        return number

    return json_text.loads_bytes(body, partial(_strict_document, parse_float=noting_infinities)), beyond


def _strict_document(body: bytes, parse_float: Callable[[str], float] = _finite_float) -> Any:
    """The body as JSON (UTF-8, -16 or -32, as json.loads detects), or `BadPayloadError` naming why not.

    Stricter than json.loads: NaN, Infinity and numbers beyond a double are
    refused, as RFC 8259 and PostgreSQL's json column refuse them. Integers
    longer than Python converts and nesting deeper than the parser recurses
    are refused too, as the bad input they are, not left to become a 500.
    A `parse_float` that takes numbers beyond a double, as infinities, lets
    `json_items_value` refuse them with their items.
    """
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=parse_float)
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


def json_events(
    source_id: str, document: Any, *, events: ParsedResult | None, message_id: ParsedResult | None,
    received_at: str, transform: Callable[[int, dict[str, Any]], dict[str, Any] | ItemProblem] | None = None,
    check_text: bool = True, check_depth: bool = True, check_numbers: bool = False,
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
    the bodies that cannot need them, and the flag of `json_items_value` as
    `check_numbers`, so that an item holding a number beyond a double is
    refused alone. An `events` expression that fails on the
    body refuses it (`BadPayloadError`, quarantined); a `message_id` expression
    that fails on an item refuses that item.
    """
    selected = document if events is None else _selected(events, document)
    items = selected if isinstance(selected, list) else [selected]
    if check_depth:
        refuse_deep_envelope(document, items)
    result = ParseResult()
    content_ids: Counter[str] = Counter()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problem = ItemProblem(index, "(event)", f"expected a JSON object, got {type(item).__name__}")
            result.rejected.append(RejectedItem(item, [problem]))
            continue
        problem = storage_problem(index, item, check_text=check_text, check_depth=check_depth, check_numbers=check_numbers)
        outcome = problem or (transform(index, item) if transform is not None else item)
        if isinstance(outcome, ItemProblem):
            result.rejected.append(RejectedItem(item, [outcome]))
            continue
        identity = _sender_message_id(index, item, message_id)
        if isinstance(identity, ItemProblem):
            result.rejected.append(RejectedItem(item, [identity]))
            continue
        identity = identity or numbered_copy(payload_message_id(item), content_ids)
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


def _sender_message_id(index: int, item: dict[str, Any], message_id: ParsedResult | None) -> str | ItemProblem | None:
    """The item's own id: what the source's `message_id` expression finds, None when there is none. An
    expression failing on the item's data (`join` of a number) refuses that item alone, where it was a 500 for
    the whole request."""
    if message_id is None:
        return None
    try:
        found = message_id.search(item)
    except DATA_ERRORS as exc:
        return ItemProblem(index, "message_id", f"{message_id.expression!r} failed on this event: {exc}; "
                                                "change the source's `message_id` setting in sources.yaml to suit it")
    return str(found) if isinstance(found, (str, int)) and str(found) else None


def numbered_copy(content_id: str, seen: Counter[str]) -> str:
    """The id of an item its sender gave none, made from its content, for its second and later copies in one
    request (`seen` counts them) with that copy's number: two identical "Page Viewed" items of one request are two
    events to their sender, which one id made one. The first copy keeps the bare id, so the id depends on nothing
    else in the request: a resend of the request, or of the item alone, is still a duplicate."""
    seen[content_id] += 1
    copy = seen[content_id]
    return content_id if copy == 1 else f"{content_id}#{copy}"
