"""Message ids and text at ingest: what no store can hold is refused item by item, long ids stay distinct.

JSON may carry a NUL ("\\u0000") or half a surrogate pair ("\\ud800") in any
string; SQLite cannot store the second (it has no UTF-8 form), PostgreSQL
neither (no NUL in text). Ids longer than the inbox's column are hashed whole,
never cut.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.base import InboundRequest, Source
from connectors.sources.hubspot import HubSpotSource
from connectors.sources.journey_map import JourneyMapSource
from connectors.sources.rudderstack import RudderStackSource
from connectors.sources.segment import SegmentSource
from connectors.sources.standard_webhooks import StandardWebhooksSource
from connectors.storable_json import text_problem
from hub.errors import BadPayloadError
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import WRITE_KEY, RunningHub

URL = "https://hub.example.com/v1/webhooks/src"
NUL_REASON = "contains \\u0000 (NUL), which the hub cannot store; remove it"


def with_escape(document: Any, escaped: str) -> bytes:
    """`document` as JSON with its "@" string written as the raw JSON text `escaped` (e.g. m-\\ud800)."""
    return json.dumps(document).replace('"@"', f'"{escaped}"').encode()


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u-1", "event": "Product Viewed", "messageId": "m-1", **fields}


def segment_parse(body: bytes) -> Any:
    source = SegmentSource("src", SegmentSource.validate_config("test", {"write_key": "wk"}))
    return source.parse(InboundRequest("POST", "http://hub.test/v1/batch", {}, body))


# --- over HTTP, on both engines ----------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("field", "escaped"),
    [("messageId", "m-\\ud800"), ("messageId", "m-\\u0000"), ("event", "Viewed \\udc00"), ("userId", "u-\\u0000")],
    ids=["surrogate-id", "nul-id", "surrogate-event", "nul-user-id"],
)
def test_text_no_store_can_hold_refuses_its_message_and_keeps_the_neighbour(
    running_hub: RunningHub, field: str, escaped: str
) -> None:
    """As a messageId, either was a 500 that lost the whole batch (UnicodeEncodeError in sqlite3, DataError in
    psycopg), which an SDK resends for ever. As an event name or a user id, the message was acknowledged, then
    failed every pipeline attempt and ended in quarantine at stage "pipeline", named by a driver's error."""
    body = with_escape({"batch": [track(**{field: "@"}), track(userId="u-2", messageId="good-1")]}, escaped)
    answer = running_hub.client.post("/v1/batch", content=body, auth=(WRITE_KEY, ""))
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    [problem] = answer.json()["rejected"]
    assert (problem["index"], problem["field"]) == (0, field)
    running_hub.settle()
    kept = running_hub.admin("/api/quarantine")["quarantine"]
    assert [(entry["stage"], entry["reason"].split(":")[0]) for entry in kept] == [("item", field)]
    assert running_hub.admin("/api/stats")["touchpoints"] == 1


# --- the check, source by source ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "escaped", "field", "reason"),
    [
        (track(properties={"name": "@"}), "a\\u0000b", "properties.name", NUL_REASON),
        (track(context={"traits": {"email": "@"}}), "\\ud83dx@example.com", "context.traits.email",
         "contains \\ud83d, half of a UTF-16 surrogate pair without its other half, which is not text; "
         "send the whole character or remove it"),
        (track(properties={"items": [{"sku": "p-1"}, {"sku": "@"}]}), "\\u0000", "properties.items[1].sku", NUL_REASON),
    ],
    ids=["property", "trait", "list-item"],
)
def test_the_refusal_names_the_field_path_and_the_character(document: Any, escaped: str, field: str, reason: str) -> None:
    """Properties and traits went through, stored as JSON, but are text for any mapping that takes them into an
    event name, an identifier or a template."""
    [rejected] = segment_parse(with_escape({"batch": [document, track(messageId="m-2")]}, escaped)).rejected
    assert [problem.as_dict() for problem in rejected.problems] == [{"index": 0, "field": field, "reason": reason}]


