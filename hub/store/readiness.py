"""Whether the hub can take events durably now: what /readyz judges, without writing.

Ingest's 2xx promises a durable write, and a database that answers reads may
still refuse every one: on PostgreSQL a hot standby or a session read-only by
default; on SQLite a file or folder the hub's user cannot write (a read-only
mount, another owner, an immutable file) or a disk about to be full. The
probe is polled every few seconds, so it judges by one short read transaction
and, on SQLite, a few stat calls: a trial write on each would queue behind
the writers it is meant to vouch for.

A SQLite file deleted or replaced under the hub (an `rm`, a volume swapped)
takes no error at all: the pooled connections write on into the unlinked
file, so every event acknowledged from then on is gone at the next start,
which makes a new, empty store. The path must still name the file the store
opened (`engine.opened_file`).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from hub.store import Store, is_at_head
from hub.store.engine import WAL_AUTOCHECKPOINT_PAGES, file_identity, opened_file
from hub.store.opening import why

NOT_CURRENT = "schema not at this hub's migrations; run touchhub migrate"
FILE_REPLACED = (
    "database: the database file {path} was deleted or replaced since the hub opened it, and events taken now would "
    "be lost; restart the hub"
)
MIB = 1024 * 1024
# SQLite's default page size, which the hub keeps.
SQLITE_PAGE_BYTES = 4096
# Free space in the SQLite store's folder below which the hub is not ready: a write that finds the disk full fails,
# and ingest answers 500. A checkpoint may extend the database file by the WAL's whole bound at once (its pages,
# when new ones, land past the end of the file while the WAL keeps its size), and past that, 64 MiB keeps ingest
# writing while the load balancer acts on the failing probe. Derived, not a setting: what it must cover is the
# hub's own, and an operator who wants an earlier warning watches the disk.
LEAST_FREE_BYTES = (math.ceil(WAL_AUTOCHECKPOINT_PAGES * SQLITE_PAGE_BYTES / MIB) + 64) * MIB
_READ_ONLY_POSTGRESQL = text("SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on'")


def not_ready_because(store: Store) -> str | None:
    """Why the hub cannot take events durably now, or None.

    A schema that merely exists is not enough (one rolled back to nothing keeps an empty alembic_version). A SQLite
    file is judged before it is read: one the hub cannot write may not open at all, and the driver's
    "unable to open database file" would not say why. A database that refuses connections is an answer for the
    load balancer, not a 500."""
    if store.dialect == "sqlite" and (problem := _sqlite_file_problem(store.engine)):
        return problem
    try:
        with store.read() as connection:
            if not is_at_head(connection):
                return NOT_CURRENT
            return _read_only_postgresql(connection) if store.dialect == "postgresql" else None
    except SQLAlchemyError as exc:
        return f"database: {database_problem(exc, store)}"


def _read_only_postgresql(connection: Connection) -> str | None:
    """The server in recovery, or the session read-only by default (set for the server, database or role, or in
    the URL's `options`): reads work there, every write fails."""
    in_recovery, read_only = connection.execute(_READ_ONLY_POSTGRESQL).one()
    if in_recovery:
        return "database: a hot standby, read-only while in recovery; point HUB_DATABASE_URL at the primary"
    if read_only:
        return (
            "database: its sessions are read-only (default_transaction_read_only is on); turn it off for the hub's "
            "database and role (ALTER DATABASE ... / ALTER ROLE ... SET default_transaction_read_only = off), or point "
            "HUB_DATABASE_URL at the primary"
        )
    return None


def _sqlite_file_problem(engine: Engine) -> str | None:
    """What stops writes to the SQLite file of `engine`, or the file at its path not being the one it opened;
    None in memory, or for a `file:` URI (no file by that name), where there is nothing on disk to judge."""
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    path = Path(database).absolute()
    found, opened = file_identity(path), opened_file(engine)
    if opened and found != opened:
        return FILE_REPLACED.format(path=path)
    if found is None:
        return None
    return _unwritable(path) or short_of_room(path.parent, shutil.disk_usage(path.parent).free)


def _unwritable(path: Path) -> str | None:
    """The database file or a WAL file beside it that this process cannot write (its modes and owner, a read-only
    mount, an immutable file), or the folder when a WAL file is missing and SQLite would have to make it there."""
    for each in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        if os.access(each, os.W_OK):
            continue
        if each.exists():
            return _cannot_write(each)
        if not os.access(path.parent, os.W_OK):
            return _cannot_write(path.parent)
    return None


def _cannot_write(path: Path) -> str:
    return (
        f"database: cannot write {path} (a read-only mount, another owner or its mode); give the hub's user write "
        "access to the database file, its folder and the -wal and -shm files beside it"
    )


def short_of_room(folder: Path, free: int) -> str | None:
    """Why `free` bytes in the store's `folder` (`shutil.disk_usage`'s, what an unprivileged user may take) are too
    few to take events, or None."""
    if free >= LEAST_FREE_BYTES:
        return None
    return (
        f"database: only {free // MIB} MiB free in {folder}, under the {LEAST_FREE_BYTES // MIB} MiB the hub needs "
        "to take events; free space on that disk or move the database to a larger one"
    )


def database_problem(exc: SQLAlchemyError, store: Store) -> str:
    """The driver's own words (`opening.why`), never the URL's password, and what to check: the answer goes to
    whoever can reach /readyz, or sent events."""
    problem = why(exc) or type(exc).__name__
    if password := store.engine.url.password:
        problem = problem.replace(password, "***")
    return f"{problem}; check that the database is up and HUB_DATABASE_URL points at it"
