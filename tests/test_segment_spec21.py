"""Segment-spec messages as Segment and RudderStack users expect them taken: group calls, batch-level fields,
resends without a messageId, malformed envelopes, analytics.js's short paths."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from connectors.base import InboundRequest
from connectors.sources.segment import SegmentSource
from hub.mapping import load_mapping
from hub.model import RawEvent
from hub.normalize import normalize
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import WRITE_KEY, RunningHub, message

COMPANY = {"name": "Acme Inc", "email": "billing@acme.com", "phone": "+14155550199", "plan": "enterprise"}


def parsed(path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The payloads SegmentSource takes from `body` posted to `path`."""
    source = SegmentSource("src", SegmentSource.validate_config("test", {"write_key": WRITE_KEY}))
    auth = {"authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    request = InboundRequest("POST", f"http://hub.test{path}", auth, json.dumps(body).encode())
    return [event.payload for event in source.parse(request).events]


def test_group_traits_are_the_company_s_not_the_person_s(running_hub: RunningHub) -> None:
    """A group call's `traits` describe the group, yet became the person's email, phone and traits: Jane's
    profile held billing@acme.com and her name became "Acme Inc"."""
    answer = running_hub.send(
        message("identify", userId="u-jane", traits={"email": "jane@example.com", "name": "Jane"}),
        message("group", userId="u-jane", groupId="acme", traits=COMPANY),
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == 2
    running_hub.settle()
    profile = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-jane")
    assert profile["identifiers"]["email"] == ["jane@example.com"]
    assert "phone" not in profile["identifiers"]
    assert profile["traits"]["name"] == "Jane"


@pytest.mark.parametrize("mapping_file", ["segment.yaml", "rudderstack.yaml"])
def test_group_touchpoint_keeps_the_group_id(mapping_file: str) -> None:
    """`groupId` was mapped nowhere, so no rule, template or CRM update could tell which account the person
    joined; the group's traits now sit beside it, and the person's own come from `context.traits`."""
    group = {"type": "group", "userId": "u-g", "groupId": "acct-4711", "traits": COMPANY,
             "context": {"traits": {"email": "jane@example.com"}}}
    received = datetime.now(timezone.utc)
    touchpoint = normalize(RawEvent("src", "m-1", group), load_mapping(PROJECT_MAPPINGS / mapping_file), received, "US")
    assert touchpoint.properties["group_id"] == "acct-4711"
    assert touchpoint.properties["group_traits"] == COMPANY
    assert {(each.type, each.value) for each in touchpoint.identifiers} == {("user_id", "u-g"), ("email", "jane@example.com")}
    assert touchpoint.traits == {"email": "jane@example.com"}


def test_batch_level_context_applies_to_every_message_of_the_batch(running_hub: RunningHub) -> None:
    """analytics-java puts `context` at the top of the batch, for every message in it; the hub dropped it, so the
    device id and push token it names never reached the profile and the person got no push."""
    answer = running_hub.client.post("/v1/batch", auth=(WRITE_KEY, ""), json={
        "batch": [message("identify", userId="u-dev", traits={"email": "dev@example.com"})],
        "context": {"device": {"id": "device-1", "token": "push-token-1"}, "library": {"name": "analytics-java"}},
    })
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    running_hub.settle()
    profile = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-dev")
    assert profile["identifiers"]["device_id"] == ["device-1"]
    assert profile["identifiers"]["push_token"] == ["push-token-1"]


def test_a_message_s_own_context_wins_over_the_batch_s_key_by_key() -> None:
    """The batch's `context` and `integrations` lie under each message's own: a message naming its own device
    keeps it, and still gets the batch's push token and library."""
    own = message(userId="u-1", event="Product Viewed", context={"device": {"id": "own-device"}},
                  integrations={"All": True})
    [payload] = parsed("/v1/batch", {
        "batch": [own], "integrations": {"All": False, "Salesforce": True},
        "context": {"device": {"id": "batch-device", "token": "push-token-1"}, "library": {"name": "analytics-java"}},
    })
    assert payload["context"] == {"device": {"id": "own-device", "token": "push-token-1"},
                                  "library": {"name": "analytics-java"}}
    assert payload["integrations"] == {"All": True, "Salesforce": True}


def test_resent_message_without_message_id_is_not_a_second_touchpoint(running_hub: RunningHub) -> None:
    """A message without `messageId` was keyed by a hash covering `sentAt`, new on every send: an SDK's retry of
    the same event became a second touchpoint (and could fire its rule again)."""
    event = {"type": "track", "userId": "u-resend", "event": "Product Viewed", "timestamp": "2026-12-07T10:00:00Z"}
    first = running_hub.client.post("/v1/track", auth=(WRITE_KEY, ""), json={**event, "sentAt": "2026-12-07T10:00:01Z"})
    retry = running_hub.client.post("/v1/track", auth=(WRITE_KEY, ""), json={**event, "sentAt": "2026-12-07T10:00:31Z"})
    assert first.json()["accepted"] == 1 and retry.json()["duplicates"] == 1
    running_hub.settle()
    assert running_hub.admin("/api/stats")["touchpoints"] == 1


def test_batch_sent_at_that_is_no_time_is_named_not_ignored(running_hub: RunningHub) -> None:
    """A message's own bad `sentAt` is refused naming it; the batch's was silently ignored, its messages taken
    uncorrected for the device's clock with no word of why."""
    answer = running_hub.client.post("/v1/batch", auth=(WRITE_KEY, ""), json={
        "batch": [message(userId="u-sa", event="Product Viewed", timestamp="2026-12-07T10:00:00Z")],
        "sentAt": "yesterday",
    })
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("sentAt: the batch's 'yesterday' is not an ISO-8601 timestamp")


@pytest.mark.parametrize("bad_type", [{}, ["track"]], ids=["object", "array"])
def test_a_message_whose_type_is_an_object_or_array_is_refused_not_a_500(running_hub: RunningHub, bad_type: Any) -> None:
    """Looking an object or array `type` up among the required fields raised TypeError: the whole request was a
    500, its valid neighbours lost with it, and SDKs resent the poisoned batch."""
    answer = running_hub.send(message(userId="u-ok", event="Product Viewed"),
                              {"type": bad_type, "userId": "u-bad", "messageId": str(uuid.uuid4())})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    assert [problem["field"] for problem in answer.json()["rejected"]] == ["type"]


@pytest.mark.parametrize(("path", "kind"), [("/v1/t", "track"), ("/v1/i", "identify"), ("/v1/g", "group")])
def test_analytics_js_short_paths_imply_their_message_type(path: str, kind: str) -> None:
    """analytics.js posts each call to the first letter of its type (and batches to /b): the path was read as
    no type at all, so a message to /v1/t was refused for want of one."""
    fields = {"event": "Product Viewed", "groupId": "acme"}
    [payload] = parsed(path, {"userId": "u-js", "messageId": "m-js", **fields})
    assert payload["type"] == kind
    [batched] = parsed("/v1/b", {"batch": [message(kind, userId="u-js", **fields)]})
    assert batched["type"] == kind