def test_a_key_holding_nul_is_named_with_the_character_escaped() -> None:
    """The path is stored with the quarantined item, so it must not hold the character itself."""
    body = json.dumps({"batch": [track(properties={"a@": 1})]}).replace("a@", "a\\u0000").encode()
    with pytest.raises(BadPayloadError) as raised:
        segment_parse(body)
    assert [problem.field for problem in raised.value.problems] == ["properties.a\\u0000"]


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"batch": [track(event="@")]}).replace('"@"', '"\\ud800"').encode("utf-16"),
        json.dumps({"batch": [track(event="@")]}).encode().replace(b"@", b"\xed\xa0\x80"),
    ],
    ids=["utf-16-body", "surrogate-as-utf-8-bytes"],
)
def test_a_lone_surrogate_not_written_as_an_escape_is_refused_too(body: bytes) -> None:
    """json.loads reads UTF-16 bodies, and a surrogate's UTF-8-like bytes ("surrogatepass"), into lone surrogates."""
    with pytest.raises(BadPayloadError) as raised:
        segment_parse(body)
    assert [problem.field for problem in raised.value.problems] == ["event"]


def test_text_deeper_than_the_recursion_limit_is_found() -> None:
    """The JSON parser takes 1,000 levels of nesting (ingest refuses past 64 since, but a connector may walk
    what it built itself); a recursive walk would fail there with RecursionError."""
    deep: Any = "\x00"
    for _ in range(1000):
        deep = [deep]
    problem = text_problem(None, {"deep": deep})
    assert problem is not None and problem.field == "deep" + "[0]" * 1000


def test_json_webhook_events_are_refused_item_by_item() -> None:
    """RudderStack, generic_hmac and journey_map events go through json_events; its id (messageId here) too."""
    source = RudderStackSource("src", RudderStackSource.validate_config("test", {"token": "t"}))
    body = with_escape([track(messageId="@"), track(messageId="m-2")], "m-\\u0000")
    result = source.parse(InboundRequest("POST", URL, {}, body))
    assert [event.message_id for event in result.events] == ["m-2"]
    assert [problem.as_dict() for problem in result.problems] == [{"index": 0, "field": "messageId", "reason": NUL_REASON}]


def hubspot_event(**fields: Any) -> dict[str, Any]:
    return {"portalId": 33, "subscriptionId": 25, "eventId": 1, "objectId": 1246965, "occurredAt": 1462216307945,
            "subscriptionType": "contact.propertyChange", "propertyName": "lifecyclestage", **fields}


def test_hubspot_events_are_refused_item_by_item() -> None:
    source = HubSpotSource("src", HubSpotSource.validate_config("test", {"client_secret": "s"}))
    body = with_escape([hubspot_event(propertyValue="@"), hubspot_event(eventId=2)], "lead\\u0000")
    result = source.parse(InboundRequest("POST", URL, {}, body))
    assert [event.message_id for event in result.events] == ["33-25-2-1246965-1462216307945"]
    assert [(problem.index, problem.field) for problem in result.problems] == [(0, "propertyValue")]


def standard_webhooks_source() -> Source:
    secret = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-0123").decode()
    return StandardWebhooksSource("src", StandardWebhooksSource.validate_config("test", {"secret": secret}))


@pytest.mark.parametrize(
    ("webhook_id", "body", "field"),
    [("msg\x00-1", b'{"type": "contact.created"}', "webhook-id"),
     ("msg-1", b'{"type": "contact.created", "data": {"name": "\\udfff"}}', "data.name")],
    ids=["nul-in-webhook-id", "surrogate-in-body"],
)
def test_standard_webhooks_refuses_text_no_store_can_hold_in_its_id_or_body(webhook_id: str, body: bytes, field: str) -> None:
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(int(time.time()))}
    with pytest.raises(BadPayloadError) as raised:
        standard_webhooks_source().parse(InboundRequest("POST", URL, headers, body))
    assert [problem.field for problem in raised.value.problems] == [field]
    assert raised.value.message.startswith(f"{field}: contains \\u")


