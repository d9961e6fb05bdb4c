"""Bad input at ingest: the right status, a message naming field and reason, quarantine, no harm done."""

from __future__ import annotations

import gzip
import json
import zlib

import httpx
import pytest

from hub.api.ingest import TOO_DEEP_TO_KEEP
from tests.conftest import WRITE_KEY, RunningHub, message

VALID = {"type": "track", "userId": "u-1", "event": "Product Viewed"}


def quarantine(running_hub: RunningHub) -> list[dict]:
    """The quarantine, each body whole (the list cuts them short)."""
    listed = running_hub.admin("/api/quarantine")["quarantine"]
    return [running_hub.admin(f"/api/quarantine/{row['id']}") for row in listed]


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


@pytest.mark.hub_settings(max_batch_bytes=2048)
def test_body_over_the_limit_is_413(running_hub: RunningHub) -> None:
    big = message(**VALID, properties={"blob": "x" * 4096})
    answer = running_hub.send(big)
    assert answer.status_code == 413
    assert "2048-byte limit" in answer.json()["error"]


@pytest.mark.hub_settings(max_batch_bytes=4096)
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


def post_body(running_hub: RunningHub, body: bytes, path: str = "/v1/batch", **headers: str) -> httpx.Response:
    return running_hub.client.post(path, content=body, auth=("test-write-key", ""), headers=headers)


LONG_INTEGER = ('{"batch": [{"type": "track", "userId": "u-1", "event": "Product Viewed", "properties": {"n": '
                + "1" * 5000 + "}}]}").encode()
DEEP_NESTING = b'{"type": "track", "userId": "u-1", "event": "X", "properties": {"deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/v1/batch", LONG_INTEGER, "a number has more than 4300 digits"),
        ("/v1/batch", DEEP_NESTING, "nested too deeply"),
        ("/v1/track", DEEP_NESTING, "nested too deeply"),
    ],
    ids=["5000-digit-integer", "deep-nesting-batch", "deep-nesting-track"],
)
def test_json_the_parser_cannot_take_is_400_naming_the_reason_and_quarantined(
    running_hub: RunningHub, path: str, body: bytes, reason: str
) -> None:
    """json.loads raises ValueError (Python's 4300-digit int limit) or RecursionError, not JSONDecodeError:
    both were a bare 500 with nothing kept."""
    answer = post_body(running_hub, body, path)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == f"body: not valid JSON ({reason})"
    [kept] = quarantine(running_hub)
    assert kept["stage"] == "ingest" and kept["raw_body"] == body.decode()


@pytest.mark.parametrize("depth", [990, 1015])
@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track"])
def test_json_the_parser_reads_but_the_store_cannot_write_is_400_and_quarantined(
    running_hub: RunningHub, path: str, depth: int
) -> None:
    """Nesting within orjson's 1,024 levels but past what json.dumps recurses through when the inbox stores it:
    a bare 500, nothing kept, retried by the SDK for ever. Now the message is refused for its depth (past 64
    levels), or, where even quarantine cannot write it, the body whole."""
    message = b'{"type": "track", "userId": "u-1", "event": "X", "properties": {"deep": ' + b"[" * depth + b"]" * depth + b"}}"
    body = b'{"batch": [' + message + b"]}" if path == "/v1/batch" else message
    answer = post_body(running_hub, body, path)
    assert answer.status_code == 400, answer.text
    assert "nested deeper than 64 levels" in answer.text or answer.json()["error"] == TOO_DEEP_TO_KEEP, answer.text
    [kept] = quarantine(running_hub)
    assert kept["stage"] == "ingest" and kept["raw_body"] == body.decode()


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("NaN", "NaN is not a JSON value"),
        ("Infinity", "Infinity is not a JSON value"),
        ("-Infinity", "-Infinity is not a JSON value"),
    ],
)
def test_numbers_json_has_no_place_for_are_400(running_hub: RunningHub, number: str, reason: str) -> None:
    """RFC 8259 has no NaN or Infinity, and 1e400 reads as infinity: json.loads took them, so they were stored
    and sent on as invalid JSON."""
    body = f'{{"batch": [{{"type": "track", "userId": "u-1", "event": "Product Viewed", "properties": {{"price": {number}}}}}]}}'
    answer = post_body(running_hub, body.encode())
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(f"body: not valid JSON ({reason}")
    assert len(quarantine(running_hub)) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("number", ["NaN"])
