"""Small SQL helpers whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Column, ColumnElement, Connection, Executable, Table, and_, bindparam, func, literal, or_, select, type_coerce, update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import NullType
from sqlalchemy.sql.schema import ScalarElementColumnDefault
from sqlalchemy.types import Float

from hub.store.precompiled import Precompiled, padded

MAX_INTEGER = 2**63 - 1  # the largest integer SQLite can bind (and PostgreSQL's bigint holds)

# The key of the PostgreSQL advisory lock `lock_profiles` takes (any fixed bigint; this spells "tp-hub").
PROFILES_LOCK_KEY = 0x74702D687562


def insert_ignoring_conflicts(
    connection: Connection, table: Table, rows: Sequence[dict[str, Any]], conflict_columns: Sequence[str]
) -> int:
    """Insert rows, silently skipping those whose key already exists; returns how many were new.

    This is how the hub stays idempotent: a duplicate event, touchpoint or
    delivery is acknowledged but never stored twice.
    """
    if not rows:
        return 0
    statement = _insert_skipping(connection.dialect.name, table, tuple(conflict_columns))
    inserted = 0
    for row in rows:  # per row: executemany's rowcount is not reliable for ON CONFLICT on every driver
        # SQLAlchemy keeps rowcount only for UPDATE and DELETE unless asked: psycopg's INSERTs said -1.
        inserted += connection.execute(statement, row, execution_options={"preserve_rowcount": True}).rowcount
    return inserted


class NewRows:
    """Insert rows of `key`'s table in one statement, skipping those whose `key` already exists; returns the keys
    that were new (RETURNING names the rows actually inserted, so a caller plans what follows only for those).

    The batched form of `insert_ignoring_conflicts`, for the pipeline's decisions and deliveries: a multi-row
    INSERT ... ON CONFLICT DO NOTHING RETURNING key, `Precompiled` once per row count (and set of columns:
    those of the first row, which every row must have). Rows go in chunks of at most `CHUNK`, each
    `padded` to a power of two (the repeated row conflicts with itself and is skipped), which bounds the
    statements kept to six per set of columns while a chunk still costs a third less than running the
    one-row statement per row (on SQLite, 12 rows: 9.6 against 13.4 microseconds a row; 15 through
    `Connection.execute`, 48 for one row).
    """

    CHUNK = 32

    def __init__(self, key: Column[Any]) -> None:
        assert isinstance(key.table, Table)
        self._table, self._key = key.table, key
        self._statements: dict[tuple[tuple[str, ...], int], Precompiled] = {}

    def __call__(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> set[Any]:
        new: set[Any] = set()
        for start in range(0, len(rows), self.CHUNK):
            chunk = padded(rows[start:start + self.CHUNK])  # a repeated row is a conflict, skipped
            columns = tuple(chunk[0])
            values = {f"r{n}_{name}": row[name] for n, row in enumerate(chunk) for name in columns}
            new.update(key for (key,) in self._for(columns, len(chunk)).execute(connection, values))
        return new

    def _for(self, columns: tuple[str, ...], count: int) -> Precompiled:
        statement = self._statements.get((columns, count))
        if statement is None:
            statement = self._statements[columns, count] = Precompiled(lambda dialect: self._statement(dialect, columns, count))
        return statement

    def _statement(self, dialect: str, columns: tuple[str, ...], count: int) -> Executable:
        # Typed parameters: in a multi-row VALUES only the first row's take their column's type by themselves.
        # Columns left out get their Python-side defaults as literals: SQLAlchemy computes those per execution.
        defaults = {
            column.name: literal(column.default.arg, column.type) for column in self._table.c
            if column.name not in columns and isinstance(column.default, ScalarElementColumnDefault)
        }
        rows = [
            {**{name: bindparam(f"r{n}_{name}", type_=self._table.c[name].type) for name in columns}, **defaults}
            for n in range(count)
        ]
        return _insert_skipping(dialect, self._table, (self._key.name,)).values(rows).returning(self._key)


def precompiled_insert_skipping(table: Table, conflict_columns: Sequence[str], columns: Sequence[str]) -> Precompiled:
    """`insert_ignoring_conflicts`'s statement (setting `columns`) as a `Precompiled`, for the pipeline's
    per-event inserts; `Precompiled.changed` tells whether one row was new."""
    return Precompiled(lambda dialect: _insert_skipping(dialect, table, tuple(conflict_columns)), columns)


@lru_cache(maxsize=64)
def _insert_skipping(dialect: str, table: Table, conflict_columns: tuple[str, ...]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING spelled for the database; built once per table, as the pipeline
    runs these for every event and building one costs more than running it."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing(index_elements=list(conflict_columns))


def upsert(connection: Connection, table: Table, rows: Sequence[dict[str, Any]], conflict_columns: Sequence[str]) -> None:
    """Insert rows, or update those whose key exists: INSERT ... ON CONFLICT DO UPDATE, spelled for the
    database. A delete then insert is not safe beside a concurrent writer on PostgreSQL: neither sees the
    other's new row, and the second insert breaks the key."""
    if not rows:
        return
    dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = dialect_insert(table)
    updated = {column.name: statement.excluded[column.name] for column in table.columns if column.name not in conflict_columns}
    connection.execute(statement.on_conflict_do_update(index_elements=list(conflict_columns), set_=updated), list(rows))


