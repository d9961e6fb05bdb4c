"""Waking workers when work is committed: in this process, and on PostgreSQL in every hub process.

Producers (ingest, the pipeline, the timer engine, a delivery replay)
announce, after they commit, which worker has new work. A worker of this
process wakes at once. On PostgreSQL the announcement is also a NOTIFY on
`hub_work`, and each hub process LISTENs on its own connection, so workers
in other processes and on other nodes wake in milliseconds instead of at
their next poll. On SQLite other processes are not told; their workers find
the work at their next poll (`HUB_WORKER_POLL_SECONDS`).

An announcement only shortens a wait: the work is in the database already,
so a lost NOTIFY (a dropped connection, a listener restarting) costs at most
one poll interval, and errors here are logged, never raised to a producer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.engine import make_url

from hub.settings import WORKER_ROLES

log = structlog.get_logger(__name__)
CHANNEL = "hub_work"
LISTEN_TIMEOUT_SECONDS = 1.0  # how often the listener checks whether it should stop
RECONNECT_SECONDS = 1.0


class Wakeups:
    """The wake-up events of this process's workers, and the PostgreSQL channel that carries them between processes."""

    def __init__(self, database_url: str) -> None:
        self.events = {name: threading.Event() for name in WORKER_ROLES}
        self._timers_due: Callable[[datetime], None] = lambda _at: self.events["timers"].set()
        self._dsn = _libpq_dsn(database_url)
        self._publisher: Any = None  # a psycopg connection, opened on first use
        self._publishing = threading.Lock()
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None

    def follow_timers(self, wake_by: Callable[[datetime], None]) -> None:
        """Timers announced with a due time wake the timer worker by its own rule (`Worker.wake_by`)."""
        self._timers_due = wake_by

    def announce(self, worker: str, due: datetime | None = None) -> None:
        """`worker` has new work (due at `due`, for timers): wake it here and, on PostgreSQL, everywhere."""
        self._wake_here(worker, due)
        if self._dsn is not None:
            self._publish(f"{worker} {due.isoformat()}" if due is not None else worker)

    def start(self) -> None:
        """Listen for other processes' announcements (PostgreSQL only)."""
        if self._dsn is not None and self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="wakeups", daemon=True)
            self._listener.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.join(LISTEN_TIMEOUT_SECONDS + 5)
        with self._publishing:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None

    def _wake_here(self, worker: str, due: datetime | None) -> None:
        if worker == "timers" and due is not None:
            self._timers_due(due)
        else:
            self.events[worker].set()

    def _publish(self, payload: str) -> None:
        with self._publishing:
            try:
                if self._publisher is None:
                    self._publisher = _connect(self._dsn)
                self._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except Exception:  # the work is committed; other processes find it at their next poll
                log.warning("could not announce work to other hub processes", exc_info=True)
                self._publisher = None

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                with _connect(self._dsn) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=LISTEN_TIMEOUT_SECONDS):
                            if notice.pid != self._own_pid():
                                self._heard(notice.payload)
            except Exception:
                log.warning("lost the connection that hears other hub processes; reconnecting", exc_info=True)
                self._stopping.wait(RECONNECT_SECONDS)

    def _own_pid(self) -> int | None:
        """The backend of this process's publisher: its own announcements have woken its workers already."""
        publisher = self._publisher
        return publisher.info.backend_pid if publisher is not None else None

    def _heard(self, payload: str) -> None:
        worker, _, due = payload.partition(" ")
        if worker not in self.events:
            log.warning("unknown worker in a hub_work notification", payload=payload)
            return
        self._wake_here(worker, datetime.fromisoformat(due) if due else None)


def _libpq_dsn(database_url: str) -> str | None:
    """The URL as psycopg takes it, or None for a store without NOTIFY (SQLite)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _connect(dsn: str | None) -> Any:
    import psycopg  # the PostgreSQL extra; only a PostgreSQL store gets here

    assert dsn is not None
    return psycopg.connect(dsn, autocommit=True)
