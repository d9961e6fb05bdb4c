"""Quarantine: bodies and items the hub refused or could not map, kept for inspection."""

from __future__ import annotations

import base64
import codecs
import json
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from sqlalchemy import ColumnElement, Connection, LargeBinary, func, insert, select, update

from hub.errors import ItemProblem
from hub.model import Identifier
from hub.pii import ADDRESS_TYPES, address_values, holding
from hub.store.keyset import Key, Keyset
from hub.store.provider_text import fitted
from hub.store.schema import quarantine
from hub.store.sql import MAX_INTEGER

# The request's Content-Type is kept as far as its column goes: any client may send a longer one (a multipart
# boundary, a list of parameters), which PostgreSQL refused, so the bad body was a 500 and not kept.
CONTENT_TYPE_WIDTH = quarantine.c.content_type.type.length


def add(
    connection: Connection,
    *,
    stage: str,
    reason: str,
    raw_body: bytes,
    received_at: datetime,
    source_id: str | None = None,
    problems: list[ItemProblem] | None = None,
    content_type: str | None = None,
    inbox_id: int | None = None,
) -> None:
    connection.execute(
        insert(quarantine).values(
            inbox_id=inbox_id,
            source_id=source_id,
            received_at=received_at,
            stage=stage,
            reason=reason,
            problems=[problem.as_dict() for problem in problems or []],
            content_type=fitted(content_type, CONTENT_TYPE_WIDTH),
            raw_body=raw_body,
        )
    )


# A listed body is cut to its first bytes, in the query: bodies may be HUB_MAX_BATCH_BYTES each (4 MiB by default),
# and anyone with the public write key can fill the quarantine with them; the console shows only the start of each
# (`get` has it whole).
LISTED_BODY_BYTES = 4096
PAGES = Keyset("quarantine", (quarantine.c.id,))


def _columns(body: ColumnElement[bytes]) -> tuple[ColumnElement[Any], ...]:
    """A row's columns with `body` as its raw_body, and the size of the body whole."""
    others = (column for column in quarantine.c if column.key != "raw_body")
    return (*others, body.label("raw_body"), func.length(quarantine.c.raw_body).label("raw_body_bytes"))


_LISTED = _columns(func.substr(quarantine.c.raw_body, 1, LISTED_BODY_BYTES, type_=LargeBinary))
_WHOLE = _columns(quarantine.c.raw_body)


def recent(connection: Connection, limit: int = 100, after: Key | None = None) -> list[dict[str, Any]]:
    """Newest first, each body cut to `LISTED_BODY_BYTES`: `raw_body_bytes` is its whole size, and `raw_body_cut`
    says whether it was cut. `after` is the key (`PAGES`) of the last row of the page before."""
    rows = connection.execute(PAGES.newest_first(select(*_LISTED), after).limit(limit)).mappings()
    return [_shown(row) for row in rows]


def get(connection: Connection, quarantine_id: int) -> dict[str, Any] | None:
    """One row as `recent` lists it, with its body whole, and as sent in `raw_body_base64`: the text replaces
    bytes its encoding has no character for (a Latin-1 "Café", its é the byte E9, in a body read as UTF-8), and
    those bytes are what ops must show the client to fix. None if there is no row with that id."""
    if not 0 < quarantine_id <= MAX_INTEGER:
        return None  # no row has it, and binding a larger one was a 500 on SQLite
    row = connection.execute(select(*_WHOLE).where(quarantine.c.id == quarantine_id)).mappings().first()
    if row is None:
        return None
    return {**_shown(row), "raw_body_base64": base64.b64encode(row["raw_body"] or b"").decode("ascii")}


