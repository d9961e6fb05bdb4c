"""The ingest HTTP surface as SDKs meet it: RudderStack's error handling and batch size, analytics.js's short
paths, browsers' CORS, and bodies that cannot be decoded."""

from __future__ import annotations

import gzip
import json
import queue
import uuid

import pytest
from rudderstack.analytics.consumer import Consumer as RudderConsumer
from rudderstack.analytics.request import APIError as RudderAPIError
from rudderstack.analytics.request import post as rudder_post

from tests.conftest import WRITE_KEY, RunningHub, message

ORIGIN = "https://shop.example.com"


def quarantined(running_hub: RunningHub) -> list[dict]:
    """The quarantine, each row whole."""
    listed = running_hub.admin("/api/quarantine")["quarantine"]
    return [running_hub.admin(f"/api/quarantine/{row['id']}") for row in listed]


def test_error_answers_are_understood_by_the_rudderstack_sdk(running_hub: RunningHub) -> None:
    """Before, error answers had no `code` or `message`: rudder-sdk-python failed with KeyError instead of APIError,
    took a 400 (or 401) for a network error and resent the refused batch, quarantining it again each time."""
    bad = {"type": "track", "userId": "u-bad", "messageId": str(uuid.uuid4())}  # no `event`
    with pytest.raises(RudderAPIError) as refused:
        rudder_post(WRITE_KEY, running_hub.url, gzip=True, batch=[bad])
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    assert refused.value.message == "no valid message in the request"
    with pytest.raises(RudderAPIError) as unauthorized:
        rudder_post("not-a-write-key", running_hub.url, batch=[message(userId="u-1", event="Product Viewed")])
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")

    consumer = RudderConsumer(queue.Queue(), WRITE_KEY, host=running_hub.url, retries=3)
    with pytest.raises(RudderAPIError):
        consumer.request([{**bad, "messageId": str(uuid.uuid4())}])
    assert len(running_hub.admin("/api/quarantine")["quarantine"]) == 2, "the SDK resent a refused batch"


def test_a_batch_the_rudderstack_sdk_builds_is_not_refused_and_lost(running_hub: RunningHub) -> None:
    """Before, a normal RudderStack flush (100 messages, here ~600 KB; the SDK goes to 4 MB) was over the 512 KiB
    body limit: a 413, which the SDK takes as final, so the events were dropped by the sender."""
    messages: queue.Queue = queue.Queue()
    for n in range(100):
        messages.put(message(userId=f"u-rs-{n}", event="Product Viewed",
                             context={"page": {"url": "https://shop.example.com/p/" + "x" * 6000}}))
    failures: list[Exception] = []
    consumer = RudderConsumer(messages, WRITE_KEY, host=running_hub.url, retries=0, upload_size=100,
                              on_error=lambda error, _batch: failures.append(error))
    assert consumer.upload(), failures
    running_hub.settle()
    assert running_hub.admin("/api/stats")["touchpoints"] == 100


@pytest.mark.hub_settings(max_batch_bytes=64 * 1024)
@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b"])
def test_the_batch_limit_holds_for_the_gunzipped_body_on_every_batch_path(running_hub: RunningHub, path: str) -> None:
    """Batches have their own limit (HUB_MAX_BATCH_BYTES), counted after gunzip as HUB_MAX_BODY_BYTES is: before,
    there was no such limit and no /v1/b, and a batch was held to the single-message limit."""
    bomb = gzip.compress(json.dumps({"batch": [message(userId="u-1", event="X", properties={"x": "a" * 100_000})]}).encode())
    answer = running_hub.client.post(path, content=bomb, headers={"Content-Encoding": "gzip"}, auth=(WRITE_KEY, ""))
    assert answer.status_code == 413, answer.text
    assert answer.json()["code"] == "too_large"
    assert "65536-byte limit" in answer.json()["message"]


