"""The SQLite store's writers take turns on a lock that wakes the next one at once.

SQLite lets one transaction write at a time; a writer that finds the lock
taken waits in SQLite's busy handler, which sleeps and polls with naps of up
to 100 ms, so a writer can lose the lock to faster pollers again and again.
Threads of one process queue on a `threading.Lock`; processes on one file
(`touchhub serve` beside `touchhub worker`, or a feeder) on an exclusive
`flock` of a file beside the database, which the kernel hands on the moment
it is released. Writers that do not take it (an old hub, the sqlite3 shell)
still meet SQLite's own lock and busy timeout, so it only orders, never
guards.
"""

from __future__ import annotations

import fcntl
import os
import threading

from sqlalchemy import Engine


class WriterLock:
    """No lock: PostgreSQL runs writers side by side (profile writers serialize on `sql.lock_profiles`)."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


def writer_lock(engine: Engine) -> WriterLock:
    """The lock `Store.write` holds around each write transaction on this engine."""
    if engine.dialect.name != "sqlite":
        return WriterLock()
    database = engine.url.database
    if not database or database == ":memory:":  # one connection's private database: no other process
        return _ThreadsOnly()
    return _ThreadsAndProcesses(f"{database}-writer.lock")


class _ThreadsOnly(WriterLock):
    def __init__(self) -> None:
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        self._threads.acquire()

    def __exit__(self, *exc: object) -> None:
        self._threads.release()


class _ThreadsAndProcesses(_ThreadsOnly):
    """The thread lock first, so one descriptor's `flock` is held by one thread at a time."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._descriptor: int | None = None  # opened on first use: a Store that never writes leaves no file

    def __enter__(self) -> None:
        super().__enter__()
        try:
            if self._descriptor is None:
                self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)
        except BaseException:
            super().__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        assert self._descriptor is not None
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        super().__exit__()

    def close(self) -> None:
        with self._threads:
            if self._descriptor is not None:
                os.close(self._descriptor)
                self._descriptor = None
