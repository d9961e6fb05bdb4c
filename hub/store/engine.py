"""Engine creation and the transaction discipline every store call follows.

SQLite is the embedded default. Three settings make it safe for the hub:
WAL (readers never block the writer), ``synchronous=FULL`` (a committed
ingest survives power loss, not only a killed process) and a busy timeout
(writers from several threads or processes queue instead of failing).
Write transactions start with ``BEGIN IMMEDIATE`` so a read-then-write, such as
identity resolution, holds the write lock from its first read: two workers can
never both decide that an identifier is new.

PostgreSQL keeps its defaults (READ COMMITTED, its own durability): claims
there skip rows other workers hold, and profile writers serialize on an
advisory lock instead (both in `hub.store.sql`). Each session is told to
end a transaction left idle for two leases, and its connection probes a
silent peer (`_postgresql_session`): what a stalled node holds comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from hub.store import json_text
from hub.store.driver_errors import hide_row_values_of

_READ_ONLY = "hub_read_only"

# Pages the WAL may hold before the commit that fills it copies them into the database file
# (SQLite's default: 1,000, ~4 MB). A checkpoint copies each page once however often it was
# rewritten since the last, and the hub rewrites the same index pages batch after batch, so
# fewer, larger checkpoints copy less: 300,000 events with 100 rules ran 2,661-2,867/s at
# 1,000 pages, 2,950 at 5,000, 3,244 at 20,000 and 3,188 at 100,000 (bench/README.md).
# The price: a WAL file of up to ~80 MB, and the commit that checkpoints takes longer
# (up to ~0.1 s at 300,000 events).
WAL_AUTOCHECKPOINT_PAGES = 20_000


# Prepared statements the sqlite3 module keeps per connection (its default: 128). Threads share the
# pool's connections, so each sees nearly every statement of the process: a one-process hub at
# 1,000 events/s with 100 rules ran 124 distinct statements besides the migrations' 57 (651 before
# `precompiled.padded`). Past the cache, a statement is prepared again (parsed and planned) on every run.
CACHED_STATEMENTS = 512


# A PostgreSQL transaction idle this many leases (HUB_LEASE_SECONDS) between two statements is ended by the server,
# never sooner than `IDLE_IN_TRANSACTION_AT_LEAST`. No transaction of the hub waits between its statements on
# anything but its own code (sends happen between transactions), so one idle that long is a stalled node's: a paused
# VM, a SIGSTOP, a node partitioned away. It holds the profiles lock (`sql.lock_profiles`) and its claimed rows, and
# every other node's pipeline and timers waited for it with no end. Only the gaps between statements count: a long
# replay or forget is busy in statements, and the migrations' passes over data (i10, i17, i18) compute between two
# of them for a moment per hundred thousand rows, far below two minutes at the default lease.
IDLE_IN_TRANSACTION_LEASES = 2
# Below this a busy CPU or a garbage collection between two statements of a batch could end it (tests lease 0.05 s).
IDLE_IN_TRANSACTION_AT_LEAST = timedelta(seconds=2)
# The default of HUB_SQLITE_LOCK_TIMEOUT_SECONDS: how long a SQLite write waits for another's, first on the hub's
# writer lock (`writer_lock`, StoreBusyError naming the holder), then on SQLite's own lock for a writer outside it
# (a sqlite3 shell, a backup) as the busy timeout ("database is locked"). Holding either longer is a problem to
# report, not to wait out; the hub's own writes hold them for milliseconds, a migration's passes over data longer.
SQLITE_LOCK_TIMEOUT_SECONDS = 30.0
# libpq's TCP keepalives: a connection whose other end is gone (a server that died, a network partition) is found
# dead after about a minute (idle 30 s, then 3 probes 10 s apart) instead of the kernel's two hours, so a node
# waiting on a lock on it gets an error and its worker carries on. A URL's own setting of any of them wins.
TCP_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
# The SQLite file each engine opened first, as (st_dev, st_ino): `opened_file`.
_OPENED_FILES: WeakKeyDictionary[Engine, tuple[int, int]] = WeakKeyDictionary()


def create_store_engine(
    url: str, lease: timedelta | None = None, lock_timeout: float = SQLITE_LOCK_TIMEOUT_SECONDS
) -> Engine:
    """The engine for `url`; on PostgreSQL a transaction idle for `IDLE_IN_TRANSACTION_LEASES` of `lease` is ended
    (none is, without a lease), on SQLite a statement waits `lock_timeout` seconds for another connection's write
    lock (HUB_SQLITE_LOCK_TIMEOUT_SECONDS)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True, future=True, hide_parameters=True,
                               connect_args=_postgresql_session(parsed, lease))
        event.listen(engine, "handle_error", hide_row_values_of)
        return engine
    database = parsed.database if parsed.database != ":memory:" else None  # the file's name: none in memory
    if database:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True, hide_parameters=True, json_serializer=json_text.dumps, json_deserializer=json_text.loads,
                           connect_args={"check_same_thread": False, "timeout": lock_timeout,
                                         "cached_statements": CACHED_STATEMENTS})
    event.listen(engine, "connect", _configure_sqlite_connection)
    if database:
        event.listen(engine, "connect", _remembering_file(engine, Path(database)))
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def opened_file(engine: Engine) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the SQLite file `engine` opened first; None before its first connection, or for a name
    that is no file's (a `file:` URI, memory).

    A file deleted (or replaced) under a running hub is not noticed by SQLite: the pooled connections write on into
    the unlinked file, and a connection opened later makes a new, empty one at the path. Readiness compares the path's
    file with this one (`readiness`)."""
    return _OPENED_FILES.get(engine)


def _remembering_file(engine: Engine, path: Path) -> Callable[[Any, Any], None]:
    """A "connect" listener that records the file at `path` (the engine's database) its first connection opened;
    later ones keep it, since a connection opened after the file was replaced opens the replacement."""

    def remember(_dbapi_connection: Any, _record: Any) -> None:
        if engine in _OPENED_FILES:
            return
        if opened := file_identity(path):  # none for a `file:` URI
            _OPENED_FILES.setdefault(engine, opened)

    return remember


def file_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at `path`, None when there is none, in one stat."""
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):  # what `Path.exists` takes for "no file"
        return None
    return found.st_dev, found.st_ino


