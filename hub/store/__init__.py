"""Persistence behind one interface.

`Store` owns the engine and hands out transactions; the modules beside it
(`inbox`, `touchpoints`, `identity_graph`, `outbox`, ...) are plain functions
over a `Connection`, so one pipeline step can compose several of them in a
single atomic transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, select, text

from hub.errors import ConfigError
from hub.secret_urls import shown_url
from hub.store.engine import SQLITE_LOCK_TIMEOUT_SECONDS, create_store_engine, read_transaction, write_transaction
from hub.store.writer_lock import writer_lock

MIGRATIONS = Path(__file__).with_name("migrations")
# The key of the PostgreSQL advisory lock the migrations run under (any fixed bigint but `sql.PROFILES_LOCK_KEY`;
# this spells "tp-mig").
MIGRATIONS_LOCK_KEY = 0x74702D6D6967


class Store:
    """The hub's database: SQLite by default, PostgreSQL for many nodes."""

    def __init__(
        self, url: str, lease: timedelta | None = None, lock_timeout: float = SQLITE_LOCK_TIMEOUT_SECONDS
    ) -> None:
        """`lease`: how long a claimed row stays with its worker (HUB_LEASE_SECONDS); on PostgreSQL it bounds how
        long a stalled node's transaction may hold what others wait for (`create_store_engine`). `lock_timeout`:
        on SQLite, how long a write waits for another's (HUB_SQLITE_LOCK_TIMEOUT_SECONDS)."""
        self.url = url
        self.engine = create_store_engine(url, lease, lock_timeout)
        # SQLite has one writer at a time. Writers queue on a lock, woken the
        # moment it is free, instead of in SQLite's busy handler, which sleeps
        # and polls (up to 100 ms a nap): it starved ingest while the pipeline
        # committed, and a pipeline in one process behind the timer and
        # delivery workers of another (HUB_WORKERS) queued for seconds.
        self._write_lock = writer_lock(self.engine, lock_timeout)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._write_lock, write_transaction(self.engine) as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with read_transaction(self.engine) as connection:
            yield connection

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to `revision`; safe to run on every start, by every node at once.

        A store already at head, every start but the first after an upgrade,
        is left as it is without alembic: its upgrade reads the migrations'
        files anew each time, about 0.1 s for the start of every hub, worker
        and CLI command that opens the store. A schema a newer hub migrated
        (a rolling upgrade) is a ConfigError saying to run that release.
        """
        with self.write() as connection:
            _one_migrator_at_a_time(connection)
            if revision == "head" and is_at_head(connection):
                return
            if newer := newer_revisions(connection):  # alembic's "Can't locate revision" otherwise, a traceback
                raise newer_schema(self.url, newer)
            command.upgrade(_alembic_config(connection), revision)

    def is_current(self) -> bool:
        """Whether the schema is at this hub's newest migration (a store an older hub made is not)."""
        with self.read() as connection:
            return is_at_head(connection)

    def dispose(self) -> None:
        self.engine.dispose()
        self._write_lock.close()


def _one_migrator_at_a_time(connection: Connection) -> None:
    """Hold, until the transaction ends, the lock the migrations run under (PostgreSQL).

    Nodes of a deployment start together, and each migrates on start. On a
    new database, the second one's CREATE TABLE waited for the first one's
    and then failed on the catalog's unique key, and that node stopped. The
    upgrade runs in this transaction (alembic joins one it is given), so the
    lock is held for all of it; a node that waited reads the schema the first
    left (READ COMMITTED reads anew each statement), at head, and has nothing
    to do. SQLite's writers already queue (`write`).

    The session's idle-in-transaction timeout (`engine`, from the lease) is
    lifted for this transaction: alembic imports each migration's module in
    it, between statements, and a node with a short lease was cut off
    mid-upgrade on a busy box.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
        connection.execute(select(func.pg_advisory_xact_lock(MIGRATIONS_LOCK_KEY)))


def is_at_head(connection: Connection) -> bool:
    """Whether the schema `connection` sees is at this hub's newest migrations (readiness asks in its own read)."""
    return set(MigrationContext.configure(connection).get_current_heads()) == _heads()


def newer_revisions(connection: Connection) -> list[str]:
    """The revisions the schema `connection` sees is at that are none of this hub's migrations: a newer hub's,
    which migrated the store in a rolling upgrade. This hub can neither use that schema nor migrate from it."""
    return sorted(set(MigrationContext.configure(connection).get_current_heads()) - _revisions())


def newer_schema(url: str, revisions: list[str]) -> ConfigError:
    """What a node of an older release says on a store a newer one migrated (`newer_revisions`)."""
    return ConfigError([
        f"HUB_DATABASE_URL={shown_url(url)}: the schema is from a newer hub (revision {', '.join(revisions)})",
        "run that release or newer; this one can neither read the schema nor migrate it back",
    ])


@cache
def _heads() -> frozenset[str]:
    """This hub's newest migrations, read from their files once a process: they do not change under it."""
    return frozenset(_scripts().get_heads())


@cache
def _revisions() -> frozenset[str]:
    """Every migration of this hub, read from their files once a process."""
    return frozenset(script.revision for script in _scripts().walk_revisions())


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config(None))


def _alembic_config(connection: Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config
