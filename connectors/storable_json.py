"""What of a JSON body every store can hold: how deep it nests, and text no store takes.

Sources call these on what they parse (`connectors.webhooks.json_document`
and the Segment source do), so an item too deep for the admin API's answers,
or holding NUL or a lone surrogate, is refused naming its path before it is
stored, its neighbours kept. Each check is gated by a cheap look at the body's
bytes, as most bodies hold neither.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import orjson

from hub.errors import BadPayloadError, ItemProblem

# Characters valid in a JSON string that no store holds in text: NUL (PostgreSQL's text type refuses it) and lone
# UTF-16 surrogates (no UTF-8 form, so neither sqlite3 nor psycopg can send them).
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
# How a UTF-8 body spells one: the escape \u0000, a surrogate's escape \ud800-\udfff (paired ones, which are fine,
# match too), or a surrogate's three UTF-8-like bytes (0xED 0xA0-0xBF), which json.loads takes ("surrogatepass").
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_SURROGATE_BYTES = re.compile(rb"\xed[\xa0-\xbf]")
_NUL_ESCAPE = b"\\u0000"  # how orjson writes NUL
# Levels of objects and arrays inside each other one message or event may have (itself level 1, wherever it sits in
# the body): Segment-spec payloads nest about 5 deep and vendors' webhooks about 10. README's bad-input table says it.
MAX_JSON_DEPTH = 64
TOO_DEEP = f"is nested deeper than {MAX_JSON_DEPTH} levels of objects and arrays, the most the hub takes; flatten the payload"
BEYOND_DOUBLE = (
    "is a number beyond a double-precision float (about 1.8e308), which the hub cannot store; send a smaller number, "
    "or the number as a string"
)


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
    index: int | None, item: dict[str, Any] | list[Any], *, check_text: bool, check_depth: bool,
    check_numbers: bool = False,
) -> ItemProblem | None:
    """What keeps an item out of every store: nesting past the limit (`depth_problem`), text no store holds
    (`text_problem`) or a number beyond a double (`number_problem`), each looked for only where its body's gate
    (`may_nest_too_deep`, `may_hold_unstorable_text`, the flag of `connectors.webhooks.json_items_value`) says it
    may be. `check_numbers` is False for a body read by `json_value`, which refuses such numbers whole."""
    return (
        (depth_problem(index, item) if check_depth else None)
        or (text_problem(index, item) if check_text else None)
        or (number_problem(index, item) if check_numbers else None)
    )


def number_problem(index: int | None, item: dict[str, Any] | list[Any]) -> ItemProblem | None:
    """The problem naming the first number of `item` beyond a double-precision float (1e400, read as an infinity):
    stored, it is written Infinity, which PostgreSQL's json column and every JSON reader refuse."""
    for path, key, value in _entries(item):
        if isinstance(value, float) and not math.isfinite(value):
            return ItemProblem(index, _joined(path, key), BEYOND_DOUBLE)
    return None


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
    """(path, character) of the first string or key found holding a character no store can hold."""
    for path, key, child in _entries(value):
        if isinstance(key, str) and (character := _unstorable_character(key)):
            return _joined(path, _storable(key)), character
        if isinstance(child, str) and (character := _unstorable_character(child)):
            return _joined(path, key), character
    return None


def _entries(value: dict[str, Any] | list[Any]) -> Iterator[tuple[str, str | int, Any]]:
    """(path of its object or array, key, value) of every entry of `value`, at any depth; an entry is yielded
    before what it holds is entered, so a caller that stops at a bad key goes no further.

    A loop over a stack, not recursion: the parsers take nesting deeper than Python's recursion limit.
    """
    stack: list[tuple[str, dict[str, Any] | list[Any]]] = [("", value)]
    while stack:
        path, node = stack.pop()
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            yield path, key, child
            if isinstance(child, (dict, list)):
                stack.append((_joined(path, key), child))


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
