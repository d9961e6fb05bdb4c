"""Small SQL helpers whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import BindParameter, Column, ColumnElement, Connection, Dialect, Executable, Table, and_, bindparam, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.schema import ScalarElementColumnDefault

# The key of the PostgreSQL advisory lock `lock_profiles` takes (any fixed bigint; this spells "tp-hub").
PROFILES_LOCK_KEY = 0x74702D687562

T = TypeVar("T")


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
    table = key.table
    assert isinstance(table, Table)
    now = bindparam("p_now", type_=due_at.type)
    ready = and_(waiting, due_at <= now, or_(table.c.claimed_until.is_(None), table.c.claimed_until < now))
    return Claim(key, (key, *columns), ready, (due_at,), {"claimed_until": bindparam("p_until", type_=due_at.type)})


def query_plan(connection: Connection, statement: str, parameters: Any) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of a statement as a driver ran it, one step per line: whether it searches
    an index or walks a table, and whether it sorts first (a bench's report, a test's assertion)."""
    return [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()]


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


def numbered(values: Sequence[Any], prefix: str = "p") -> dict[str, Any]:
    """Parameters for a statement from `placeholders(len(values), prefix)`."""
    return {f"{prefix}{n}": value for n, value in enumerate(values)}


# Longer lists keep their length: that many values come only from a batch size set that high, and
# doubling them could pass a limit on bound parameters per statement (PostgreSQL's protocol: 65,535;
# SQLite as built by default: 32,766).
PADDED_UP_TO = 1024


def padded(values: Iterable[T]) -> list[T]:
    """The values as a list, the last repeated up to the next power of two in length (none stay none;
    more than `PADDED_UP_TO` stay as many).

    A prebuilt statement is compiled once per length of its lists or rows,
    and a set's lengths vary with what it holds: the timer engine, firing
    sets of up to 100 timers, compiled a statement for every new length it
    met, which cost a fifth of its time in a 10-second latency run, and kept
    180 statements where the sqlite3 module's per-connection cache held 128
    (SQLite then parses and plans a statement again on each run). Padded,
    lengths up to 128 take 8 statements, for at most twice the values, on
    statements where a repeated value or row changes nothing.
    """
    listed = list(values)
    count = len(listed)
    if 1 < count <= PADDED_UP_TO:
        listed += [listed[-1]] * ((1 << (count - 1).bit_length()) - count)
    return listed


def placeholders(count: int, prefix: str = "p") -> list[BindParameter[Any]]:
    """One bind parameter per value, for an IN a `Precompiled` statement can hold (an expanding IN is
    rendered again on every execution)."""
    return [bindparam(f"{prefix}{n}") for n in range(count)]


class InLists:
    """A statement with IN lists of any length, `Precompiled` once per length of each list.

    `Precompiled` runs a statement as it was compiled, so an IN takes one bind
    parameter per value (an expanding IN would be rendered again on every
    execution). The hub's lists are short (a touchpoint's identifiers, the
    profiles of a batch, a set's timers) and each is `padded` to a power of
    two, so lists of 1 to 128 values take 8 statements, not 128. `build`
    gets one list of placeholders per IN list and returns the statement; it
    must treat each list as a set (IN, an OR of equalities), where a value
    given twice means what it means once. Its other bind parameters are
    given by name on each run. A list that is empty matches nothing, so no
    statement runs and there are no rows.
    """

    def __init__(self, build: Callable[..., Executable]) -> None:
        self._build = build
        self._by_lengths: dict[tuple[int, ...], Precompiled] = {}

    def execute(self, connection: Connection, *lists: Collection[Any], **values: Any) -> list[tuple[Any, ...]]:
        if not all(lists):
            return []
        lists = tuple(map(padded, lists))
        lengths = tuple(map(len, lists))
        statement = self._by_lengths.get(lengths)
        if statement is None:
            prefixes = [f"in{n}_" for n in range(len(lists))]
            built = self._build(*(placeholders(length, prefix) for length, prefix in zip(lengths, prefixes)))
            statement = self._by_lengths[lengths] = Precompiled(built)
        for n, listed in enumerate(lists):
            values.update(numbered(list(listed), f"in{n}_"))
        return statement.execute(connection, values)


def rows_where_in(key: Column[Any], *columns: Column[Any], order_by: ColumnElement[Any] | None = None) -> InLists:
    """`SELECT columns WHERE key IN (values) [ORDER BY order_by]`."""
    def build(keys: list[BindParameter[Any]]) -> Any:
        query = select(*columns).where(key.in_(keys))
        return query if order_by is None else query.order_by(order_by)
    return InLists(build)


Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _DriverStatement:
    """A statement as one dialect's driver takes it: SQL text, its parameters in order, and their conversions."""

    sql: str
    # Per parameter, in the order a positional paramstyle binds them: its name and the column type's
    # Python-to-driver conversion.
    bind: tuple[tuple[str, Processor], ...]
    keys: tuple[str, ...]  # the name each takes in a named paramstyle's dict (SQLAlchemy may escape some)
    positional: bool
    result: tuple[Processor, ...]  # per result column: the driver-to-Python conversion

    literals: Mapping[str, Any]  # the values of the statement's own literals ("pending" in `status == "pending"`)

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        given = {**self.literals, **values} if self.literals else values
        converted = [given[name] if convert is None else convert(given[name]) for name, convert in self.bind]
        return tuple(converted) if self.positional else dict(zip(self.keys, converted))


