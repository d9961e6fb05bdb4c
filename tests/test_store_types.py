"""The store's own type conversions write and read exactly what SQLAlchemy's would."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from hub.store import json_text
from hub.store.schema import UTCDateTime

SQLITE = sqlite.dialect()


class Level(IntEnum):
    HIGH = 3
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


# JSON values of every kind the json module writes, the corners orjson treats differently included.
NUMBERS = st.one_of(st.integers(), st.integers(-2**70, 2**70), st.floats(), st.just(float("nan")))
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)  # lone surrogates too
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4),
                                                      st.dictionaries(st.integers(), inner, max_size=2)), max_leaves=12)


@given(VALUES)
def test_json_text_holds_the_document_json_would_write(value: Any) -> None:
    expected = json.dumps(value)
    assert json.dumps(json_text.loads(json_text.dumps(value))) == expected  # NaN compares unequal; its text does not
    assert json.dumps(json_text.loads(expected)) == expected  # rows json wrote read back as json read them


@given(st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,3})?", fullmatch=True))
def test_json_text_reads_numbers_as_json_does(number: str) -> None:
    assert repr(json_text.loads(f"[{number}]")) == repr(json.loads(f"[{number}]"))  # int or float, and which float


def test_json_text_refuses_and_converts_what_json_does() -> None:
    assert json_text.dumps({"level": Level.HIGH, 1: None}) == json.dumps({"level": Level.HIGH, 1: None})
    with pytest.raises(TypeError):
        json_text.dumps({"at": datetime(2026, 12, 2, tzinfo=timezone.utc)})


def test_the_two_instants_of_a_repeated_hour_bind_apart() -> None:
    """Binds are cached, and the two 01:30s of the night New York's clocks go back compare equal: each is its own
    instant in the store."""
    bind = UTCDateTime().bind_processor(SQLITE)
    first = datetime(2026, 11, 1, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    assert (bind(first), bind(first.replace(fold=1))) == ("2026-11-01 05:30:00.000000", "2026-11-01 06:30:00.000000")
