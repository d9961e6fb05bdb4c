"""Provider status reports that came before the hub recorded the send they are about.

Twilio may post a message's first status callback while the delivery
worker that sent it has not yet committed the attempt, which is when the
message id is stored: the worker records a batch's sends together, after
the batch's wait, and a busy writer holds that commit longer. Twilio does
not post a callback again after a 2xx, so a report that finds no delivery
is held here, and the worker applies it in the transaction that records
the send. Held reports nobody claims (a send whose record was lost in a
crash, and which is sent again under another id) go after `HELD_FOR`.

On PostgreSQL both sides take a transaction lock per message id, before
any delivery row: a callback looking for the delivery, and a worker
recording the id. Without it a callback could miss the record still being
committed while the worker missed the report still being held, and the
report would wait for nobody. On SQLite writers take turns already.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, func, insert, literal_column, select, tuple_

from hub.model import ProviderStatus
from hub.store.schema import held_reports

HELD_FOR = timedelta(days=1)  # Twilio's callbacks come within minutes; a day covers a long outage of the workers
# The first key of the advisory locks on message ids ("tp:s"); `lock_profiles` uses another.
MESSAGE_LOCK_NAMESPACE = 0x74703A73

SentMessage = tuple[str, str]  # (destination id, provider message id)


def lock_messages(connection: Connection, messages: Iterable[SentMessage]) -> None:
    """Hold, until the transaction ends, the lock on each message's reports (PostgreSQL; see the module)."""
    if connection.dialect.name != "postgresql":
        return
    keys = sorted({_signed_crc32(f"{destination_id}\x1f{message_id}") for destination_id, message_id in messages})
    if keys:
        connection.execute(
            select(func.pg_advisory_xact_lock(MESSAGE_LOCK_NAMESPACE, literal_column("k")))
            .select_from(func.unnest(keys).alias("k"))
        )


def hold(connection: Connection, destination_id: str, report: ProviderStatus, received_at: datetime) -> None:
    """Keep a report no delivery matches yet; reports held longer than `HELD_FOR` go."""
    connection.execute(delete(held_reports).where(held_reports.c.received_at < received_at - HELD_FOR))
    connection.execute(insert(held_reports).values(
        destination_id=destination_id, provider_message_id=report.provider_message_id,
        provider_status=report.provider_status, final_status=report.final_status, error=report.error,
        revokes_consent=report.revokes_consent, received_at=received_at,
    ))


def take(connection: Connection, messages: Iterable[SentMessage]) -> list[tuple[str, ProviderStatus]]:
    """The reports held for these messages, oldest first, each with its destination id; they are no longer held."""
    wanted = list(messages)
    if not wanted:
        return []
    matching = tuple_(held_reports.c.destination_id, held_reports.c.provider_message_id).in_(wanted)
    rows = connection.execute(select(held_reports).where(matching).order_by(held_reports.c.id)).all()
    if not rows:
        return []
    connection.execute(delete(held_reports).where(held_reports.c.id.in_([row.id for row in rows])))
    return [
        (row.destination_id, ProviderStatus(
            row.provider_message_id, row.provider_status, row.final_status, row.error, row.revokes_consent,
        ))
        for row in rows
    ]


def _signed_crc32(text: str) -> int:
    """A stable 32-bit key for `text`, as PostgreSQL's signed int4 (Python's `hash` differs between processes)."""
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value
