"""The write key as a `writeKey` field of the body (Segment's HTTP API allows it; analytics-clj, Analytics.NET send it).

It authenticates like Basic auth, and its value is kept nowhere: not in the
inbox, not in a touchpoint, not in quarantine.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from hub.store import schema
from tests.conftest import RunningHub, message

KEY = "wk-in-body-5d1e9a77"  # distinctive, so finding it anywhere in the database is a leak
pytestmark = pytest.mark.hub_settings(default_write_key=KEY)

VALID = {"type": "track", "userId": "u-1", "event": "Product Viewed", "properties": {"sku": "p-1"}}


def post(running_hub: RunningHub, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return running_hub.client.post(path, content=json.dumps(body), headers=headers, **kwargs)


def database_text(running_hub: RunningHub) -> str:
    """Every row of every table, as text."""
    with running_hub.hub.store.read() as connection:
        return "\n".join(
            repr(row) for table in schema.metadata.sorted_tables for row in connection.execute(select(table))
        )


def stored(running_hub: RunningHub, table: Any) -> list[Any]:
    with running_hub.hub.store.read() as connection:
        return list(connection.execute(select(table)).mappings())


def test_batch_with_write_key_in_body_is_accepted_and_the_key_kept_nowhere(running_hub: RunningHub) -> None:
    answer = post(running_hub, "/v1/batch", {"writeKey": KEY, "batch": [message(**VALID), message(**VALID)]})
    assert answer.status_code == 200 and answer.json()["accepted"] == 2
    running_hub.settle()
    payloads = [row["payload"] for row in stored(running_hub, schema.inbox)]
    assert len(payloads) == 2 and all("writeKey" not in payload for payload in payloads)
    touchpoints = stored(running_hub, schema.touchpoints)
    assert [t["properties"] for t in touchpoints] == [{"sku": "p-1"}] * 2
    assert KEY not in database_text(running_hub)


def test_write_key_in_every_message_is_accepted_and_stripped(running_hub: RunningHub) -> None:
    """analytics-clj style: no top-level key, each message carries it."""
    answer = post(running_hub, "/v1/batch", {"batch": [message(**VALID, writeKey=KEY), message(**VALID, writeKey=KEY)]})
    assert answer.status_code == 200 and answer.json()["accepted"] == 2
    running_hub.settle()
    assert len(stored(running_hub, schema.touchpoints)) == 2
    assert KEY not in database_text(running_hub)


@pytest.mark.parametrize("path", ["/v1/track", "/v1/identify"])
def test_single_message_with_write_key_in_body_is_accepted(running_hub: RunningHub, path: str) -> None:
    body = {"writeKey": KEY, "userId": "u-7", "event": "Signed Up", "traits": {"plan": "pro"}}
    answer = post(running_hub, path, body)
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    running_hub.settle()
    [row] = stored(running_hub, schema.inbox)
    assert "writeKey" not in row["payload"] and row["payload"]["userId"] == "u-7"
    assert len(stored(running_hub, schema.touchpoints)) == 1
    assert KEY not in database_text(running_hub)


def test_wrong_write_key_in_body_is_401_and_stores_nothing(running_hub: RunningHub) -> None:
    answer = post(running_hub, "/v1/batch", {"writeKey": "not-the-key", "batch": [message(**VALID)]})
    assert answer.status_code == 401
    assert answer.json()["error"] == "unknown write key: check the source's write key"
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert stored(running_hub, schema.inbox) == [] and stored(running_hub, schema.quarantine) == []


def test_empty_write_key_in_body_is_the_missing_key_401(running_hub: RunningHub) -> None:
    answer = post(running_hub, "/v1/track", {**VALID, "writeKey": ""})
    assert answer.status_code == 401 and answer.json()["error"].startswith("missing write key")


def test_header_and_body_keys_must_agree(running_hub: RunningHub) -> None:
    same = post(running_hub, "/v1/batch", {"writeKey": KEY, "batch": [message(**VALID)]}, auth=(KEY, ""))
    assert same.status_code == 200 and same.json()["accepted"] == 1
    other = post(running_hub, "/v1/batch", {"writeKey": "other-key", "batch": [message(**VALID)]}, auth=(KEY, ""))
    assert other.status_code == 401
    assert other.json()["error"].startswith("conflicting write keys: the Authorization header and the body's writeKey")
    mixed = post(running_hub, "/v1/batch", {"batch": [message(**VALID, writeKey=KEY), message(**VALID, writeKey="x")]})
    assert mixed.status_code == 401 and "different writeKey values" in mixed.json()["error"]
    assert len(stored(running_hub, schema.inbox)) == 1


def test_refused_body_with_write_key_is_quarantined_without_it(running_hub: RunningHub) -> None:
    body = {"writeKey": KEY, "batch": [message(type="track", userId="u-1", writeKey=KEY)]}  # no event: refused
    answer = post(running_hub, "/v1/batch", body)
    assert answer.status_code == 400 and answer.json()["error"] == "no valid message in the request"
    [kept] = stored(running_hub, schema.quarantine)
    assert kept["stage"] == "ingest"
    raw = json.loads(kept["raw_body"])
    assert "writeKey" not in raw and "writeKey" not in raw["batch"][0] and raw["batch"][0]["userId"] == "u-1"
    assert KEY not in database_text(running_hub)


def test_refused_item_with_write_key_is_quarantined_without_it(running_hub: RunningHub) -> None:
    batch = [message(**VALID, writeKey=KEY), message(userId="u-2", writeKey=KEY)]  # the second has no type
    answer = post(running_hub, "/v1/batch", {"batch": batch})
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    [kept] = stored(running_hub, schema.quarantine)
    assert kept["stage"] == "item" and "writeKey" not in json.loads(kept["raw_body"])
    running_hub.settle()
    assert KEY not in database_text(running_hub)


def test_body_that_is_not_json_is_quarantined_with_the_key_redacted(running_hub: RunningHub) -> None:
    answer = running_hub.client.post("/v1/batch", content=f'{{"writeKey": "{KEY}", "batch": ['.encode(), auth=(KEY, ""))
    assert answer.status_code == 400 and answer.json()["error"].startswith("body: not valid JSON")
    [kept] = stored(running_hub, schema.quarantine)
    assert kept["raw_body"] == b'{"writeKey": "[redacted]", "batch": ['
    assert KEY not in database_text(running_hub)


def test_lone_surrogate_escape_with_write_key_in_body_is_answered_as_with_basic_auth(running_hub: RunningHub) -> None:
    """JSON may escape a lone surrogate (\\ud83d), which the hub refuses naming the field, whichever way the key
    comes; stripping the key re-serialised the body as UTF-8, which cannot encode it: a 500."""
    text = ('{"type": "track", "userId": "u-1", "event": "Product Viewed", "messageId": "%s", '
            '"properties": {"name": "\\ud83d"}%s}')
    with_basic = running_hub.client.post("/v1/track", content=(text % ("m-1", "")).encode(), auth=(KEY, ""))
    in_body = running_hub.client.post("/v1/track", content=(text % ("m-2", f', "writeKey": "{KEY}"')).encode())
    assert (with_basic.status_code, in_body.status_code) == (400, 400), (with_basic.text, in_body.text)
    assert [problem["field"] for problem in with_basic.json()["rejected"] + in_body.json()["rejected"]] == ["properties.name"] * 2
    assert len(stored(running_hub, schema.quarantine)) == 2
    assert KEY not in database_text(running_hub)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/batch", json.dumps([{**message(**VALID), "writeKey": KEY}]).encode()),
        ("/v1/track", json.dumps({**message(**VALID), "writeKey": KEY}).encode("utf-16")),
        ("/v1/track", json.dumps({**message(**VALID), "writeKey": KEY}).encode("utf-16-le")),
        ("/v1/track", json.dumps({**message(**VALID), "writeKey": KEY}).encode("utf-32")),
    ],
    ids=["top-level-array", "utf-16", "utf-16-le-without-bom", "utf-32"],
)
def test_write_key_in_body_is_kept_nowhere_whatever_the_body_shape(running_hub: RunningHub, path: str, body: bytes) -> None:
    """A top-level array (refused and quarantined whole) and a UTF-16 or -32 body (which json.loads reads,
    but the byte search for b"writeKey" missed) kept the key."""
    answer = running_hub.client.post(path, content=body, auth=(KEY, ""))
    assert answer.status_code in (200, 400), answer.text
    running_hub.settle()
    assert KEY not in database_text(running_hub)


def test_utf16_body_that_is_not_json_is_quarantined_with_the_key_redacted(running_hub: RunningHub) -> None:
    body = f'{{"writeKey": "{KEY}", "batch": ['.encode("utf-16")
    answer = running_hub.client.post("/v1/batch", content=body, auth=(KEY, ""))
    assert answer.status_code == 400 and answer.json()["error"].startswith("body: not valid JSON")
    [kept] = stored(running_hub, schema.quarantine)
    assert KEY.encode("utf-16-le") not in kept["raw_body"] and b'"writeKey": "[redacted]"' in kept["raw_body"]


def test_a_write_key_holding_a_lone_surrogate_is_no_key(running_hub: RunningHub) -> None:
    """Such a key has no UTF-8 form to check: the request is the 401 of a missing key, not a 500."""
    body = b'{"writeKey": "\\ud800", "type": "track", "userId": "u-1", "event": "Product Viewed", "messageId": "m-1"}'
    answer = running_hub.client.post("/v1/track", content=body)
    assert answer.status_code == 401 and "missing write key" in answer.json()["error"], answer.text


def test_write_key_in_body_opens_the_sources_webhook_url_as_it_does_the_sdk_endpoints(running_hub: RunningHub) -> None:
    """POST /v1/webhooks/default with the key as a `writeKey` field was refused with "missing write key: send
    HTTP Basic auth ..., or a writeKey field in the body": the route stripped the field without reading it."""
    answer = post(running_hub, "/v1/webhooks/default", {**message(**VALID), "writeKey": KEY})
    assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text
    wrong = post(running_hub, "/v1/webhooks/default", {**message(**VALID), "writeKey": "not-the-key"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unknown write key: check the source's write key"
    running_hub.settle()
    assert KEY not in database_text(running_hub)
