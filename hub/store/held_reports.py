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

from sqlalchemy import Connection, and_, delete, func, insert, literal_column, or_, select

from hub.model import ProviderStatus
from hub.store import provider_text
from hub.store.precompiled import InLists
from hub.store.schema import held_reports

HELD_FOR = timedelta(days=1)  # Twilio's callbacks come within minutes; a day covers a long outage of the workers
# The first key of the advisory locks on message ids ("tp:s"); `lock_profiles` uses another.
MESSAGE_LOCK_NAMESPACE = 0x74703A73

SentMessage = tuple[str, str]  # (destination id, provider message id)


def lock_messages(connection: Connection, messages: Iterable[SentMessage]) -> None:
    """Hold, until the transaction ends, the lock on each message's reports (PostgreSQL; see the module)."""
    if connection.dialect.name != "postgresql":
        return
    keys = sorted({_signed_crc32(f"{destination_id}\x1f{message_id}") for destination_id, message_id in _stored(messages)})
    if keys:
        connection.execute(
            select(func.pg_advisory_xact_lock(MESSAGE_LOCK_NAMESPACE, literal_column("k")))
            .select_from(func.unnest(keys).alias("k"))
        )


def hold(connection: Connection, destination_id: str, report: ProviderStatus, received_at: datetime) -> None:
    """Keep a report no delivery matches yet, as a delivery would store it (`provider_text.storable_report`); reports
    held longer than `HELD_FOR` go."""
    stored = provider_text.storable_report(report)
    connection.execute(delete(held_reports).where(held_reports.c.received_at < received_at - HELD_FOR))
    connection.execute(insert(held_reports).values(
        destination_id=destination_id, provider_message_id=stored.provider_message_id,
        provider_status=stored.provider_status, final_status=stored.final_status, error=stored.error,
        revokes_consent=stored.revokes_consent, received_at=received_at,
    ))


# Each record of a batch with sends to a destination that reports later (Twilio's SMS). An OR of one
# (destination, message) pair each, which both databases search in the message index, where SQLite walked the
# whole table for a row-value IN; the two lists are padded alike (`InLists`), so their places still pair up.
_TAKE = InLists(
    lambda destinations, messages: delete(held_reports)
    .where(or_(*(
        and_(held_reports.c.destination_id == destination, held_reports.c.provider_message_id == message)
        for destination, message in zip(destinations, messages)
    )))
    .returning(
        held_reports.c.id, held_reports.c.destination_id, held_reports.c.provider_message_id,
        held_reports.c.provider_status, held_reports.c.final_status, held_reports.c.error, held_reports.c.revokes_consent,
    )
)


def take(connection: Connection, messages: Iterable[SentMessage]) -> list[tuple[str, ProviderStatus]]:
    """The reports held for these messages, oldest first, each with its destination id; they are no longer held.
    One statement (DELETE ... RETURNING), none for no messages."""
    wanted = _stored(messages)
    rows = sorted(_TAKE.execute(connection, [destination for destination, _ in wanted], [message for _, message in wanted]))
    return [(destination_id, ProviderStatus(*report)) for _, destination_id, *report in rows]


def _stored(messages: Iterable[SentMessage]) -> list[SentMessage]:
    """The messages by their ids as stored (`provider_text.stored_message_id`): an id longer than its column is held,
    recorded and locked cut, so the send, its reports and its lock match."""
    return [(destination_id, provider_text.stored_message_id(message_id)) for destination_id, message_id in messages]


def _signed_crc32(text: str) -> int:
    """A stable 32-bit key for `text`, as PostgreSQL's signed int4 (Python's `hash` differs between processes)."""
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value
