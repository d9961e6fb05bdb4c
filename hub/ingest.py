"""The durable half of ingest: what must be committed before the sender gets its 2xx."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connectors.base import ParseResult
from hub.errors import ItemProblem
from hub.store import Store, inbox, quarantine


@dataclass(frozen=True)
class AcceptReport:
    accepted: int
    duplicates: int
    rejected: list[ItemProblem]

    def as_response(self) -> dict[str, Any]:
        return {
            "success": True,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [problem.as_dict() for problem in self.rejected],
        }


def accept(store: Store, source_id: str, result: ParseResult, now: datetime) -> AcceptReport:
    """Commit the valid events to the inbox and the refused items to quarantine, in one transaction."""
    with store.write() as connection:
        new = inbox.append(connection, result.events, now)
        for item in result.rejected:
            quarantine.add(
                connection,
                stage="item",
                source_id=source_id,
                reason="; ".join(f"{p.field}: {p.reason}" for p in item.problems),
                problems=item.problems,
                raw_body=json.dumps(item.raw, default=str).encode("utf-8"),
                content_type="application/json",
                received_at=now,
            )
    return AcceptReport(accepted=new, duplicates=len(result.events) - new, rejected=result.problems)


def quarantine_body(
    store: Store, *, source_id: str | None, reason: str, problems: list[ItemProblem], body: bytes,
    content_type: str | None, now: datetime,
) -> None:
    """Keep a refused request body for inspection."""
    with store.write() as connection:
        quarantine.add(
            connection, stage="ingest", source_id=source_id, reason=reason, problems=problems, raw_body=body,
            content_type=content_type, received_at=now,
        )