class Precompiled:
    """A Core statement compiled once per dialect and then run as the driver's own SQL.

    `Connection.execute` of even a cached Core statement costs SQLAlchemy a
    cache-key walk of the statement, building its parameters, and a Row per
    result row: for the identity graph's small statements several times
    SQLite's own time. Here the statement is compiled once per dialect (so it
    stays spelled right for SQLite and PostgreSQL, paramstyle included), and
    each run only converts the values with the columns' own type processors
    (JSON, UTC datetimes) and hands text and values to a cursor of the
    connection's driver connection, inside the connection's transaction.
    Even `exec_driver_sql` cost about as much again as the driver, for an
    execution context and a result object per statement; what it gave
    besides is kept: a transaction is begun if none is (as SQLAlchemy's
    autobegin would), driver errors are raised as SQLAlchemy's, and
    `before_cursor_execute` listeners (which count statements) are called,
    without an execution context. Not kept: the other statement events, and
    invalidating the pooled connection on a disconnect (the pool's pre-ping
    finds a dead one at its next checkout).

    The statement's parameters must all be explicit `bindparam`s (or, for an
    INSERT, the `columns` it sets); every one must be given on each run.
    Literals in the statement keep their own values. A statement whose
    spelling is the dialect's own (INSERT ... ON CONFLICT) is given as a
    function of the dialect's name, which builds it for that dialect.
    """

    def __init__(self, statement: Executable | Callable[[str], Executable], columns: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._columns = list(columns) if columns is not None else None
        self._compiled: WeakKeyDictionary[Dialect, _DriverStatement] = WeakKeyDictionary()

    def execute(self, connection: Connection, values: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Run with one set of values, or a list of many (the driver's executemany); the result rows, if any, as tuples."""
        driver, rows, _ = self._run(connection, values)
        if not any(driver.result):
            return rows
        return [tuple(v if convert is None else convert(v) for v, convert in zip(row, driver.result)) for row in rows]

    def changed(self, connection: Connection, values: Mapping[str, Any]) -> int:
        """Run with one set of values; how many rows it inserted, updated or deleted (the driver's rowcount).

        For one execution this is exact on both drivers, an INSERT ... ON
        CONFLICT DO NOTHING that skipped included (0). It is how a per-event
        insert learns whether its row was new without RETURNING: inside the
        pipeline's savepoint the touchpoint insert took SQLite 45 microseconds
        with it, 30 without (bench/README, sixth session).
        """
        return self._run(connection, values)[2]

    def _run(self, connection: Connection, values: Mapping[str, Any] | list[Mapping[str, Any]]) -> tuple[_DriverStatement, list[Any], int]:
        """The statement run on a cursor of the connection's driver connection: the statement as compiled,
        the rows it returned, the rows it changed."""
        driver = self._for(connection.dialect)
        if not connection.in_transaction():
            connection.begin()
        dbapi_error = connection.dialect.loaded_dbapi.Error
        cursor = connection.connection.cursor()
        try:
            many = isinstance(values, list)
            parameters = [driver.parameters(row) for row in values] if many else driver.parameters(values)
            if connection.dispatch.before_cursor_execute:  # a statement counter (tests, bench) listens
                connection.dispatch.before_cursor_execute(connection, cursor, driver.sql, parameters, None, many)
            (cursor.executemany if many else cursor.execute)(driver.sql, parameters)
            return driver, cursor.fetchall() if cursor.description is not None else [], cursor.rowcount
        except dbapi_error as error:
            raise DBAPIError.instance(driver.sql, values, error, dbapi_error) from error
        finally:
            cursor.close()

    def _for(self, dialect: Dialect) -> _DriverStatement:
        driver = self._compiled.get(dialect)
        if driver is None:
            driver = self._compiled[dialect] = self._compile(dialect)
        return driver

    def _compile(self, dialect: Dialect) -> _DriverStatement:
        statement = self._statement if isinstance(self._statement, Executable) else self._statement(dialect.name)
        compiled = statement.compile(dialect=dialect, column_keys=self._columns)
        # Both are SQLAlchemy's work per execution, which this class leaves out.
        if compiled.post_compile_params:
            raise ValueError(f"an expanding IN cannot be precompiled (use `placeholders` or literals): {compiled.string}")
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise ValueError(f"Python-side column defaults cannot be precompiled (give the values): {compiled.string}")
        names = tuple(compiled.positiontup or compiled.binds)
        columns = getattr(statement, "exported_columns", [])  # a SELECT's columns, or what DML RETURNs
        return _DriverStatement(
            sql=compiled.string,
            bind=tuple((name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names),
            keys=tuple(compiled.escaped_bind_names.get(name, name) for name in names),
            positional=compiled.positional,
            literals={name: bind.value for name, bind in compiled.binds.items() if not bind.required},
            result=tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns),
        )
