"""Ingest as Segment's SDKs post it: analytics.js's write key in a body the strict JSON reader refuses, the batch
path of analytics-ruby and analytics-java, and paths with a trailing slash."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from hub.store import schema
from tests.conftest import WRITE_KEY, RunningHub, message

GOOD = {"type": "track", "userId": "u-good", "event": "Product Viewed", "properties": {"sku": "p-1"}}


def stored(running_hub: RunningHub, table: Any) -> list[Any]:
    with running_hub.hub.store.read() as connection:
        return list(connection.execute(select(table)).mappings())


def analytics_js_batch(running_hub: RunningHub, messages_text: list[str], write_key: str = WRITE_KEY) -> httpx.Response:
    """A batch as analytics.js (@segment/analytics-next) posts it to /v1/b: text/plain, the write key in the body,
    no Authorization header."""
    body = '{"batch":[' + ",".join(messages_text) + '],"writeKey":"' + write_key + '"}'
    return running_hub.client.post("/v1/b", content=body.encode(), headers={"Content-Type": "text/plain"})


def test_body_key_batch_with_one_huge_number_keeps_the_other_messages(running_hub: RunningHub) -> None:
    """A number beyond a double (1e400) refuses only the message holding it, with Basic auth. With the write key in
    the body (analytics.js), the whole batch was a 401 "missing write key": the key was looked for with the strict
    reader, which refused the body, so the good message was lost and nothing was quarantined."""
    good = json.dumps(message(**GOOD, messageId="m-good-1"))
    huge = '{"type":"track","messageId":"m-huge","userId":"u-good","event":"Cart Viewed","properties":{"price":1e400}}'
    answer = analytics_js_batch(running_hub, [good, huge])
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    assert [problem["field"] for problem in answer.json()["rejected"]] == ["properties.price"]
    assert [row["message_id"] for row in stored(running_hub, schema.inbox)] == ["m-good-1"]
    [kept] = stored(running_hub, schema.quarantine)
    assert b'"m-huge"' in kept["raw_body"] and WRITE_KEY.encode() not in kept["raw_body"]


def test_body_key_request_that_is_not_json_is_400_and_quarantined_not_401_missing_key(running_hub: RunningHub) -> None:
    """A body that is not JSON (a NaN, a body cut off by a proxy) with the write key in it, as analytics.js sends
    it, was a 401 "missing write key", which tells the sender to fix a key that is right, and nothing was
    quarantined: the key was looked for only in a body that parses. Now it is the 400 Basic auth gets, the body
    kept with the key redacted; a wrong key in such a body is still the 401 of an unknown key."""
    nan = '{"type":"track","messageId":"m-nan","userId":"u-good","event":"Cart Viewed","properties":{"price":NaN}}'
    cut_off = '{"writeKey":"' + WRITE_KEY + '","batch":[' + json.dumps(message(**GOOD))
    answers = [
        analytics_js_batch(running_hub, [json.dumps(message(**GOOD)), nan]),
        running_hub.client.post("/v1/b", content=cut_off.encode(), headers={"Content-Type": "text/plain"}),
    ]
    assert [answer.status_code for answer in answers] == [400, 400], [answer.text for answer in answers]
    assert all(answer.json()["error"].startswith("body: not valid JSON") for answer in answers)
    kept = stored(running_hub, schema.quarantine)
    assert len(kept) == 2 and all(WRITE_KEY.encode() not in row["raw_body"] for row in kept)
    assert all(b'"writeKey":"[redacted]"' in row["raw_body"] for row in kept)
    wrong = analytics_js_batch(running_hub, [nan], write_key="not-the-key")
    assert wrong.status_code == 401 and wrong.json()["error"] == "unknown write key: check the source's write key"


@pytest.mark.parametrize("path", ["/v1/import", "/v1/import/"])
def test_batch_endpoints_of_analytics_ruby_and_analytics_java_are_served(running_hub: RunningHub, path: str) -> None:
    """analytics-ruby posts every batch to /v1/import, analytics-java (and classic analytics-android) to
    /v1/import/: Segment's batch endpoint under its historical name was a 404 here, which both libraries take
    as a refusal, dropping the batch."""
    answer = running_hub.client.post(
        path, json={"batch": [message(**GOOD, messageId="m-import")], "sentAt": "2026-12-07T22:00:00.000Z"},
        auth=(WRITE_KEY, ""),
    )
    assert answer.status_code == 200, answer.text
    assert [row["message_id"] for row in stored(running_hub, schema.inbox)] == ["m-import"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/batch/", {"batch": [message(**GOOD, messageId="m-slash")]}),
        ("/v1/track/", message(**GOOD, messageId="m-slash")),
        ("/v1/t/", message(**GOOD, messageId="m-slash")),
        ("/v1/webhooks/default/", message(**GOOD, messageId="m-slash")),
    ],
)
def test_ingest_paths_with_a_trailing_slash_are_accepted_not_redirected(
    running_hub: RunningHub, path: str, body: dict[str, Any]
) -> None:
    """An endpoint configured with a trailing slash (/v1/batch/) was answered 307 to the path without it.
    OkHttp (analytics-java, analytics-android) and Ruby's Net::HTTP do not follow a redirect of a POST: the
    upload counted as failed, not retried, and the batch was dropped."""
    answer = running_hub.client.post(path, json=body, auth=(WRITE_KEY, ""))
    assert answer.status_code == 200, (answer.status_code, dict(answer.headers))
    assert [row["message_id"] for row in stored(running_hub, schema.inbox)] == ["m-slash"]


def test_a_body_key_the_bytes_do_not_spell_plainly_is_refused_not_kept(running_hub: RunningHub) -> None:
    """The body goes on as sent but for its writeKey members, cut out of its bytes; a member whose name is spelled
    with a JSON escape cannot be found there, so rather than keep that key in the inbox, the request is a 400
    naming the field."""
    body = ('{"writeKey":"' + WRITE_KEY + '","batch":[{"type":"track","userId":"u-1","event":"Product Viewed",'
            '"write\\u004bey":"' + WRITE_KEY + '"}]}')
    answer = running_hub.client.post("/v1/b", content=body.encode(), headers={"Content-Type": "text/plain"})
    assert answer.status_code == 400 and answer.json()["error"].startswith("writeKey: send it as a string"), answer.text
    assert stored(running_hub, schema.inbox) == []
