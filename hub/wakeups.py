"""Waking workers when work is committed: in this process, and in every other hub process of the store.

Producers (ingest, the pipeline, the timer engine, a delivery replay)
announce, after they commit, which worker has new work. A worker of this
process wakes at once; other processes hear it over the store's channel
(`hub.wakeup_channels`: NOTIFY on PostgreSQL, a folder of UNIX sockets
beside a SQLite file), so a worker split from its producers (`HUB_WORKERS`,
other nodes) wakes in milliseconds instead of at its next poll.

An announcement only shortens a wait: the work is in the database already,
so a lost one costs at most one poll interval, and errors here are logged,
never raised to a producer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import structlog

from hub.settings import WORKER_ROLES
from hub.wakeup_channels import LISTEN_TIMEOUT_SECONDS, channel_for

log = structlog.get_logger(__name__)


class Wakeups:
    """The wake-up events of this process's workers, and the channel that carries them between processes."""

    def __init__(self, database_url: str) -> None:
        self.events = {name: threading.Event() for name in WORKER_ROLES}
        self._timers_due: Callable[[datetime], None] = lambda _at: self.events["timers"].set()
        self._busy_wakes: dict[str, Callable[[], None]] = {}
        self._channel = channel_for(database_url)
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None

    def follow_timers(self, wake_by: Callable[[datetime], None]) -> None:
        """Timers announced with a due time wake the timer worker by its own rule (`Worker.wake_by`)."""
        self._timers_due = wake_by

    def wake_while_busy(self, worker: str, wake: Callable[[], None]) -> None:
        """`wake` is called too when `worker` is woken: for a step that waits on something else than the
        worker's event (the delivery engine waiting for its sends)."""
        self._busy_wakes[worker] = wake

    def announce(self, worker: str, due: datetime | None = None) -> None:
        """`worker` has new work (due at `due`, for timers): wake it here and in the store's other processes."""
        self._wake_here(worker, due)
        if self._channel is not None:
            self._channel.publish(f"{worker} {due.isoformat()}" if due is not None else worker)

    def start(self) -> None:
        """Hear other processes' announcements (a process that runs workers)."""
        if self._channel is not None and self._listener is None:
            self._listener = threading.Thread(
                target=self._channel.listen, args=(self._heard, self._stopping), name="wakeups", daemon=True
            )
            self._listener.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None and self._channel is not None:
            self._channel.interrupt()
            self._listener.join(LISTEN_TIMEOUT_SECONDS + 5)
        if self._channel is not None:
            self._channel.close()

    def _wake_here(self, worker: str, due: datetime | None) -> None:
        if worker == "timers" and due is not None:
            self._timers_due(due)
        else:
            self.events[worker].set()
            if worker in self._busy_wakes:
                self._busy_wakes[worker]()

    def _heard(self, payload: str) -> None:
        worker, _, due = payload.partition(" ")
        try:
            at = datetime.fromisoformat(due) if due else None
        except ValueError:
            at = None
        if worker not in self.events or (due and at is None):
            log.warning("unreadable wake-up from another process", payload=payload[:100])
            return
        self._wake_here(worker, at)
