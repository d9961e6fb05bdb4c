"""Quarantine: bodies and items the hub refused or could not map, kept for inspection."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, desc, func, insert, select, update

from hub.errors import ItemProblem
from hub.model import Identifier
from hub.pii import ADDRESS_TYPES, address_values, holding
from hub.store.provider_text import fitted
from hub.store.schema import quarantine

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


def recent(connection: Connection, limit: int = 100) -> list[dict[str, Any]]:
    rows = connection.execute(select(quarantine).order_by(desc(quarantine.c.id)).limit(limit)).mappings()
    return [{**row, "raw_body": row["raw_body"].decode("utf-8", "replace")} for row in rows]


def count(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(quarantine)).scalar_one()


ERASED_REASON = "erased: it held data of a person since forgotten"


def forget_holding(connection: Connection, erased: Collection[Identifier]) -> list[int]:
    """Wipe the body, problems and reason of every quarantined row that holds one of the `erased` identifiers.
    The row stays, for counts.

    An address (email, phone, push token) is found as text, in any case and a
    phone written any way (`hub.pii.holding`), in bodies of any kind. Any other
    id (userId, anonymousId, a CRM id) is found only as a whole JSON string
    value, at any depth (a batch's items, context.traits): as text, "u-4" or
    "42" would be found inside other people's bodies ("u-42", a price). A body
    that does not parse as JSON (cut off, form-encoded) is therefore found by
    the person's addresses only, never by a bare id.

    Returns the inbox rows behind them: an event the pipeline quarantined
    keeps its inbox row, the same body, for `touchhub replay`.

    Nothing links a refused body to a profile (it never became a touchpoint),
    so forgetting a person reads the quarantine through, once: an operator's
    action, on a table ops keep short.
    """
    addresses = address_values(erased)
    ids = {ident.value for ident in erased if ident.type not in ADDRESS_TYPES}
    if not addresses and not ids:
        return []
    rows = connection.execute(
        select(quarantine.c.id, quarantine.c.inbox_id, quarantine.c.raw_body, quarantine.c.reason, quarantine.c.problems)
    )
    holds = holding(addresses)
    held = [
        row for row in rows
        if holds(f"{row.raw_body.decode('utf-8', 'replace')} {row.reason} {row.problems}")
        or (ids and not ids.isdisjoint(_json_strings(row.raw_body)))
    ]
    if held:
        connection.execute(
            update(quarantine).where(quarantine.c.id.in_([row.id for row in held]))
            .values(raw_body=b"", problems=[], reason=ERASED_REASON)
        )
    return sorted({row.inbox_id for row in held if row.inbox_id is not None})


def _json_strings(body: bytes) -> set[str]:
    """Every string value in a JSON body, at any depth, trimmed as ingest trims an id; none for a body that is
    no JSON. Walked without recursion: a refused body may be nested as deep as the parser reads (~1,000)."""
    try:
        pending = [json.loads(body)]
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past what the parser reads
        return set()
    strings: set[str] = set()
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            strings.add(value.strip())
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return strings
