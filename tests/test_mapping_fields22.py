"""What the mappings keep of a message: a page's or screen's name and category, an event name sent with spaces."""

from __future__ import annotations

from typing import Any

import pytest

from hub.mapping import MappingSpec, compile_mapping, load_mapping
from hub.model import RawEvent, Touchpoint
from hub.normalize import normalize
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import message
from tests.test_mappings import BASE, RECEIVED

SEGMENT_SPEC_MAPPINGS = ["segment.yaml", "rudderstack.yaml"]


def shipped(mapping_file: str, payload: dict[str, Any]) -> Touchpoint:
    """`payload` as the shipped mapping `mapping_file` takes it."""
    mapping = load_mapping(PROJECT_MAPPINGS / mapping_file)
    return normalize(RawEvent("src", payload["messageId"], payload), mapping, RECEIVED, "US")


@pytest.mark.parametrize("mapping_file", SEGMENT_SPEC_MAPPINGS)
@pytest.mark.parametrize("type_", ["page", "screen"])
def test_the_name_and_category_of_a_page_or_screen_call_reach_the_touchpoint(mapping_file: str, type_: str) -> None:
    """analytics-python, the mobile SDKs and RudderStack send a page's or screen's `name` and `category` at the top
    level of the message only: the shipped mappings dropped them, so `screen("Checkout")` became a touchpoint
    `screen` with no trace of which screen, and no rule could tell the checkout screen from any other."""
    call = message(type_, userId="u1", name="Checkout", category="Shop", properties={"path": "/checkout"},
                   timestamp=RECEIVED.isoformat())
    touchpoint = shipped(mapping_file, call)
    assert touchpoint.properties == {"path": "/checkout", "name": "Checkout", "category": "Shop"}


@pytest.mark.parametrize("mapping_file", SEGMENT_SPEC_MAPPINGS)
def test_a_page_name_and_category_the_properties_hold_win_over_the_top_level_ones(mapping_file: str) -> None:
    """A value `fields` finds replaces the one in `properties`; the page's own `properties.name` and
    `properties.category` (what analytics.js sends, and what the sender set there on purpose) are kept, and a
    track call's top-level keys stay out of its properties."""
    page = message("page", userId="u1", name="Checkout", category="Shop",
                   properties={"name": "Checkout - step 2", "category": "Cart"}, timestamp=RECEIVED.isoformat())
    track = message(userId="u1", event="Product Viewed", name="Checkout", category="Shop",
                    properties={"sku": "p-1"}, timestamp=RECEIVED.isoformat())
    assert shipped(mapping_file, page).properties == {"name": "Checkout - step 2", "category": "Cart"}
    assert shipped(mapping_file, track).properties == {"sku": "p-1"}


def test_a_value_map_applies_to_an_event_name_sent_with_trailing_spaces() -> None:
    """The name was trimmed for the `events` table and for storage, but the value map was looked up untrimmed:
    `"deal.creation "` stayed `deal.creation`, got the default stage, and no rule on `Deal Created` saw it."""
    spec = MappingSpec.model_validate({
        **BASE, "value_maps": {"event": {"deal.creation": "Deal Created"}},
        "events": {"Deal Created": {"stage": "decision", "moment": "deal_opened"}},
    })
    payload = {"name": "deal.creation ", "uid": "u1", "at": RECEIVED.isoformat()}
    touchpoint = normalize(RawEvent("src", "m-1", payload), compile_mapping("test", spec), RECEIVED, "US")
    assert (touchpoint.event, touchpoint.stage, touchpoint.moment) == ("Deal Created", "decision", "deal_opened")
