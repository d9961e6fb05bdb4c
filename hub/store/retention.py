"""Retention: what the store lets go of once it is older than HUB_RETENTION_DAYS.

Raw bodies are the bulk of the store and the most personal part of it: an
inbox row keeps the whole message as the sender wrote it (emails, phone
numbers, IP addresses), a quarantined body likewise, an attempt what a
provider answered. Svix and RudderStack keep payloads for a set period and
then only what was made of them; so does the hub. What it keeps for good is
what it made and what later decisions are judged by: touchpoints, profiles
and their identifiers, decisions, deliveries (the daily cap and the
delivery log read them), consent changes, and the digests of forgotten
identifiers.

What expires, each row only once it is settled:
- inbox rows the pipeline is done with (`done`, or `failed` and quarantined):
  `touchhub replay` can go back no further than the retention;
- quarantined bodies;
- delivery attempts (the delivery log's request and answer summaries);
- absence timers that fired, were cancelled or lapsed;
- provider reports held for a send never recorded, and the provider messages
  whose consent word was applied (a provider retries those for minutes).

Rows go in batches of `batch_size`, one transaction each, so SQLite's
single writer is held for a batch at a time and ingest goes on between
them. Each batch is found by an index or by primary-key order (attempts and
quarantined bodies are added in time order and have no index on it), so a
store with nothing old costs a few cheap reads, not a scan of each table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, ColumnElement, Connection, Table, delete, func, select, tuple_

from hub.store import Store
from hub.store.sql import MAX_INTEGER
from hub.store.schema import attempts, consent_messages, held_reports, inbox, quarantine, timers

SETTLED_INBOX = ("done", "failed")
SETTLED_TIMERS = ("fired", "cancelled", "superseded", "lapsed", "failed")


@dataclass(frozen=True)
class Expiry:
    """One kind of row that expires: `old(cutoff)` is the condition a row of `table` meets once it may go."""

    label: str
    table: Table
    old: Callable[[datetime], ColumnElement[bool]]

    def count(self, connection: Connection, cutoff: datetime) -> int:
        return connection.execute(select(func.count()).select_from(self.table).where(self.old(cutoff))).scalar_one()

    def delete_batch(self, connection: Connection, cutoff: datetime, batch_size: int) -> int:
        """Delete up to `batch_size` expired rows, oldest keys first; how many went."""
        columns = list(self.table.primary_key.columns)
        batch = select(*columns).where(self.old(cutoff)).order_by(*columns).limit(batch_size)
        key = columns[0] if len(columns) == 1 else tuple_(*columns)  # consent_messages: a row value IN a subquery
        return connection.execute(delete(self.table).where(key.in_(batch))).rowcount or 0


def added_before(table: Table, time_column: Column) -> Callable[[datetime], ColumnElement[bool]]:
    """Rows of a table whose ids grow with `time_column`, older than the cutoff: those before its first newer row.

    Walking the ids up to the first row at or after the cutoff reads only
    the old rows, where `time_column < cutoff` alone read the whole table
    each time. The time is still compared, for a row a slow writer added a
    moment out of order.
    """
    (key,) = table.primary_key.columns

    def old(cutoff: datetime) -> ColumnElement[bool]:
        first_newer = select(key).where(time_column >= cutoff).order_by(key).limit(1).scalar_subquery()
        return (key < func.coalesce(first_newer, MAX_INTEGER)) & (time_column < cutoff)

    return old


EXPIRIES = (
    Expiry("raw events (inbox)", inbox,
           lambda cutoff: inbox.c.status.in_(SETTLED_INBOX) & (inbox.c.received_at < cutoff)),
    Expiry("quarantined bodies", quarantine, added_before(quarantine, quarantine.c.received_at)),
    Expiry("delivery attempts", attempts, added_before(attempts, attempts.c.started_at)),
    # Due before the cutoff (the (status, due_at) index finds them) and settled before it: a timer armed for an
    # old event settles now, and stays for the retention from then.
    Expiry("settled timers", timers,
           lambda cutoff: timers.c.status.in_(SETTLED_TIMERS) & (timers.c.due_at < cutoff)
           & (timers.c.settled_at < cutoff)),
    Expiry("held provider reports", held_reports, lambda cutoff: held_reports.c.received_at < cutoff),
    Expiry("applied consent replies", consent_messages, lambda cutoff: consent_messages.c.received_at < cutoff),
)


def expired_counts(store: Store, cutoff: datetime) -> dict[str, int]:
    """How many rows of each kind are older than `cutoff` and would go: `touchhub prune --dry-run`."""
    with store.read() as connection:
        return {expiry.label: expiry.count(connection, cutoff) for expiry in EXPIRIES}


def prune_batches(store: Store, cutoff: datetime, batch_size: int) -> Iterator[tuple[str, int]]:
    """Delete every expired row, a batch per transaction; yields (label, rows deleted) after each batch."""
    for expiry in EXPIRIES:
        while True:
            with store.write() as connection:
                deleted = expiry.delete_batch(connection, cutoff, batch_size)
            if deleted:
                yield expiry.label, deleted
            if deleted < batch_size:
                break
