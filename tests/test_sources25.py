"""Webhook sources and mappings against what the senders really send: HubSpot's association changes, Segment's
Webhooks (Actions) batches, a value map to null, and journey-map CSV cells holding line breaks."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.base import InboundRequest
from connectors.sandbox.providers import SandboxProviders
from connectors.sources.hubspot import HubSpotSource
from connectors.sources.journey_map import load_journey_map
from hub.errors import BadPayloadError, ConfigError
from hub.mapping import MappingSpec, compile_mapping, load_mapping
from hub.model import RawEvent
from hub.normalize import normalize
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import hub_with_source
from tests.source_contract import URL
from tests.test_sources import build

RECEIVED = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)


# --- HubSpot association changes ----------------------------------------------------------------------------------

def association_change(subscription_type: str = "contact.associationChange", **fields: Any) -> dict[str, Any]:
    """An association change as HubSpot documents it: the two objects as fromObjectId/toObjectId, no objectId."""
    return {"eventId": 1001, "subscriptionId": 77, "portalId": 33, "appId": 4, "occurredAt": 1700000000000,
            "attemptNumber": 0, "changeSource": "CRM_UI", "subscriptionType": subscription_type,
            "associationType": "CONTACT_TO_COMPANY", "fromObjectId": 123, "toObjectId": 456,
            "associationRemoved": False, "isPrimaryAssociation": False, **fields}


def hubspot_parse(*events: dict[str, Any]) -> Any:
    source = build(HubSpotSource, client_secret="client-secret-0123")
    return source.parse(InboundRequest("POST", URL, {}, json.dumps(list(events)).encode()))


def test_hubspot_association_changes_are_taken_in_each_under_its_own_id() -> None:
    """HubSpot's association changes carry no objectId, which the connector required of every event: each was
    quarantined ("objectId is required") and a request holding only such events was a 400."""
    base = association_change()
    parsed = hubspot_parse(base, {**base, "toObjectId": 789}, {**base, "associationRemoved": True})
    assert parsed.rejected == []
    assert [event.message_id for event in parsed.events] == [
        "33-77-1001-CONTACT_TO_COMPANY-123-456-False-1700000000000",
        "33-77-1001-CONTACT_TO_COMPANY-123-789-False-1700000000000",
        "33-77-1001-CONTACT_TO_COMPANY-123-456-True-1700000000000",
    ]


def test_a_hubspot_event_naming_no_object_is_still_refused_naming_object_id() -> None:
    """Taking association changes in must not take in an event that names no object: one with neither objectId
    nor both ends of an association is still refused, told that objectId is missing."""
    with pytest.raises(BadPayloadError) as raised:
        hubspot_parse({key: value for key, value in association_change().items() if key != "toObjectId"})
    assert [(p.field, p.reason) for p in raised.value.problems] == [("objectId", "is required in a HubSpot event")]


@pytest.mark.parametrize(
    ("subscription_type", "identifier"),
    [("contact.associationChange", ("crm_id", "hubspot:33:123")), ("deal.associationChange", ("hubspot_deal_id", "123"))],
)
def test_a_hubspot_association_change_maps_to_the_object_it_is_about(
    subscription_type: str, identifier: tuple[str, str]
) -> None:
    """The shipped mapping read only objectId: a contact's association change became crm_id 'hubspot:33:null'."""
    [event] = hubspot_parse(association_change(subscription_type)).events
    touchpoint = normalize(event, load_mapping(PROJECT_MAPPINGS / "hubspot.yaml"), RECEIVED, "US")
    assert [(i.type, i.value) for i in touchpoint.identifiers] == [identifier]
    assert touchpoint.properties == {
        "object_id": 123, "property": None, "value": None, "change_source": "CRM_UI", "portal_id": 33,
        "associated_object_id": 456, "association_type": "CONTACT_TO_COMPANY", "association_removed": False,
    }


# --- Segment's Webhooks (Actions) batches -------------------------------------------------------------------------

SEGMENT_SECRET = "s3cret-shared"
SEGMENT_WEBHOOKS = "{id: seg, connector: segment, secrets: {shared_secret: HUB_SRC_SEG_SECRET}}"


