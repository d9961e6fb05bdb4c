"""Mappings and webhook sources read as their documents say: a drop rule's `when` true as JMESPath judges it, a
hex signature in either case, identical items of one request kept as the events they are, and a mapping save
seen whatever the file system's clock granularity."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import pytest

from connectors.base import InboundRequest, Source
from connectors.sources.generic_hmac import GenericHmacSource
from connectors.sources.segment import SegmentSource
from hub.errors import AuthenticationError, EventDropped
from hub.mapping import MappingSpec, compile_mapping
from hub.mapping_catalog import MappingCatalog
from hub.model import RawEvent
from hub.normalize import normalize
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import RunningHub
from tests.test_mapping_edges import edit
from tests.test_mappings import BASE, RECEIVED
from tests.test_sources import build

URL = "https://hub.example.com/v1/webhooks/src"
SECRET = "s3cret"


# --- drop rules ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("when", "dropped"), [
    ("props.quantity", True),  # 0 is a value: JMESPath calls it true, as `props.quantity && 'x'` shows
    ("!props.quantity", False),
    ("props.quantity && `true`", True),
])
def test_a_drop_rule_judges_a_zero_as_jmespath_does(when: str, dropped: bool) -> None:
    """`when` is documented as JMESPath with "a truthy result drops the event", but the hub judged the result as
    Python does: 0 was false, so neither `props.quantity` nor its negation `!props.quantity` dropped an event
    with a quantity of 0, and `props.quantity` disagreed with `props.quantity && \\`true\\``."""
    mapping = compile_mapping("test", MappingSpec.model_validate({**BASE, "drop": [{"when": when, "reason": "r"}]}))
    raw = RawEvent("src", "m-1", {"name": "Cart Viewed", "uid": "u-1", "at": RECEIVED.isoformat(),
                                  "props": {"quantity": 0}})
    if dropped:
        with pytest.raises(EventDropped):
            normalize(raw, mapping, RECEIVED, "US")
    else:
        assert normalize(raw, mapping, RECEIVED, "US").properties == {"quantity": 0}


# --- hex signatures --------------------------------------------------------------------------------------------------

def test_a_segment_webhook_signature_in_upper_case_hex_is_accepted() -> None:
    """Hex is case-blind, but Segment's X-Signature was compared as sent: a sender writing its HMAC-SHA1 in upper
    case got a 401 on every request. A wrong digest in upper case is still refused."""
    source = build(SegmentSource, shared_secret=SECRET)
    body = b'{"type": "track", "event": "Order Completed", "userId": "u-1", "messageId": "m-1"}'
    digest = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    source.verify(InboundRequest("POST", URL, {"x-signature": digest.upper()}, body))
    wrong = hmac.new(b"other", body, hashlib.sha1).hexdigest().upper()
    with pytest.raises(AuthenticationError, match="X-Signature: signature does not match"):
        source.verify(InboundRequest("POST", URL, {"x-signature": wrong}, body))


# --- ids of identical items ------------------------------------------------------------------------------------------

def parsed_ids(source: Source, items: list[dict[str, Any]]) -> list[str]:
    body = json.dumps({"events": items}).encode()
    return [event.message_id for event in source.parse(InboundRequest("POST", URL, {}, body)).events]


def test_identical_items_of_one_request_are_as_many_events_and_a_resend_still_deduplicates() -> None:
    """With no id from the sender, each item's id was a hash of its content: two identical "Page Viewed" items of
    one request got one id, and the inbox kept one event of the two the sender sent."""
    source = build(GenericHmacSource, secret=SECRET, events="events")
    viewed = {"event": "Page Viewed", "user_id": "u-1", "page": "/pricing"}
    other = {"event": "Signed Up", "user_id": "u-1"}
    ids = parsed_ids(source, [viewed, other, dict(viewed)])
    assert len(set(ids)) == 3
    assert parsed_ids(source, [viewed, other, dict(viewed)]) == ids  # a resend of the request is a duplicate
    assert parsed_ids(source, [viewed]) == ids[:1]  # and so is one item resent alone


# --- mapping reload --------------------------------------------------------------------------------------------------

def test_a_mapping_save_of_the_same_size_within_the_same_mtime_is_reloaded(tmp_path: Path) -> None:
    """The reload compared (mtime, size): an edit of equal length saved within the file system's mtime granularity
    (a whole second on some; `touch_later` in the tests works around it) was never seen, and the old mapping
    stayed active until the next edit."""
    path = tmp_path / "shop.yaml"
    path.write_text((PROJECT_MAPPINGS / "generic_hmac.yaml").read_text())
    catalog = MappingCatalog(tmp_path, {"shop": "shop.yaml"}, check_seconds=60)
    before = path.stat()
    edit(path, "moment: other}", "moment: visit}")  # the same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # saved within the same tick of the clock
    assert catalog.refresh() == []
    assert catalog["shop"].label("Anything").moment == "visit"


def test_identical_segment_messages_without_a_message_id_in_one_batch_are_as_many_events(running_hub: RunningHub) -> None:
    """A server library's batch of two identical track calls without messageId (no timestamp either: the same
    second) got one id made from their content, and the inbox kept one of the two; a resend still deduplicates."""
    viewed = {"type": "track", "userId": "u-1", "event": "Page Viewed", "properties": {"path": "/pricing"}}
    first = running_hub.send(viewed, dict(viewed))
    assert (first.status_code, first.json()["accepted"], first.json()["duplicates"]) == (200, 2, 0)
    resent = running_hub.send(viewed, dict(viewed))
    assert (resent.json()["accepted"], resent.json()["duplicates"]) == (0, 2)
