"""Deterministic ids: stored touchpoint, decision and delivery ids depend on `derived_id` and `ordered_id` never changing."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from hub.model import HUB_NAMESPACE, derived_id, ordered_id

UTC = timezone.utc
moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC))


def test_a_touchpoint_id_is_the_one_every_earlier_version_derived() -> None:
    assert derived_id("segment", "msg-1") == "4f53fbbb-68e0-5ccb-ad52-1fc0f4f3bcf6"


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_derived_ids_are_uuid5_over_the_joined_parts(parts: list[str]) -> None:
    assert derived_id(*parts) == str(uuid.uuid5(HUB_NAMESPACE, "\x1f".join(parts)))


def test_an_ordered_id_is_the_one_every_version_since_it_came_derives() -> None:
    at = datetime(2026, 12, 6, 6, 30, tzinfo=UTC)
    assert ordered_id(at, "decision", "r", "t") == "01a24a0b-8a40-8817-b06c-d183c54d5e87"


@given(moments, st.lists(st.text(), min_size=1, max_size=4))
def test_an_ordered_id_is_a_uuid8_of_the_time_in_milliseconds_and_the_parts_hash(at: datetime, parts: list[str]) -> None:
    made = uuid.UUID(ordered_id(at, *parts))
    assert (made.version, made.variant) == (8, uuid.RFC_4122)
    assert made.int >> 80 == (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    named = uuid.UUID(derived_id(*parts))
    low_bits_but_version = (1 << 80) - 1 & ~(0xF << 76)
    assert made.int & low_bits_but_version == named.int & low_bits_but_version


@given(moments, moments, st.lists(st.text(), min_size=1, max_size=3), st.lists(st.text(), min_size=1, max_size=3))
def test_ordered_ids_sort_as_text_by_their_time(first: datetime, second: datetime, parts_a: list[str], parts_b: list[str]) -> None:
    earlier, later = sorted((first, second))
    if _to_the_millisecond(earlier) != _to_the_millisecond(later):
        assert ordered_id(earlier, *parts_a) < ordered_id(later, *parts_b)


def _to_the_millisecond(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond - at.microsecond % 1000)
