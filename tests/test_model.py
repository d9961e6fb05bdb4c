"""Deterministic ids: stored touchpoint, decision and delivery ids depend on `derived_id` never changing."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from hub.model import HUB_NAMESPACE, derived_id


def test_a_touchpoint_id_is_the_one_every_earlier_version_derived() -> None:
    assert derived_id("segment", "msg-1") == "4f53fbbb-68e0-5ccb-ad52-1fc0f4f3bcf6"


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_derived_ids_are_uuid5_over_the_joined_parts(parts: list[str]) -> None:
    assert derived_id(*parts) == str(uuid.uuid5(HUB_NAMESPACE, "\x1f".join(parts)))
