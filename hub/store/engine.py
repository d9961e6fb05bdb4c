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
advisory lock instead (both in `hub.store.sql`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

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


def create_store_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True, future=True, hide_parameters=True)
        event.listen(engine, "handle_error", hide_row_values_of)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True, hide_parameters=True, json_serializer=json_text.dumps, json_deserializer=json_text.loads,
                           connect_args={"check_same_thread": False, "timeout": 30, "cached_statements": CACHED_STATEMENTS})
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module, which would
    # otherwise open transactions lazily, only before the first write.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
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
