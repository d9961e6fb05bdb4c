"""Statements run as the driver's own SQL (`Precompiled`), and IN lists they can hold (`InLists`).

On this store the time per event goes mostly into running statements, and
for small statements SQLAlchemy's work per execution cost several times
SQLite's own: the hot paths compile each statement once per dialect and
hand the driver its text and converted values.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import BindParameter, Column, ColumnElement, Connection, Dialect, Executable, bindparam, select
from sqlalchemy.exc import DBAPIError

from hub.store.driver_errors import hide_row_values

T = TypeVar("T")


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
            # Its message would quote the values (a person's email, a device token) unless the engine hides them.
            hide_row_values(error)
            raise DBAPIError.instance(
                driver.sql, values, error, dbapi_error, hide_parameters=connection.engine.hide_parameters
            ) from error
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
