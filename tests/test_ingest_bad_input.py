"""Bad input at ingest: the right status, a message naming field and reason, quarantine, no harm done."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.conftest import RunningHub, message

VALID = {"type": "track", "userId": "u-1", "event": "Product Viewed"}


def quarantine(running_hub: RunningHub) -> list[dict]:
    return running_hub.admin("/api/quarantine")["quarantine"]


def test_missing_write_key_is_401(running_hub: RunningHub) -> None:
    answer = running_hub.client.post("/v1/batch", json={"batch": [message(**VALID)]})
    assert answer.status_code == 401
    assert "write key" in answer.json()["error"]
    assert answer.headers["www-authenticate"].startswith("Basic")


def test_wrong_write_key_is_401_and_stores_nothing(running_hub: RunningHub) -> None:
    answer = running_hub.send(message(**VALID), write_key="not-the-key")
    assert answer.status_code == 401
    assert answer.json()["error"] == "unknown write key: check the source's write key"
    assert running_hub.admin("/api/stats")["inbox"] == {}


def test_body_that_is_not_json_is_400_and_quarantined(running_hub: RunningHub) -> None:
    answer = running_hub.client.post("/v1/batch", content=b"{not json", auth=("test-write-key", ""))
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("body: not valid JSON")
    [kept] = quarantine(running_hub)
    assert kept["stage"] == "ingest" and kept["raw_body"] == "{not json"


def test_body_without_batch_array_is_400(running_hub: RunningHub) -> None:
    answer = running_hub.client.post("/v1/batch", json={"events": []}, auth=("test-write-key", ""))
    assert answer.status_code == 400
    assert answer.json()["error"] == "batch: the body must be a JSON object with a 'batch' array of messages"
    assert json.loads(quarantine(running_hub)[0]["raw_body"]) == {"events": []}


def test_bad_items_do_not_sink_their_neighbours(running_hub: RunningHub) -> None:
    answer = running_hub.send(
        message(**VALID),
        message(userId="u-2", event="Signed Up", type=None),
        message(type="track", event="Product Viewed"),
        message(**VALID, timestamp="yesterday"),
        message(**VALID),
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"index": 1, "field": "type", "reason": "is required"},
        {"index": 2, "field": "userId", "reason": "either userId or anonymousId is required"},
        {"index": 3, "field": "timestamp", "reason": "'yesterday' is not an ISO-8601 timestamp"},
    ]
    kept = quarantine(running_hub)
    assert {entry["stage"] for entry in kept} == {"item"}
    assert len(kept) == 3
    running_hub.settle()
    assert running_hub.admin("/api/stats")["touchpoints"] == 2


def test_batch_without_any_valid_item_is_400_with_the_list(running_hub: RunningHub) -> None:
    answer = running_hub.send(message(type="track", userId="u-1"), message(type="launch", userId="u-1"))
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "no valid message in the request"
    assert body["rejected"] == [
        {"index": 0, "field": "event", "reason": "is required for track messages"},
        {"index": 1, "field": "type", "reason": "'launch' is not one of track, identify, page, screen, alias, group"},
    ]
    assert quarantine(running_hub)[0]["stage"] == "ingest"


@pytest.mark.hub_settings(max_body_bytes=2048)
def test_body_over_the_limit_is_413(running_hub: RunningHub) -> None:
    big = message(**VALID, properties={"blob": "x" * 4096})
    answer = running_hub.send(big)
    assert answer.status_code == 413
    assert "2048-byte limit" in answer.json()["error"]


@pytest.mark.hub_settings(max_body_bytes=4096)
def test_gzip_bomb_is_413(running_hub: RunningHub) -> None:
    bomb = gzip.compress(json.dumps({"batch": [message(**VALID, properties={"x": "a" * 100_000})]}).encode())
    assert len(bomb) < 4096
    answer = running_hub.client.post(
        "/v1/batch", content=bomb, headers={"Content-Encoding": "gzip"}, auth=("test-write-key", "")
    )
    assert answer.status_code == 413


def test_gzip_body_is_accepted(running_hub: RunningHub) -> None:
    body = gzip.compress(json.dumps({"batch": [message(**VALID)]}).encode())
    answer = running_hub.client.post(
        "/v1/batch", content=body, headers={"Content-Encoding": "gzip"}, auth=("test-write-key", "")
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == 1


def test_same_message_id_twice_is_acknowledged_twice_and_stored_once(running_hub: RunningHub) -> None:
    first = running_hub.send(message(**VALID, messageId="m-1"))
    second = running_hub.send(message(**VALID, messageId="m-1"))
    assert (first.status_code, first.json()["accepted"]) == (200, 1)
    assert (second.status_code, second.json()["accepted"], second.json()["duplicates"]) == (200, 0, 1)
    running_hub.settle()
    assert running_hub.admin("/api/stats")["touchpoints"] == 1


def test_single_message_endpoint_implies_the_type(running_hub: RunningHub) -> None:
    answer = running_hub.client.post(
        "/v1/identify", json={"userId": "u-9", "traits": {"email": "nine@example.com"}}, auth=("test-write-key", "")
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    running_hub.settle()
    [touchpoint] = running_hub.admin("/api/touchpoints")["touchpoints"]
    assert (touchpoint["kind"], touchpoint["event"], touchpoint["stage"]) == ("identify", "identify", "consideration")


def test_admin_api_needs_the_bearer_token(running_hub: RunningHub) -> None:
    assert running_hub.client.get("/api/touchpoints").status_code == 401
    wrong = running_hub.client.get("/api/touchpoints", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert running_hub.client.get("/healthz").status_code == 200
