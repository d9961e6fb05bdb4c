"""The outbox: planned deliveries, their attempts, and the delivery log built from them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, desc, func, insert, or_, select, update

from hub.model import Delivery, PlannedDelivery
from hub.pii import mask_text
from hub.store import sql
from hub.store.schema import UTCDateTime, attempts, deliveries
from hub.store.sql import insert_ignoring_conflicts

DUE_STATUSES = ("pending", "retrying")


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One call to a provider, as the delivery log shows it (already masked)."""

    started_at: datetime
    duration_ms: float
    outcome: str
    provider_message_id: str | None
    error_class: str | None
    error_message: str | None
    request_summary: dict[str, Any]
    response_summary: dict[str, Any]


def plan(connection: Connection, planned: Sequence[PlannedDelivery], now: datetime) -> int:
    rows = [
        {
            "delivery_id": item.delivery_id,
            "decision_id": item.decision_id,
            "profile_id": item.profile_id,
            "channel": item.channel,
            "destination_id": item.destination_id,
            "target": item.target,
            "content": item.content,
            "status": "pending",
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": item.not_before or now,
        }
        for item in planned
    ]
    return insert_ignoring_conflicts(connection, deliveries, rows, ["delivery_id"])


def claim_due(connection: Connection, limit: int, now: datetime, lease: timedelta) -> list[Delivery]:
    """Claim deliveries whose time has come and which no live worker holds."""
    query = (
        select(
            deliveries.c.delivery_id, deliveries.c.destination_id, deliveries.c.channel, deliveries.c.target,
            deliveries.c.content, deliveries.c.attempts, deliveries.c.created_at,
        )
        .where(
            deliveries.c.status.in_(DUE_STATUSES),
            deliveries.c.next_attempt_at <= now,
            or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < now),
        )
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit)
    )
    rows = sql.claim(connection, query, deliveries, deliveries.c.delivery_id, claimed_until=now + lease)
    return [Delivery(*row) for row in rows]

def record_attempt(
    connection: Connection,
    delivery: Delivery,
    attempt: AttemptRecord,
    *,
    status: str,
    next_attempt_at: datetime | None,
) -> None:
    """Log the attempt and move the delivery to its new status, atomically."""
    attempt_no = delivery.attempts + 1
    connection.execute(insert(attempts).values(delivery_id=delivery.delivery_id, attempt_no=attempt_no, **asdict(attempt)))
    values: dict[str, Any] = {
        "status": status,
        "attempts": attempt_no,
        "updated_at": attempt.started_at,
        "claimed_until": None,
        "last_error": attempt.error_message,
    }
    if attempt.provider_message_id:
        values["provider_message_id"] = attempt.provider_message_id
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    connection.execute(update(deliveries).where(deliveries.c.delivery_id == delivery.delivery_id).values(**values))


def search(
    connection: Connection,
    *,
    limit: int,
    profile_id: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    decision_id: str | None = None,
) -> list[dict[str, Any]]:
    """The delivery log, newest first, each delivery with its attempts; recipients are masked."""
    query = select(deliveries).order_by(desc(deliveries.c.created_at)).limit(limit)
    if profile_id:
        query = query.where(deliveries.c.profile_id == profile_id)
    if status:
        query = query.where(deliveries.c.status == status)
    if channel:
        query = query.where(deliveries.c.channel == channel)
    if decision_id:
        query = query.where(deliveries.c.decision_id == decision_id)
    found = [dict(row) for row in connection.execute(query).mappings()]
    by_delivery: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if found:
        rows = connection.execute(
            select(attempts)
            .where(attempts.c.delivery_id.in_([item["delivery_id"] for item in found]))
            .order_by(attempts.c.attempt_no)
        ).mappings()
        for row in rows:
            by_delivery[row["delivery_id"]].append({key: value for key, value in row.items() if key != "delivery_id"})
    for item in found:
        item["target"] = mask_text(item["target"])
        item.pop("claimed_until", None)
        item["attempt_log"] = by_delivery[item["delivery_id"]]
    return found


def count_by_channel_and_status(connection: Connection) -> list[dict[str, Any]]:
    """Deliveries and the attempts they took, per channel and status."""
    rows = connection.execute(
        select(deliveries.c.channel, deliveries.c.status, func.count(), func.sum(deliveries.c.attempts))
        .group_by(deliveries.c.channel, deliveries.c.status)
        .order_by(deliveries.c.channel, deliveries.c.status)
    )
    return [{"channel": ch, "status": st, "count": n, "attempts": int(a or 0)} for ch, st, n, a in rows]


def unfinished(connection: Connection, now: datetime) -> int:
    """Deliveries being retried, or due for their first attempt; those held back by a delay or quiet hours
    (pending until a later time) are not work yet."""
    query = select(func.count()).select_from(deliveries).where(
        or_(deliveries.c.status == "retrying", (deliveries.c.status == "pending") & (deliveries.c.next_attempt_at <= now))
    )
    return connection.execute(query).scalar_one()


_PLANNED_SINCE = select(func.count()).select_from(deliveries).where(
    deliveries.c.profile_id == bindparam("profile_id"),
    deliveries.c.channel.in_(bindparam("channels", expanding=True)),
    deliveries.c.created_at > bindparam("since", type_=UTCDateTime),
)


def planned_since(connection: Connection, profile_id: str, channels: Sequence[str], since: datetime) -> int:
    """Deliveries planned for a profile on these channels since a time: what the daily cap counts."""
    return connection.execute(_PLANNED_SINCE, {"profile_id": profile_id, "channels": list(channels), "since": since}).scalar_one()