def _shown(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with its body as text (`_decoded`); a cut that falls inside a character leaves that character's
    first bytes out rather than show them as a replacement character."""
    body = row["raw_body"] or b""  # SQLite's substr of an empty body (one erased) is NULL
    cut = row["raw_body_bytes"] > len(body)
    return {**row, "raw_body": _decoded(body, final=not cut), "raw_body_cut": cut}


def _decoded(body: bytes, *, final: bool = True) -> str:
    """The body as text in the encoding it was sent in, bytes that encoding has no character for replaced, a BOM
    left out; `final` False for the start of a body, whose last bytes may be part of a character.

    The hub's JSON parser takes UTF-16 and UTF-32 bodies (RFC 8259's
    detection, with or without a BOM), so a refused one is kept as sent; read
    as UTF-8 it is a NUL after every character, and its "sam@example.com" is
    no text that `forget` finds.
    """
    encoding = json.detect_encoding(body)  # utf-8-sig, utf-16 and utf-32 are the ones that drop the BOM
    return codecs.getincrementaldecoder(encoding)("replace").decode(body, final=final)


def count(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(quarantine)).scalar_one()


ERASED_REASON = "erased: it held data of a person since forgotten"


def forget_holding(connection: Connection, erased: Collection[Identifier]) -> list[int]:
    """Wipe the body, problems and reason of every quarantined row that holds one of the `erased` identifiers.
    The row stays, for counts.

    An address (email, phone, push token) is found as text, in any case and a
    phone written any way (`hub.pii.holding`), in bodies of any kind: JSON in
    UTF-16 or UTF-32 as the parser takes it, a form's percent-escapes. Any other
    id is found only as the value of a key that names it, at any depth (a
    batch's items): Segment's `userId`, `anonymousId` and `previousId`, or a
    custom identifier type's own name (`loyalty_id` in context.traits, in
    any case), a number read as ingest reads it ("4242"). Anywhere else, "42" or "u-4" would be
    found in other people's bodies (a total of "42", a user "u-42"). So a
    body that does not parse as JSON (cut off, form-encoded), or one that
    names the person under another key, is found by their addresses only.

    Returns the inbox rows behind them: an event the pipeline quarantined
    keeps its inbox row, the same body, for `touchhub replay`.

    Nothing links a refused body to a profile (it never became a touchpoint),
    so forgetting a person reads the quarantine through, once: an operator's
    action, on a table ops keep short.
    """
    holds = body_holding(erased)
    if holds is None:
        return []
    rows = connection.execute(
        select(quarantine.c.id, quarantine.c.inbox_id, quarantine.c.raw_body, quarantine.c.reason, quarantine.c.problems)
    )
    held = [row for row in rows if holds(row.raw_body, f"{row.reason} {row.problems}")]
    if held:
        connection.execute(
            update(quarantine).where(quarantine.c.id.in_([row.id for row in held]))
            .values(raw_body=b"", problems=[], reason=ERASED_REASON)
        )
    return sorted({row.inbox_id for row in held if row.inbox_id is not None})


def body_holding(erased: Collection[Identifier]) -> Callable[[bytes, str], bool] | None:
    """Whether a raw body (with `beside` it, text that may quote it) holds one of the `erased` identifiers, found as
    `forget_holding` says: made once for many bodies. None when there is nothing to look for.

    Shared with the inbox's events that became no touchpoint (`hub.store.forget`), whose bodies are as raw.
    """
    addresses = address_values(erased)
    ids = {ident.value for ident in erased if ident.type not in ADDRESS_TYPES}
    if not addresses and not ids:
        return None
    # A custom type's key is its own: its value is matched in any case, as identity.yaml may lower-case it.
    any_case = {ident.type for ident in erased if ident.type not in ADDRESS_TYPES | CASED_ID_TYPES}
    holds = holding(addresses)

    def held(body: bytes, beside: str = "") -> bool:
        return holds(f"{_text_of(body)} {beside}") or bool(ids) and not ids.isdisjoint(_ids_under(body, any_case))

    return held


def _text_of(body: bytes) -> str:
    """The body as text (`_decoded`), and, if it has any, with its percent-escapes undone too: a form-encoded body
    writes the @ as %40."""
    text = _decoded(body)
    return f"{text} {unquote_plus(text)}" if "%" in text else text


# The keys a Segment (or RudderStack) message names its person by, and the types they hold: case matters.
SEGMENT_ID_KEYS = frozenset({"userId", "anonymousId", "previousId"})
CASED_ID_TYPES = frozenset({"user_id", "anonymous_id"})


def _ids_under(body: bytes, any_case: Collection[str]) -> set[str]:
    """The values of Segment's id keys anywhere in a JSON body, as ingest reads an id (text trimmed, an integer
    as its digits), and of the `any_case` keys lower-cased too; none for a body that is no JSON. Walked without
    recursion: a refused body may be nested as deep as the parser reads (~1,000)."""
    try:
        pending = [json.loads(body)]
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past what the parser reads
        return set()
    found: set[str] = set()
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            found.update(_id_text(value[key]) for key in SEGMENT_ID_KEYS if key in value)
            found.update(_id_text(value[key]).lower() for key in any_case if key in value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return found


def _id_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else ""
