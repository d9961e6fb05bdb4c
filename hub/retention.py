"""Letting go of raw data past HUB_RETENTION_DAYS, hourly, in the process that runs the timer worker.

The timer worker is the hub's housekeeping role: one or a few processes run
it, where every ingest or pipeline process pruning at once would queue them
all behind SQLite's one writer for the same rows. What expires and how is
`hub.store.retention`; `touchhub prune` does the same on demand.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from hub.clock import utcnow
from hub.store import Store
from hub.store.retention import prune_batches
from hub.workers import Worker

log = structlog.get_logger(__name__)
PRUNE_EVERY_SECONDS = 3600.0
PRUNE_BATCH_SIZE = 500  # rows per transaction: SQLite's writer is held for one batch, ingest goes on between them


def retention_cutoff(days: int) -> datetime:
    """Rows older than this have expired. A retention reaching back past the year 1 (ops write 1000000 days for
    "keep for ever") keeps everything: the cutoff is the earliest time there is, where `now - days` raised
    OverflowError, out of `touchhub prune` and the hourly prune alike."""
    now = utcnow()
    try:
        return now - timedelta(days=days)
    except OverflowError:
        return datetime.min.replace(tzinfo=now.tzinfo)


def prune(store: Store, cutoff: datetime, on_batch: Callable[[int], None] = lambda deleted: None) -> dict[str, int]:
    """Delete what is older than `cutoff`; rows deleted by kind (only kinds that lost any). `on_batch` is told how
    many rows each batch deleted (`touchhub prune`'s progress bar)."""
    deleted: dict[str, int] = {}
    for label, count in prune_batches(store, cutoff, PRUNE_BATCH_SIZE):
        deleted[label] = deleted.get(label, 0) + count
        on_batch(count)
    if deleted:
        log.info("deleted rows past the retention", before=cutoff.isoformat(), deleted=deleted)
    return deleted


def retention_worker(store: Store, days: int) -> Worker:
    """A worker that prunes at its start and then every `PRUNE_EVERY_SECONDS`; its step always reports idle."""

    def step() -> int:
        prune(store, retention_cutoff(days))
        return 0

    return Worker("retention", step, threading.Event(), PRUNE_EVERY_SECONDS)