def test_non_finite_number_in_one_message_is_400_not_a_500_on_postgresql(running_hub: RunningHub, number: str) -> None:
    """PostgreSQL's json column refuses NaN and Infinity: the whole batch's insert failed, a bare 500."""
    good = json.dumps(message(**VALID))
    body = (f'{{"batch": [{good}, {{"type": "track", "userId": "u-2", "event": "Product Viewed", '
            f'"messageId": "m-nan", "properties": {{"price": {number}}}}}]}}').encode()
    answer = post_body(running_hub, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("body: not valid JSON")
    assert len(quarantine(running_hub)) == 1


def test_send_time_too_far_from_the_event_refuses_that_message_not_the_batch(running_hub: RunningHub) -> None:
    """Both times are valid ISO-8601, but the clock correction (receivedAt - (sentAt - timestamp)) overflows:
    that was an unhandled OverflowError, a 500 that lost the valid neighbour too."""
    bad = message(**VALID, timestamp="0001-01-01T00:00:00+00:00", sentAt="9999-12-31T00:00:00+00:00")
    answer = running_hub.send(message(**VALID), bad)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    [problem] = answer.json()["rejected"]
    assert (problem["index"], problem["field"]) == (1, "sentAt")
    assert "too far from the event's time" in problem["reason"]
    assert [entry["stage"] for entry in quarantine(running_hub)] == ["item"]


@pytest.mark.hub_settings(pipeline_max_attempts=1)
@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "1900-01-01T00:00:00Z"])
def test_event_time_outside_the_date_range_is_quarantined_at_the_mapping_stage(running_hub: RunningHub, timestamp: str) -> None:
    """Year 1 at +01:00 is a valid ISO-8601 time but year 0 in UTC: an OverflowError the pipeline retried as if
    it were ours, then quarantined at stage "pipeline" without naming the field. Times over a century before receipt are a clock's (later ones are taken
    at receipt: tests/test_time24.py)."""
    answer = running_hub.send(message(**VALID, timestamp=timestamp))
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    running_hub.settle()
    [kept] = quarantine(running_hub)
    assert (kept["stage"], kept["reason"].split(":")[0]) == ("mapping", "occurred_at"), kept


def test_multi_member_gzip_body_is_read_whole(running_hub: RunningHub) -> None:
    """RFC 1952 allows several members (`cat a.gz b.gz`, streaming compressors); only the first was read and
    the rest silently dropped."""
    text = json.dumps({"batch": [message(**VALID), message(**VALID)]}).encode()
    body = gzip.compress(text[:40]) + gzip.compress(text[40:])
    answer = post_body(running_hub, body, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2


@pytest.mark.hub_settings(max_batch_bytes=4096)
def test_size_limit_counts_every_gzip_member(running_hub: RunningHub) -> None:
    member = gzip.compress(b" " * 3000)
    answer = post_body(running_hub, member + member, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 413, answer.text


def test_gzip_stream_cut_before_its_trailer_is_400(running_hub: RunningHub) -> None:
    """Without its last 8 bytes (CRC-32 and length) the stream never ends, so its integrity was never checked
    and the body was taken as complete."""
    body = gzip.compress(json.dumps({"batch": [message(**VALID)]}).encode())[:-8]
    answer = post_body(running_hub, body, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "body: Content-Encoding is gzip but the gzip stream is cut off before its end"


def test_x_gzip_is_gzip(running_hub: RunningHub) -> None:
    """RFC 9110 8.4.1.3: a recipient SHOULD treat x-gzip as gzip."""
    body = gzip.compress(json.dumps({"batch": [message(**VALID)]}).encode())
    answer = post_body(running_hub, body, **{"Content-Encoding": "x-gzip"})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("encoding", ["deflate", "br", "compress", "gzip, gzip"])
def test_content_encoding_the_hub_does_not_decode_is_415_naming_the_header(running_hub: RunningHub, encoding: str) -> None:
    """Neither uvicorn nor Starlette decodes request bodies: the body was parsed as if not encoded, and the
    sender read only 'not valid JSON (utf-8 codec can't decode ...)'."""
    body = zlib.compress(json.dumps({"batch": [message(**VALID)]}).encode())
    answer = post_body(running_hub, body, **{"Content-Encoding": encoding})
    assert answer.status_code == 415, answer.text
    assert answer.json()["error"] == (
        f"Content-Encoding: {encoding!r} is not supported; send the body as it is or with gzip"
    )


def test_a_gzip_body_of_more_members_than_any_compressor_makes_is_400(running_hub: RunningHub) -> None:
    """Thousands of empty members cost a decompressor each, on the event loop, before any key is checked."""
    body = gzip.compress(b"") * 1000 + gzip.compress(json.dumps({"batch": [message(**VALID)]}).encode())
    answer = running_hub.client.post("/v1/batch", content=body, auth=(WRITE_KEY, ""), headers={"content-encoding": "gzip"})
    assert answer.status_code == 400 and "members" in answer.json()["error"], answer.text