# --- long ids ----------------------------------------------------------------------------------------------

PREFIX = "x" * 200


def test_standard_webhooks_ids_sharing_their_first_200_characters_stay_two_messages() -> None:
    """Both ids were cut to the same 200 characters: the second message was acknowledged, then dropped."""
    ids = []
    for suffix in ("-a", "-b"):
        headers = {"webhook-id": PREFIX + suffix, "webhook-timestamp": str(int(time.time()))}
        [event] = standard_webhooks_source().parse(InboundRequest("POST", URL, headers, b'{"type": "t"}')).events
        ids.append(event.message_id)
    assert ids[0] != ids[1] and all(len(message_id) <= 200 for message_id in ids)
    [short] = standard_webhooks_source().parse(
        InboundRequest("POST", URL, {"webhook-id": PREFIX}, b'{"type": "t"}')
    ).events
    assert short.message_id == PREFIX  # an id that fits is kept as sent


def test_json_webhook_ids_sharing_their_first_200_characters_stay_two_messages() -> None:
    source = RudderStackSource("src", RudderStackSource.validate_config("test", {"token": "t"}))
    body = json.dumps([track(messageId=PREFIX + "-a"), track(messageId=PREFIX + "-b")]).encode()
    ids = [event.message_id for event in source.parse(InboundRequest("POST", URL, {}, body)).events]
    assert len(set(ids)) == 2 and all(len(message_id) <= 200 for message_id in ids)


def test_hubspot_id_longer_than_the_column_is_hashed_not_stored_too_long() -> None:
    """HubSpot's id joins five fields: long ones made an id PostgreSQL's varchar(200) refuses, a 500."""
    source = HubSpotSource("src", HubSpotSource.validate_config("test", {"client_secret": "s"}))
    body = json.dumps([hubspot_event(objectId=PREFIX)]).encode()
    [event] = source.parse(InboundRequest("POST", URL, {}, body)).events
    assert len(event.message_id) <= 200


def test_a_segment_message_id_over_200_characters_is_refused_not_cut() -> None:
    """Segment's own limit is lower (100); the hub says so for the message rather than drop it silently."""
    with pytest.raises(BadPayloadError) as raised:
        segment_parse(json.dumps({"batch": [track(messageId=PREFIX + "-a")]}).encode())
    assert [problem.as_dict() for problem in raised.value.problems] == [
        {"index": 0, "field": "messageId", "reason": "must be a string of 1 to 200 characters"}
    ]


# --- ids taken from the event as received ------------------------------------------------------------------


def test_a_journey_map_event_keeps_its_id_when_the_map_is_re_exported(tmp_path: Path) -> None:
    """Without `message_id`, the id is a hash of the event; it was taken after the map's labels were added, so
    a resend after marketers renamed a stage was stored, and answered to, a second time."""
    document = json.loads((PROJECT_MAPPINGS / "journeys" / "web_shop.json").read_text())
    (tmp_path / "map.json").write_text(json.dumps(document))
    config = JourneyMapSource.validate_config("test", {"secret": "s", "map_file": "map.json", "events": "events"})
    source = JourneyMapSource("journeys", config, tmp_path)
    body = json.dumps({"events": [{"touchpoint_id": "TP-CART", "userId": "u-1"}]}).encode()
    signature = hmac.new(b"s", body, hashlib.sha256).hexdigest()
    request = InboundRequest("POST", URL, {"X-Signature": signature}, body)
    [first] = source.parse(request).events

    for stage in document["stages"]:
        stage["label"] += " (renamed)"
    (tmp_path / "map.json").write_text(json.dumps(document, indent=2))
    [again] = source.parse(request).events
    assert again.payload["journey"]["stage_label"].endswith("(renamed)")
    assert again.message_id == first.message_id
