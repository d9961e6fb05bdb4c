"""Ingest as Segment's and RudderStack's HTTP APIs take it: null maps as absent, the client's address in
`context.ip`, a source's webhook URL whatever the source is called."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.base import InboundRequest
from connectors.sandbox.providers import SandboxProviders
from connectors.sources.segment import SegmentSource
from hub.errors import BadPayloadError
from tests.conftest import WRITE_KEY, RunningHub, hub_with_source, message

BROWSER = {"library": {"name": "analytics.js", "version": "next-1.70.0"}}
SERVER = {"library": {"name": "analytics-python", "version": "2.3.2"}}


def contexts(running_hub: RunningHub) -> dict[str, dict[str, Any]]:
    """Each stored touchpoint's context, by its messageId."""
    running_hub.settle()
    listed = running_hub.admin("/api/touchpoints")["touchpoints"]
    return {touchpoint["message_id"]: touchpoint["context"] for touchpoint in listed}


def test_null_maps_are_taken_as_absent(running_hub: RunningHub) -> None:
    """Before, `"properties": null` (or traits, or context), which SDKs in some languages send for a map never
    set, refused the whole message with "must be a JSON object"; Segment and RudderStack take it as absent. A
    message's null context under a batch's context keeps the batch's, and a batch's null context is none."""
    batch = [
        message(userId="u-null", event="Product Viewed", messageId="m-props", properties=None),
        message("identify", userId="u-null", messageId="m-traits", traits=None),
        message(userId="u-null", event="Product Viewed", messageId="m-context", context=None),
    ]
    shared = {"library": {"name": "analytics-java", "version": "3.5.1"}}
    answers = [
        running_hub.send(*batch),
        running_hub.client.post("/v1/track", json=message(userId="u-null", event="Cart Viewed", messageId="m-one",
                                                          properties=None), auth=(WRITE_KEY, "")),
        running_hub.client.post("/v1/batch", json={"context": shared, "batch": [
            message(userId="u-null", event="Cart Viewed", messageId="m-under", context=None)]}, auth=(WRITE_KEY, "")),
        running_hub.client.post("/v1/batch", json={"context": None, "batch": [
            message(userId="u-null", event="Cart Viewed", messageId="m-none")]}, auth=(WRITE_KEY, "")),
    ]
    assert [answer.status_code for answer in answers] == [200] * 4, [answer.text for answer in answers]
    assert [answer.json()["rejected"] for answer in answers] == [[]] * 4
    running_hub.settle()
    listed = {touchpoint["message_id"]: touchpoint for touchpoint in running_hub.admin("/api/touchpoints")["touchpoints"]}
    assert len(listed) == 6
    assert listed["m-props"]["properties"] == {} and listed["m-one"]["properties"] == {}
    assert listed["m-under"]["context"]["library"] == shared["library"]


def test_client_side_messages_get_the_request_address_as_context_ip(running_hub: RunningHub) -> None:
    """Before, `context.ip` stayed empty where Segment's servers fill it for analytics.js and the mobile SDKs
    (which never collect it themselves) and for a direct call saying `context.direct: true`: no destination could
    place the person. Each message of a batch gets it; one the message carries (0.0.0.0: the opt-out) stays, and
    a server library's message is not given its back end's address."""
    batch = [
        message(anonymousId="a-web", event="Product Viewed", messageId="m-web", context=BROWSER),
        message(anonymousId="a-app", event="Product Viewed", messageId="m-app", channel="mobile"),
        message(anonymousId="a-own", event="Product Viewed", messageId="m-own",
                context={**BROWSER, "ip": "0.0.0.0"}),
        message(anonymousId="a-curl", event="Product Viewed", messageId="m-direct", context={"direct": True}),
        message(userId="u-srv", event="Order Completed", messageId="m-srv", context=SERVER),
    ]
    # The test client is 127.0.0.1, the proxy uvicorn trusts by default (FORWARDED_ALLOW_IPS).
    answer = running_hub.client.post("/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""),
                                     headers={"X-Forwarded-For": "203.0.113.7"})
    assert answer.status_code == 200 and answer.json()["accepted"] == 5, answer.text
    kept = contexts(running_hub)
    assert kept["m-web"] == {**BROWSER, "ip": "203.0.113.7"}
    assert kept["m-app"]["ip"] == "203.0.113.7"
    assert kept["m-own"]["ip"] == "0.0.0.0"
    assert kept["m-direct"] == {"direct": True, "ip": "203.0.113.7"}
    assert kept["m-srv"] == SERVER


def test_analytics_js_short_path_fills_context_ip_from_the_connection(running_hub: RunningHub) -> None:
    """Before, a browser's event posted to analytics.js's /v1/t (writeKey in the text/plain body) kept no address
    at all; with no proxy in front, the address is the connection's."""
    body = message(anonymousId="a-js", event="Product Viewed", messageId="m-js", context=BROWSER)
    answer = running_hub.client.post("/v1/t", content=json.dumps({**body, "writeKey": WRITE_KEY}),
                                     headers={"Content-Type": "text/plain"})
    assert answer.status_code == 200, answer.text
    assert contexts(running_hub)["m-js"]["ip"] == "127.0.0.1"


def untyped_webhook(source_id: str) -> InboundRequest:
    """A message without `type`, posted to `source_id`'s webhook URL."""
    body = json.dumps({"userId": "u-hook", "event": "Product Viewed", "messageId": "m-hook"}).encode()
    return InboundRequest("POST", f"http://hub.test/v1/webhooks/{source_id}", {}, body)


@pytest.mark.parametrize("source_id", ["t", "b", "track"])
def test_a_source_named_like_an_sdk_path_does_not_type_its_webhook_messages(source_id: str) -> None:
    """Before, the last segment of /v1/webhooks/{source_id} was read as an SDK path: a message without `type` sent
    to a source called `t` or `track` was taken as a track, and one sent to a source called `b` as a batch
    ("batch: the body must be ... a 'batch' array"), instead of being refused for its missing type."""
    source = SegmentSource(source_id, SegmentSource.validate_config("test", {"write_key": WRITE_KEY}))
    with pytest.raises(BadPayloadError) as refused:
        source.parse(untyped_webhook(source_id))
    assert [(problem.field, problem.reason) for problem in refused.value.problems] == [("type", "is required")]


def test_a_segment_source_called_batch_takes_its_webhooks(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a Segment source with the id `batch` could never take a message at its own URL,
    /v1/webhooks/batch: every single message there was refused as a batch without a 'batch' array."""
    body = json.dumps(message(userId="u-hook", event="Product Viewed", messageId="m-hook")).encode()
    with hub_with_source(tmp_path, mappings_dir, sandbox, monkeypatch,
                         "{id: batch, connector: segment, secrets: {write_key: HUB_SRC_BATCH_KEY}}",
                         {"HUB_SRC_BATCH_KEY": "batch-write-key"}) as hub:
        auth = "Basic " + base64.b64encode(b"batch-write-key:").decode()
        answer = hub.client.post("/v1/webhooks/batch", content=body,
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == 1