def test_segment_webhooks_actions_batch_of_events_is_accepted(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Webhooks (Actions) batches by default and posts the events as one bare JSON array, signed as one event is;
    the source took an object only ("body: expected a JSON object, got list"): every batch was a 400."""
    events = [
        {"type": "track", "event": "Product Viewed", "userId": "u-1", "messageId": "m-1",
         "timestamp": "2026-01-05T10:00:00Z", "properties": {"sku": "A"}},
        {"type": "track", "userId": "u-1", "messageId": "m-2", "timestamp": "2026-01-05T10:00:01Z"},
        {"type": "identify", "userId": "u-1", "messageId": "m-3", "timestamp": "2026-01-05T10:00:02Z",
         "traits": {"email": "ann@example.com"}},
    ]
    body = json.dumps(events).encode()
    signature = hmac.new(SEGMENT_SECRET.encode(), body, hashlib.sha1).hexdigest()
    with hub_with_source(tmp_path, mappings_dir, sandbox, monkeypatch, SEGMENT_WEBHOOKS,
                         {"HUB_SRC_SEG_SECRET": SEGMENT_SECRET}) as hub:
        answer = hub.client.post("/v1/webhooks/seg", content=body,
                                 headers={"X-Signature": signature, "Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == 2
        [problem] = answer.json()["rejected"]  # numbered by its place in the array, as in a batch
        assert (problem["index"], problem["field"]) == (1, "event")
        hub.settle()
        touchpoints = hub.admin("/api/touchpoints", source="seg")["touchpoints"]
    assert sorted(t["message_id"] for t in touchpoints) == ["m-1", "m-3"]


# --- value maps -----------------------------------------------------------------------------------------------------

def test_a_value_map_to_null_clears_a_property_rather_than_keeping_the_vendor_value() -> None:
    """`properties.coupon: {'N/A': null}` left the vendor's 'N/A' in the touchpoint: a null result was skipped."""
    spec = {
        "event": "name", "occurred_at": "at", "identifiers": {"user_id": "uid"}, "properties": "props",
        "default": {"stage": "decision", "moment": "purchase"},
        "value_maps": {"properties.coupon": {"N/A": None, "none": "NONE"}},
    }
    mapping = compile_mapping("shop", MappingSpec.model_validate(spec))

    def properties(coupon: str) -> dict[str, Any]:
        raw = RawEvent("shop", "m-1", {"name": "Order Completed", "uid": "u-1", "at": "2026-01-05T10:00:00Z",
                                       "props": {"coupon": coupon, "total": 30}})
        return normalize(raw, mapping, RECEIVED, "US").properties

    assert properties("N/A") == {"total": 30}
    assert properties("none") == {"coupon": "NONE", "total": 30}
    assert properties("SAVE10") == {"coupon": "SAVE10", "total": 30}


# --- journey map CSV exports ----------------------------------------------------------------------------------------

CSV_HEADER = "touchpoint_id,touchpoint,channel,stage_id,stage,stage_label,moment_id,moment,moment_label"


@pytest.mark.parametrize(
    ("cell", "meant"),
    [('"Comparison\ntable"', "Comparison\ntable"), ('"Comparison\r\ntable"', "Comparison\r\ntable"),
     ("Comparison\u2028table", "Comparison\u2028table"), ("Comparison\x0ctable", "Comparison\x0ctable"),
     ("Comparison\x1etable", "Comparison\x1etable"), ("Comparison\x85table", "Comparison\x85table")],
    ids=["excel-alt-enter", "excel-alt-enter-crlf", "u2028", "form-feed", "record-separator", "next-line"],
)
def test_a_journey_map_csv_cell_holding_a_line_break_is_read_as_written(tmp_path: Path, cell: str, meant: str) -> None:
    """Read from `text.splitlines()`, a quoted cell's line break was lost ("Comparisontable") and U+2028, \\x0c,
    \\x1c-\\x1e or \\x85 in a cell split its row: the export was refused with a dozen unrelated problems."""
    export = tmp_path / "shop.csv"
    row = f"TP-COMPARE,{cell},web,S2,consideration,Compare,M2,product_comparison,Comparing products"
    export.write_text(f"{CSV_HEADER}\r\n{row}\r\n", encoding="utf-8", newline="")
    [touchpoint] = load_journey_map(export).touchpoints
    assert touchpoint.name == meant


def test_a_csv_problem_names_the_line_its_row_begins_on_past_a_cell_of_several_lines(tmp_path: Path) -> None:
    """A row whose cell holds a line break spans two lines; the csv reader counts the last, so a later conflict
    was said to be "at line 3", where the row's id is on line 2."""
    export = tmp_path / "shop.csv"
    export.write_text(
        f"{CSV_HEADER}\n"
        'TP-COMPARE,"Comparison\ntable",web,S2,consideration,Compare,M2,product_comparison,Comparing products\n'
        "\n"
        "TP-CART,Cart,web,S2,decision,Buy,M3,cart_activity,Filling the cart\n",
        encoding="utf-8", newline="",
    )
    with pytest.raises(ConfigError) as raised:
        load_journey_map(export)
    assert raised.value.problems == [
        f"{export}:5: stage_id: 'S2' is stage 'decision' labelled 'Buy' here but 'consideration' labelled 'Compare' "
        "at line 2; give each stage its own id, or make the rows agree",
    ]
