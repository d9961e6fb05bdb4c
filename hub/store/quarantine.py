"""Quarantine: bodies and items the hub refused or could not map, kept for inspection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, desc, func, insert, select

from hub.errors import ItemProblem
from hub.store.schema import quarantine


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
            content_type=content_type,
            raw_body=raw_body,
        )
    )


def recent(connection: Connection, limit: int = 100) -> list[dict[str, Any]]:
    rows = connection.execute(select(quarantine).order_by(desc(quarantine.c.id)).limit(limit)).mappings()
    return [{**row, "raw_body": row["raw_body"].decode("utf-8", "replace")} for row in rows]


def count(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(quarantine)).scalar_one()