class Claim:
    """Work rows taken and leased in one prebuilt statement, on both databases:

        UPDATE table SET <lease> WHERE key IN (SELECT key FROM table WHERE <ready> ORDER BY <order...>
            LIMIT :p_limit [FOR UPDATE SKIP LOCKED]) RETURNING <order...>, <columns>

    On PostgreSQL the picked rows are locked with SKIP LOCKED, so concurrent
    workers take disjoint rows (SQLite leaves FOR UPDATE out: there the
    surrounding BEGIN IMMEDIATE transaction already serializes claimers).
    `Precompiled`, as each worker claims once per batch and building and
    compiling a SELECT and an UPDATE ... IN (keys) cost more than running them.
    RETURNING shows the rows as the lease left them, and in no promised order:
    they are sorted by `order` here. `ready` and `lease` may use bind
    parameters, given by name on each call. `order` should be an index's
    columns after those `ready` pins by equality: the pick then walks the
    index and stops at the limit, where any other order sorts every ready
    row first, on each claim, which grows with the backlog.
    """

    def __init__(self, key: Column[Any], columns: Sequence[ColumnElement[Any]], ready: ColumnElement[bool],
                 order: Sequence[Column[Any]], lease: Mapping[str, Any]) -> None:
        table = key.table
        picked = select(key).where(ready).order_by(*order).limit(bindparam("p_limit")).with_for_update(skip_locked=True)
        self._statement = Precompiled(update(table).where(key.in_(picked.scalar_subquery())).values(lease).returning(*order, *columns))
        self._ordered_by = len(order)  # RETURNING's leading columns, sorted on

    def __call__(self, connection: Connection, limit: int, **values: Any) -> list[tuple[Any, ...]]:
        """Up to `limit` rows, each its `columns`, in `order`."""
        rows = self._statement.execute(connection, {"p_limit": limit, **values})
        rows.sort(key=itemgetter(slice(self._ordered_by)))
        return [row[self._ordered_by:] for row in rows]


def due_claim(key: Column[Any], columns: Sequence[Column[Any]], waiting: ColumnElement[bool], due_at: Column[Any]) -> Claim:
    """A `Claim` of rows that are `waiting` and due by `p_now`, earliest first, leased until `p_until`.

    The lease is the table's ``claimed_until``: rows a live worker holds are
    skipped, and a dead worker's rows come back once its lease runs out. Each
    row is `key` followed by `columns`.
    """
    ready = due_ready(waiting, due_at, bindparam("p_now", type_=due_at.type))
    return Claim(key, (key, *columns), ready, (due_at,), {"claimed_until": bindparam("p_until", type_=due_at.type)})


def due_ready(waiting: ColumnElement[bool], due_at: Column[Any], now: Any) -> ColumnElement[bool]:
    """Rows `waiting`, due by `now` and held by no live worker (`claimed_until` unset or past): what a `due_claim`
    picks, and what a worker reads, keys only, to claim them one by one after a claim that failed
    (`outbox.due_ids`, `timers.due_keys`). `now` is a time or a bind parameter."""
    table = due_at.table
    assert isinstance(table, Table)
    return and_(waiting, due_at <= now, or_(table.c.claimed_until.is_(None), table.c.claimed_until < now))


def query_plan(connection: Connection, statement: str, parameters: Any) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of a statement as a driver ran it, one step per line: whether it searches
    an index or walks a table, and whether it sorts first (a bench's report, a test's assertion)."""
    return [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()]


class SecondsBetween(FunctionElement[float]):
    """`later - earlier` in seconds, for two stored times of one row: to compare a row's own span in SQL (a
    timer's wait) instead of reading every row out. On SQLite, julianday keeps each time in whole milliseconds
    (rounded), so a span may be off by up to 1 ms, and the days-to-seconds float by some microseconds more;
    PostgreSQL's is exact to the microsecond."""

    type = Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(SecondsBetween, "sqlite")
def _seconds_between_sqlite(element: SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({later}) - julianday({earlier})) * 86400.0)"


@compiles(SecondsBetween, "postgresql")
def _seconds_between_postgresql(element: SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"


def lock_profiles(connection: Connection) -> None:
    """Hold the lock on profile state (identity graph, traits, per-profile caps) until the transaction ends.

    Whoever changes profiles reads first and writes from what it read: is this
    identifier new, which profiles merge, which traits are newer, has this
    person had an SMS today. Two transactions deciding from the same snapshot
    would create two profiles for one email, or lose an opt-out. On SQLite the
    write transaction already holds the database's one write lock (BEGIN
    IMMEDIATE); on PostgreSQL, where writers run side by side under READ
    COMMITTED, a transaction-scoped advisory lock gives the same guarantee to
    profile writers only, while ingest and delivery keep running in parallel.
    Take it before the first read of profile state. Taken inside a savepoint,
    rolling back to that savepoint releases it: a caller whose savepoints each
    write profiles (a pipeline batch) takes it once, before the first.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(PROFILES_LOCK_KEY)))


def as_stored(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """`column` read as the driver gives it, for `read_stored` to convert row by row: a value written by hand or by
    an older version that its type cannot read (a time no calendar has) raised out of the whole read otherwise."""
    return type_coerce(column, NullType())


def read_stored(connection: Connection, column: ColumnElement[Any]) -> Callable[[object], Any]:
    """What converts `column`'s stored values as its type would, raising ValueError or TypeError for one it cannot
    read (`as_stored`)."""
    return column.type.result_processor(connection.dialect, None) or (lambda value: value)
