"""Keyset pagination of the admin API's lists, as Stripe and Svix page: newest first in a total order, and a page
is the rows strictly after the last row of the page before, by that row's key in that order.

Only `limit` of the newest rows could be read before, and paging the delivery log by hand with `until` skipped
the rows that shared the boundary time (planning stamps a batch with one `now`). The key ends in the primary
key, so rows sharing a time are neither skipped nor repeated, and rows added meanwhile (newer) come before
every page already read, so they shift none. The key travels to the client as an opaque cursor that names its
list: one list's cursor is refused by another, where it would page by the wrong columns.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import Column, Select, desc, tuple_

from hub.store.sql import MAX_INTEGER
from hub.utf8 import has_utf8_form

Key = tuple[Any, ...]
Row = TypeVar("Row", bound=Mapping[str, Any])


@dataclass(frozen=True)
class Keyset:
    """One list's order: `columns`, each newest (largest) first, the last of them its primary key. `name` says
    which list a cursor pages, in the error for another list's cursor."""

    name: str
    columns: tuple[Column[Any], ...]

    def newest_first(self, query: Select[Any], after: Key | None) -> Select[Any]:
        """`query` in this order and, after a key, only the rows past it. The first column's own bound beside the
        row comparison lets a planner range-scan an index on that column alone (touchpoints' `received_at`)."""
        query = query.order_by(*(desc(column) for column in self.columns))
        if after is None:
            return query
        return query.where(self.columns[0] <= after[0], tuple_(*self.columns) < tuple_(*after))

    def cursor(self, row: Mapping[str, Any]) -> str:
        """The opaque cursor of the rows after `row`: urlsafe base64 of this list's name and the row's key."""
        key = [row[column.key] for column in self.columns]
        text = json.dumps([self.name, [value.isoformat() if isinstance(value, datetime) else value for value in key]])
        return base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")

    def page(self, rows: Sequence[Row], limit: int) -> tuple[list[Row], str | None]:
        """The first `limit` of `rows`, read one row past the page, and the cursor of the rows after them: None when
        that row was not there, so the last page does not send the reader (the admin API's client, the CLI's user)
        after an empty one."""
        return list(rows[:limit]), self.cursor(rows[limit - 1]) if len(rows) > limit else None

    def after(self, cursor: str | None) -> Key | None:
        """The key a `cursor` of this list holds (None without one); ValueError saying what to do when it is
        malformed, altered, or another list's."""
        if cursor is None:
            return None
        name, values = _opened(cursor)
        if name != self.name:
            raise ValueError(f"it pages the {name}, not the {self.name}; pass a next_cursor this list answered")
        if not isinstance(values, list) or len(values) != len(self.columns):
            raise ValueError(_ALTERED)
        return tuple(_value(value, column) for value, column in zip(values, self.columns))


_ALTERED = "it is not one this hub gave (cut or altered); pass a next_cursor as answered, or none for the first page"


def _opened(cursor: str) -> tuple[str, Any]:
    """The list name and key values a cursor holds, or ValueError when it holds no such pair."""
    try:
        opened = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # not base64, not UTF-8, not JSON
        raise ValueError(_ALTERED) from None
    if not (isinstance(opened, list) and len(opened) == 2 and isinstance(opened[0], str)):
        raise ValueError(_ALTERED)
    return opened[0], opened[1]


def _value(value: Any, column: Column[Any]) -> Any:
    """A key value as `column` holds it, or ValueError: an altered cursor must be a 400, not a database error."""
    kind = getattr(column.type, "impl_instance", column.type).python_type  # a TypeDecorator's is its impl's
    if kind is datetime and isinstance(value, str):
        return _utc(value)
    if kind is int and type(value) is int and 0 <= value <= MAX_INTEGER:
        return value
    if kind is str and isinstance(value, str) and _storable(value, getattr(column.type, "length", None)):
        return value
    raise ValueError(_ALTERED)


def _utc(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError(_ALTERED)
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # not a time, or one past the calendar's ends in UTC
        raise ValueError(_ALTERED) from None


def _storable(text: str, length: int | None) -> bool:
    """Whether a database can bind `text`: PostgreSQL refuses a NUL and a lone surrogate, as errors."""
    return (length is None or len(text) <= length) and "\x00" not in text and has_utf8_form(text)