def _postgresql_session(parsed: URL, lease: timedelta | None) -> dict[str, Any]:
    """libpq connection parameters: `TCP_KEEPALIVES`, and the server's idle-in-transaction timeout in `options`,
    before the URL's own `options` (of two settings of one parameter there, the last wins: the URL's)."""
    if parsed.get_backend_name() != "postgresql":
        return {}
    session: dict[str, Any] = {key: value for key, value in TCP_KEEPALIVES.items() if key not in parsed.query}
    if lease is not None:
        idle = max(lease * IDLE_IN_TRANSACTION_LEASES, IDLE_IN_TRANSACTION_AT_LEAST)
        given = parsed.query.get("options", ())
        session["options"] = " ".join([
            f"-c idle_in_transaction_session_timeout={round(idle.total_seconds() * 1000)}",
            *([given] if isinstance(given, str) else given),
        ])
    return session


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module, which would
    # otherwise open transactions lazily, only before the first write.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    # 64 MiB of page cache instead of 2: identity lookups and inserts land on random
    # pages of the identifiers index, and re-reading them from the OS halved throughput.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    # The pipeline runs each batch inside a savepoint, so SQLite keeps the first image of every page
    # the batch changes in a sub-journal, a temporary file by default: a write(2) per page, 12 of
    # the 30 microseconds a touchpoint insert took at 100,000 touchpoints. In memory it is a copy.
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    read_only = connection.get_execution_options().get(_READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that may write; committed on success, rolled back on error."""
    with engine.connect() as connection, connection.begin():
        yield connection


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A consistent read that never takes the write lock."""
    with engine.connect() as connection:
        connection = connection.execution_options(**{_READ_ONLY: True})
        with connection.begin():
            yield connection
