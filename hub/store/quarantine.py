"""Quarantine: bodies and items the hub refused or could not map, kept for inspection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, desc, func, insert, select, update

from hub.errors import ItemProblem
from hub.pii import holding
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


def forget_holding(connection: Connection, values: set[str]) -> list[int]:
    """Wipe the body, problems and reason of every quarantined row that holds one of `values` (lowercase, found
    in any case; a phone among them written any way, `hub.pii.holding`). The row stays, for counts.

    Returns the inbox rows behind them: an event the pipeline quarantined
    keeps its inbox row, the same body, for `touchhub replay`.

    Nothing links a refused body to a profile (it never became a touchpoint),
    so forgetting a person reads the quarantine through for their addresses:
    an operator's action, on a table ops keep short.
    """
    if not values:
        return []
    rows = connection.execute(
        select(quarantine.c.id, quarantine.c.inbox_id, quarantine.c.raw_body, quarantine.c.reason, quarantine.c.problems)
    )
    holds = holding(values)
    held = [row for row in rows if holds(f"{row.raw_body.decode('utf-8', 'replace')} {row.reason} {row.problems}")]
    if held:
        connection.execute(
            update(quarantine).where(quarantine.c.id.in_([row.id for row in held]))
            .values(raw_body=b"", problems=[], reason=ERASED_REASON)
        )
    return sorted({row.inbox_id for row in held if row.inbox_id is not None})