@pytest.mark.parametrize("encoding, cut", [("gzip", 6), ("br", 0)], ids=["gzip-cut-off", "unsupported-coding"])
def test_body_refused_as_it_is_decoded_is_quarantined_like_any_refused_body(
    running_hub: RunningHub, encoding: str, cut: int
) -> None:
    """Before, a body refused while it was decoded (a cut-off gzip stream: 400; a Content-Encoding the hub does not
    take: 415) was refused before ingest's quarantine step, so ops could not see what the broken client sent. Why
    it was refused is kept now, not the body: a write key in a body that cannot be decoded cannot be taken out."""
    body = gzip.compress(json.dumps({"batch": [message(userId="u-gz", event="Product Viewed")]}).encode())
    sent = body[:len(body) - cut]
    answer = running_hub.client.post(
        "/v1/batch", content=sent, headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
        auth=(WRITE_KEY, ""),
    )
    assert answer.status_code == (400 if encoding == "gzip" else 415)
    assert "Content-Encoding" in answer.json()["error"]
    [kept] = quarantined(running_hub)
    assert kept["raw_body_bytes"] == 0 and kept["source_id"] == "default"
    assert f"it was not kept ({len(sent)} bytes, Content-Encoding: {encoding})" in kept["reason"]

    anonymous = running_hub.client.post("/v1/batch", content=sent, headers={"Content-Encoding": encoding})
    assert anonymous.status_code == answer.status_code
    assert len(quarantined(running_hub)) == 1, "a body of a sender no key names was kept"


@pytest.mark.parametrize("path, body", [
    ("/v1/t", {"type": "track", "event": "Product Viewed", "anonymousId": "anon-js", "messageId": "m-t"}),
    ("/v1/p", {"type": "page", "anonymousId": "anon-js", "properties": {"path": "/pricing"}, "messageId": "m-p"}),
    ("/v1/b", {"batch": [{"type": "identify", "anonymousId": "anon-js", "traits": {"email": "js@example.com"},
                          "messageId": "m-b"}]}),
], ids=["track", "page", "batch"])
def test_analytics_js_endpoints_are_served(running_hub: RunningHub, path: str, body: dict) -> None:
    """Before, analytics.js's short paths (/v1/t, /v1/p, ..., /v1/b), where the browser SDK posts text/plain with
    the writeKey in the body, were a 404: every browser event was lost."""
    answer = running_hub.client.post(path, content=json.dumps({**body, "writeKey": WRITE_KEY}),
                                     headers={"Content-Type": "text/plain", "Origin": ORIGIN})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1


def test_browser_sdk_answers_carry_cors_headers(running_hub: RunningHub) -> None:
    """Before, ingest answers had no Access-Control-Allow-Origin: the browser hid them from analytics.js, which
    took each 200 (or 400) for a network failure and resent the event. The admin API stays same-origin."""
    accepted = running_hub.client.post(
        "/v1/batch", headers={"Content-Type": "text/plain", "Origin": ORIGIN},
        content=json.dumps({"writeKey": WRITE_KEY, "batch": [message(anonymousId="anon-cors", event="Product Viewed")]}),
    )
    refused = running_hub.client.post("/v1/track", headers={"Origin": ORIGIN}, json=message(userId="u-1"),
                                      auth=("not-a-write-key", ""))
    assert (accepted.status_code, refused.status_code) == (200, 401)
    assert accepted.headers.get("access-control-allow-origin") == "*", dict(accepted.headers)
    assert refused.headers.get("access-control-allow-origin") == "*", dict(refused.headers)
    admin = running_hub.client.get("/api/stats", headers={"Origin": ORIGIN, "Authorization": "Bearer x"})
    assert "access-control-allow-origin" not in admin.headers


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track", "/v1/t"])
def test_browser_preflight_for_the_sdk_endpoints_is_answered(running_hub: RunningHub, path: str) -> None:
    """Before, the preflight a browser sends ahead of RudderStack JS's posts (Basic auth, application/json, its
    AnonymousId header) was a 405 with no CORS headers, so the browser never sent the events at all."""
    answer = running_hub.client.options(path, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, anonymousid",
    })
    assert answer.status_code == 204, (answer.status_code, answer.text)
    assert answer.headers.get("access-control-allow-origin") == "*"
    allowed = {name.strip().lower() for name in answer.headers.get("access-control-allow-headers", "").split(",")}
    assert {"authorization", "content-type", "anonymousid"} <= allowed, allowed
    assert "POST" in answer.headers.get("access-control-allow-methods", "")
