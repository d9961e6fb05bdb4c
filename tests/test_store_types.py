"""The store's own type conversions write and read exactly what SQLAlchemy's would."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from hub.store.schema import UTCDateTime

SQLITE = sqlite.dialect()
OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
# Aware datetimes whose UTC instant stays inside datetime's range, microseconds of 0 included.
AWARE = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=OFFSETS)


def _processors(type_: UTCDateTime | DateTime) -> tuple:
    impl = type_.dialect_impl(SQLITE)
    return impl.bind_processor(SQLITE), impl.result_processor(SQLITE, None)


@given(AWARE, AWARE)
def test_sqlite_text_is_sqlalchemys_and_reads_back_as_the_same_utc_instant(first: datetime, second: datetime) -> None:
    bind, result = _processors(UTCDateTime())
    sqlalchemy_bind, _ = _processors(DateTime(timezone=True))
    text = bind(first)
    assert text == sqlalchemy_bind(first.astimezone(timezone.utc))
    back = result(text)
    assert back == first and back.tzinfo is timezone.utc
    assert (text < bind(second)) == (first < second)  # SQL compares and orders the text as the instants


def test_sqlite_text_keeps_zero_microseconds_and_refuses_naive_datetimes() -> None:
    bind, result = _processors(UTCDateTime())
    assert bind(datetime(2026, 12, 2, 9, 13, tzinfo=timezone.utc)) == "2026-12-02 09:13:00.000000"
    assert bind(None) is None and result(None) is None
    assert result("2026-12-02 09:13:00") == datetime(2026, 12, 2, 9, 13, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        bind(datetime(2026, 12, 2))
