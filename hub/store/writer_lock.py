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

A writer waits for the lock as long as SQLite's busy timeout at most
(HUB_SQLITE_LOCK_TIMEOUT_SECONDS), then gets `StoreBusyError` naming the
process that holds it. Without a bound, one process hung inside a write
transaction (stopped, in a debugger, blocked on a full disk) held every
other writer, a CLI command too, with no word. An uncontended writer pays
one non-blocking `flock`; a contended one blocks in a thread of its own, so
the kernel still hands the lock on at once and the writer can give up.
"""

from __future__ import annotations

import fcntl
import os
import threading
from concurrent.futures import Future, wait
from time import monotonic

from sqlalchemy import Engine

from hub.errors import StoreBusyError

# /proc/locks (Linux) lists each lock with its holder's pid; a waiter's line has "->" where the lock's kind is.
PROC_LOCKS = "/proc/locks"
# The most of a holder's command line a message shows: the pid is what to act on, the command says what it is.
COMMAND_SHOWN = 100


class WriterLock:
    """No lock: PostgreSQL runs writers side by side (profile writers serialize on `sql.lock_profiles`)."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


def writer_lock(engine: Engine, timeout: float) -> WriterLock:
    """The lock `Store.write` holds around each write transaction on this engine; a writer waits `timeout` seconds
    for it at most."""
    if engine.dialect.name != "sqlite":
        return WriterLock()
    database = engine.url.database
    if not database or database == ":memory:":  # one connection's private database: no other process
        return _ThreadsOnly(timeout)
    return _ThreadsAndProcesses(f"{database}-writer.lock", timeout)


class _ThreadsOnly(WriterLock):
    def __init__(self, timeout: float) -> None:
        self._threads = threading.Lock()
        self.timeout = timeout

    def __enter__(self) -> None:
        if not self._threads.acquire(timeout=self.timeout):
            raise self._busy(f"another thread of this process (pid {os.getpid()})", "restart this process")

    def __exit__(self, *exc: object) -> None:
        self._threads.release()

    def _busy(self, holder: str, remedy: str) -> StoreBusyError:
        return StoreBusyError(
            f"the SQLite store is busy: {holder} has held its write lock for over {self.timeout:g} s "
            f"(HUB_SQLITE_LOCK_TIMEOUT_SECONDS); if it is stuck, {remedy}; if it is busy with a long write such as a "
            "migration, try again once it is done, or raise HUB_SQLITE_LOCK_TIMEOUT_SECONDS"
        )


class _ThreadsAndProcesses(_ThreadsOnly):
    """The thread lock first, so one descriptor's `flock` is held by one thread at a time."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(timeout)
        self.path = path
        self._descriptor: int | None = None  # opened on first use: a Store that never writes leaves no file

    def __enter__(self) -> None:
        started = monotonic()
        super().__enter__()
        try:
            if self._descriptor is None:
                self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._take_file_lock(self._descriptor, started)
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

    def _take_file_lock(self, descriptor: int, started: float) -> None:
        """The `flock` at once if it is free; else as the kernel hands it on within the timeout counted from
        `started`, on a descriptor of the waiting thread's that this lock keeps instead of `descriptor`;
        StoreBusyError naming the holder past that."""
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        taken = _wait_in_thread(self.path)
        wait([taken], timeout=self.timeout - (monotonic() - started))
        if taken.cancel():  # still waiting: its thread lets the lock go the moment it gets it
            raise self._busy(*_holder(descriptor, self.path))
        self._descriptor = taken.result()
        os.close(descriptor)


def _wait_in_thread(path: str) -> Future[int]:
    """A blocking `flock` of `path` in a daemon thread, on a descriptor of its own, which the future holds once
    the lock is taken; if the future was cancelled (its writer gave up) by then, the thread closes the descriptor,
    letting the lock go at once.

    Its own descriptor, because a `flock` belongs to an open file: on one the store's writers share, a wait given
    up long ago could let go of the lock under a later writer of this process.
    """
    taken: Future[int] = Future()
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def take() -> None:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(descriptor)
            if taken.set_running_or_notify_cancel():
                taken.set_exception(exc)
            return
        if taken.set_running_or_notify_cancel():
            taken.set_result(descriptor)
        else:
            os.close(descriptor)

    threading.Thread(target=take, name="sqlite-writer-lock", daemon=True).start()
    return taken


def _holder(descriptor: int, path: str) -> tuple[str, str]:
    """Who holds the `flock` of `descriptor`'s file `path`, and what to do if it is stuck, as /proc/locks tells
    (Linux); elsewhere, or if it let go meanwhile, "another process"."""
    status = os.fstat(descriptor)
    file_id = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    try:
        with open(PROC_LOCKS, encoding="ascii") as locks:
            pids = [fields[4] for fields in map(str.split, locks) if fields[1] == "FLOCK" and fields[5] == file_id]
    except OSError:
        pids = []
    if not pids:
        return "another process", f"stop it (`fuser {path}` names it)"
    return f"process {pids[0]}{_command(pids[0])}", f"stop it (kill {pids[0]})"


def _command(pid: str) -> str:
    """The command process `pid` runs, as ` (touchhub serve ...)`, or nothing if it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            arguments = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
    command = " ".join(arguments.split())  # one line, whatever its arguments hold
    return f" ({command[:COMMAND_SHOWN]})" if command else ""
