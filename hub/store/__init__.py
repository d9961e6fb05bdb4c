"""Persistence behind one interface.

`Store` owns the engine and hands out transactions; the modules beside it
(`inbox`, `touchpoints`, `identity_graph`, `outbox`, ...) are plain functions
over a `Connection`, so one pipeline step can compose several of them in a
single atomic transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from hub.store.engine import create_store_engine, read_transaction, write_transaction
from hub.store.writer_lock import writer_lock

MIGRATIONS = Path(__file__).with_name("migrations")


class Store:
    """The hub's database: SQLite by default, PostgreSQL for many nodes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_store_engine(url)
        # SQLite has one writer at a time. Writers queue on a lock, woken the
        # moment it is free, instead of in SQLite's busy handler, which sleeps
        # and polls (up to 100 ms a nap): it starved ingest while the pipeline
        # committed, and a pipeline in one process behind the timer and
        # delivery workers of another (HUB_WORKERS) queued for seconds.
        self._write_lock = writer_lock(self.engine)

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
        """Bring the schema to `revision`; safe to run on every start."""
        with self.write() as connection:
            command.upgrade(_alembic_config(connection), revision)

    def is_migrated(self) -> bool:
        with self.read() as connection:
            return inspect(connection).has_table("alembic_version")

    def is_current(self) -> bool:
        """Whether the schema is at this hub's newest migration (a store an older hub made is not)."""
        with self.read() as connection:
            heads = set(MigrationContext.configure(connection).get_current_heads())
        return heads == set(ScriptDirectory.from_config(_alembic_config(None)).get_heads())

    def dispose(self) -> None:
        self.engine.dispose()
        self._write_lock.close()


def _alembic_config(connection: Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config
