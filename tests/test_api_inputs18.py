"""Input the admin API, ingest and the config loaders took badly: deep nesting, NUL, the calendar's ends.

Deep values are checked through small facts derived from them (a depth, a status): pytest's report of a failed
assertion on a value nested hundreds of levels deep crashed the run ("AST constructor recursion depth mismatch").
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from connectors.base import InboundRequest, ParseResult
from connectors.sources.generic_hmac import GenericHmacSource
from connectors.sources.hubspot import HubSpotSource
from connectors.sources.rudderstack import RudderStackSource
from connectors.sources.segment import take_message
from connectors.storable_json import MAX_JSON_DEPTH
from hub import ingest
from hub.clock import utcnow
from hub.errors import BadPayloadError
from hub.model import RawEvent
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import ADMIN_TOKEN, WRITE_KEY, RunningHub, message

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BOTH_STORES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
TOO_DEEP = "is nested deeper than 64 levels of objects and arrays, the most the hub takes; flatten the payload"


def nested(depth: int) -> Any:
    """`depth` arrays, one inside the other, around a string."""
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    """How many arrays and objects deep `value` goes; a loop, as Python's recursion would not reach the bottom."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def quarantined(running_hub: RunningHub) -> list[dict[str, Any]]:
    return running_hub.admin("/api/quarantine")["quarantine"]


# --- nesting ---------------------------------------------------------------------------------------------------------


def at_the_limit(user_id: str, **properties: Any) -> dict[str, Any]:
    """A message exactly MAX_JSON_DEPTH deep on its own: message (1) > properties (2) > tree and its arrays."""
    return message(userId=user_id, event="Product Viewed", properties={"tree": nested(MAX_JSON_DEPTH - 2), **properties})


def too_deep(user_id: str, depth: int = 300) -> dict[str, Any]:
    return message(userId=user_id, event="Product Viewed", properties={"tree": nested(depth)})


def test_a_message_the_hub_takes_alone_it_also_takes_in_a_batch(running_hub: RunningHub) -> None:
    """The limit was counted from the request body: a message was taken at /v1/track and refused at /v1/batch
    (two more levels: the body and its `batch` array), which is what every SDK sends."""
    alone = running_hub.client.post("/v1/track", json=at_the_limit("u-alone"), auth=(WRITE_KEY, ""))
    assert alone.status_code == 200, alone.text
    batched = running_hub.send(at_the_limit("u-batched"))
    assert batched.status_code == 200, batched.text


def test_one_message_nested_too_deep_does_not_cost_the_rest_of_its_batch(running_hub: RunningHub) -> None:
    """A too-deep message made its whole batch a 400, which SDKs do not retry: the 99 good messages went with it,
    where any other per-message problem (a bad type, NUL) rejects only that item. Now it is a rejected item,
    named by its path and kept in quarantine on its own."""
    good = [message(userId=f"u-{n}", event="Page Viewed") for n in range(99)]
    answer = running_hub.send(*good, too_deep("u-deep"))
    assert answer.status_code == 200, answer.text
    where = "properties.tree" + "[0]" * (MAX_JSON_DEPTH - 2)
    assert answer.json()["accepted"] == 99
    assert answer.json()["rejected"] == [{"index": 99, "field": where, "reason": TOO_DEEP}]
    [kept] = quarantined(running_hub)
    assert (kept["stage"], kept["reason"]) == ("item", f"{where}: {TOO_DEEP}")
    assert depth_of(json.loads(kept["raw_body"])) == 302


def test_a_batch_at_the_limit_is_taken_and_one_whose_envelope_nests_past_it_is_400(running_hub: RunningHub) -> None:
    """Ingest took nesting up to ~1,000 levels, but the admin API's answers give up past 255: one accepted event
    nested 300 deep made GET /api/touchpoints a 500. Messages at the limit are still taken, also in a body with
    more brackets than the limit and an integer orjson cannot write; a body whose own fields, beside its
    messages, nest past the limit is refused whole, naming where, and kept in quarantine."""
    pages = [message(userId=f"u-{n}", event="Page Viewed", context={"page": {"path": "/"}}) for n in range(40)]
    taken = running_hub.send(at_the_limit("u-1", n=2**70), *pages)
    assert (taken.status_code, taken.json()["accepted"]) == (200, 41), taken.text

    deep = json.dumps({"batch": [message(userId="u-2", event="Page Viewed")], "context": {"tree": nested(300)}})
    refused = running_hub.client.post("/v1/batch", content=deep.encode(), auth=(WRITE_KEY, ""))
    assert refused.status_code == 400
    where = "context.tree" + "[0]" * (MAX_JSON_DEPTH - 2)  # body (1) > context (2) > tree (3) and its arrays
    assert refused.json()["error"] == f"body: {where} {TOO_DEEP}"
    [kept] = quarantined(running_hub)
    assert (kept["stage"], kept["reason"], kept["raw_body"]) == ("ingest", f"body: {where} {TOO_DEEP}", deep)

    running_hub.settle()
    answer = running_hub.client.get("/api/touchpoints", headers=AUTH)
    assert (answer.status_code, len(answer.json()["touchpoints"])) == (200, 41)


def test_a_message_nested_past_what_quarantine_can_write_refuses_its_body_whole_not_500(running_hub: RunningHub) -> None:
    """orjson reads 1,024 levels, but quarantine writes a refused message with the json module, which gives up
    near 1,000: such a message, refused on its own, would fail the request with a 500 that SDKs resend for ever.
    Its body is refused (400) and kept whole instead."""
    deep = message(userId="u-deep", event="Product Viewed", properties={"tree": "TREE"})
    batch = json.dumps({"batch": [message(userId="u-1", event="Page Viewed"), deep]})
    body = batch.replace('"TREE"', "[" * 1010 + "]" * 1010)  # json.dumps itself cannot write it
    refused = running_hub.client.post("/v1/batch", content=body.encode(), auth=(WRITE_KEY, ""))
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("body: a message is nested too deeply to keep")
    [kept] = quarantined(running_hub)
    assert (kept["stage"], kept["raw_body"] == body) == ("ingest", True)


def test_messages_with_their_write_key_in_the_body_one_nested_past_the_limit_are_kept_without_the_key(
    running_hub: RunningHub,
) -> None:
    """/v1/batch whose messages carry a `writeKey` (analytics-clj, Analytics.NET), one with a trait nested 300
    deep: the rest are taken and the deep one is refused on its own, kept in quarantine without the key."""
    messages = [
        message("identify", userId="u-ok", writeKey=WRITE_KEY, traits={"plan": "pro"}),
        message("identify", userId="u-deep", writeKey=WRITE_KEY, traits={"tree": nested(300)}),
    ]
    answer = running_hub.client.post("/v1/batch", json={"batch": messages})
    assert answer.status_code == 200, answer.text
    # message (1) > traits (2) > tree (3) and its arrays
    assert answer.json()["rejected"] == [{"index": 1, "field": f"traits.tree{'[0]' * (MAX_JSON_DEPTH - 2)}",
                                          "reason": TOO_DEEP}]
    [kept] = quarantined(running_hub)
    assert kept["stage"] == "item" and WRITE_KEY not in kept["raw_body"]
    running_hub.settle()
    lookup = running_hub.client.get("/api/profiles/lookup", params={"type": "user_id", "value": "u-deep"}, headers=AUTH)
    assert lookup.status_code == 404


URL = "https://hub.example.com/v1/webhooks/src"


def hubspot_event(event_id: int, **fields: Any) -> dict[str, Any]:
    return {"portalId": 33, "subscriptionId": 25, "eventId": event_id, "objectId": 1246965,
            "occurredAt": 1462216307945, "subscriptionType": "contact.propertyChange", **fields}


def test_hubspot_events_count_their_own_levels_and_a_too_deep_one_is_refused_alone() -> None:
    """HubSpot posts an array of events: an event got one level fewer than the limit, and one too deep refused
    the whole array (400), its neighbours with it."""
    source = HubSpotSource("src", HubSpotSource.validate_config("test", {"client_secret": "s"}))
    # event (1) > propertyValue and its arrays
    events = [hubspot_event(1, propertyValue=nested(MAX_JSON_DEPTH - 1)), hubspot_event(2, propertyValue=nested(300))]
    result = source.parse(InboundRequest("POST", URL, {}, json.dumps(events).encode()))
    assert [event.payload["eventId"] for event in result.events] == [1]
    assert [problem.as_dict() for problem in result.problems] == [
        {"index": 1, "field": "propertyValue" + "[0]" * (MAX_JSON_DEPTH - 1), "reason": TOO_DEEP}
    ]


def test_events_of_an_events_list_count_their_own_levels_and_its_envelope_is_checked_too() -> None:
    """json_events (generic_hmac, journey_map) counted from the body: an event under `data.events` got three
    levels fewer than alone, and one too deep refused the whole request. A body too deep outside its events
    is still refused whole, naming where."""
    config = GenericHmacSource.validate_config("test", {"secret": "s", "events": "data.events"})
    source = GenericHmacSource("src", config)
    events = [{"id": "e-1", "tree": nested(MAX_JSON_DEPTH - 1)}, {"id": "e-2", "tree": nested(300)}]
    result = source.parse(InboundRequest("POST", URL, {}, json.dumps({"data": {"events": events}}).encode()))
    assert [event.payload["id"] for event in result.events] == ["e-1"]
    assert [(problem.index, problem.field) for problem in result.problems] == [(1, "tree" + "[0]" * (MAX_JSON_DEPTH - 1))]

    body = {"data": {"events": [{"id": "e-3"}]}, "meta": nested(300)}
    with pytest.raises(BadPayloadError) as refused:
        source.parse(InboundRequest("POST", URL, {}, json.dumps(body).encode()))
    assert refused.value.message == f"body: meta{'[0]' * (MAX_JSON_DEPTH - 1)} {TOO_DEEP}"


def test_rudderstack_events_count_their_own_levels_and_a_too_deep_one_is_refused_alone() -> None:
    """RudderStack batches still counted from the body: an event in its array got a level fewer than alone, and
    one too deep refused them all."""
    source = RudderStackSource("src", RudderStackSource.validate_config("test", {"token": "t"}))
    events = [{"messageId": "m-1", "tree": nested(MAX_JSON_DEPTH - 1)}, {"messageId": "m-2", "tree": nested(300)}]
    result = source.parse(InboundRequest("POST", URL, {}, json.dumps(events).encode()))
    assert [event.message_id for event in result.events] == ["m-1"]
    assert [(problem.index, problem.field) for problem in result.problems] == [(1, "tree" + "[0]" * (MAX_JSON_DEPTH - 1))]


def test_the_preview_of_a_sample_nested_past_the_limit_is_400_naming_where(running_hub: RunningHub) -> None:
    """The console's live preview of a sample nested 300 deep (which ingest took) was a 500."""
    sample = message(userId="u-deep", event="Product Viewed", properties={"tree": nested(300)})
    answer = running_hub.client.post("/api/mappings/default/preview", json={"sample": sample}, headers=AUTH)
    assert answer.status_code == 400
    # request (1) > sample (2) > properties (3) > tree (4) and its arrays
    assert answer.json()["detail"] == f"body: sample.properties.tree{'[0]' * (MAX_JSON_DEPTH - 3)} {TOO_DEEP}"


def test_events_stored_nested_deeper_than_pydantic_writes_are_shown_by_the_admin_api(running_hub: RunningHub) -> None:
    """Events a hub took before it refused deep nesting stay in its store: pydantic, which wrote the admin API's
    answers, gives up past 255 levels, so the touchpoints page, the person's profile and the console's timeline
    of them were 500s for good. Taken in here as such a hub did, past the source's parse."""
    events = [
        take_message("default", message("identify", userId="u-old", traits={"tree": nested(300)}), check_depth=False),
        take_message(
            "default", message(userId="u-old", event="Product Viewed", properties={"tree": nested(300)}), check_depth=False
        ),
    ]
    assert all(isinstance(event, RawEvent) for event in events)
    ingest.accept(running_hub.hub.store, "default", ParseResult(events=events), utcnow())  # type: ignore[arg-type]
    running_hub.hub.wakeups.announce("pipeline")
    running_hub.settle()

    lookup = running_hub.client.get("/api/profiles/lookup", params={"type": "user_id", "value": "u-old"}, headers=AUTH)
    assert lookup.status_code == 200
    profile = lookup.json()
    assert depth_of(profile["traits"]["tree"]) == 300
    assert profile["created_at"].endswith("Z")  # written as pydantic writes times, deep or not
    by_id = running_hub.client.get(f"/api/profiles/{profile['profile_id']}", headers=AUTH)
    assert (by_id.status_code, depth_of(by_id.json()["traits"]["tree"])) == (200, 300)
    for params in ({}, {"profile_id": profile["profile_id"]}):  # the touchpoints page; the console's timeline
        page = running_hub.client.get("/api/touchpoints", params=params, headers=AUTH)
        assert page.status_code == 200
        viewed = [tp for tp in page.json()["touchpoints"] if tp["event"] == "Product Viewed"]
        assert [depth_of(tp["properties"]["tree"]) for tp in viewed] == [300]


# --- NUL ---------------------------------------------------------------------------------------------------------------


@BOTH_STORES
def test_nul_in_an_admin_filter_or_id_is_a_4xx_not_a_500(running_hub: RunningHub) -> None:
    """PostgreSQL refuses text holding NUL, so a %00 in a filter or an id of the admin API was a 500 on the
    multi-node store (SQLite found nothing): now 400 naming the filter, or 404 as for any unknown id."""
    assert running_hub.send(message("identify", userId="u-nul", traits={"name": "Ana"})).status_code == 200
    running_hub.settle()
    profile_id = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-nul")["profile_id"]
    filters = [
        ("/api/touchpoints", {"event": "a\x00b"}), ("/api/touchpoints", {"profile_id": "p\x00"}),
        ("/api/deliveries", {"channel": "sms\x00"}), ("/api/decisions", {"rule_id": "r\x00"}),
        ("/api/profiles/lookup", {"type": "user_id", "value": "u\x00"}),
    ]
    answers = [running_hub.client.get(path, params=params, headers=AUTH) for path, params in filters]
    assert [answer.status_code for answer in answers] == [400] * len(filters)
    assert answers[0].json()["detail"] == "event: contains \\u0000 (NUL), which nothing the hub stores holds; remove it"

    ids = [
        ("GET", "/api/profiles/p%00"), ("GET", "/api/profiles/p%00/explain"), ("GET", "/api/decisions/d%00"),
        ("POST", "/api/deliveries/d%00/replay"), ("DELETE", "/api/profiles/p%00"),
    ]
    answers = [running_hub.client.request(method, path, headers=AUTH) for method, path in ids]
    answers.append(running_hub.client.post("/api/profiles/p%00/unmerge", json={"merged_profile_id": "q"}, headers=AUTH))
    assert [answer.status_code for answer in answers] == [404] * (len(ids) + 1)
    assert answers[0].json()["detail"] == "no profile 'p\\x00'"

    unmerge = running_hub.client.post(
        f"/api/profiles/{profile_id}/unmerge", json={"merged_profile_id": "q\x00"}, headers=AUTH
    )
    assert unmerge.status_code == 422
    [problem] = unmerge.json()["detail"]
    assert problem["loc"] == ["body", "merged_profile_id"] and "contains \\u0000 (NUL)" in problem["msg"]


# --- the calendar's ends -----------------------------------------------------------------------------------------------


def test_a_delivery_log_bound_at_an_end_of_the_calendar_is_a_422_naming_it(running_hub: RunningHub) -> None:
    """?since=0001-01-01T00:00:00+14:00 parses, but converting it to UTC for the query overflowed
    (OverflowError: date value out of range): the delivery log answered 500."""
    for bound in ("since", "until"):
        for moment in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"):
            answer = running_hub.client.get("/api/deliveries", params={bound: moment}, headers=AUTH)
            assert answer.status_code == 422, (bound, moment, answer.text)
            assert answer.json()["detail"].startswith(f"{bound}: "), answer.text
    within = running_hub.client.get("/api/deliveries", params={"since": "0001-01-01T14:00:00+14:00"}, headers=AUTH)
    assert within.status_code == 200


# --- YAML nested too deep ------------------------------------------------------------------------------------------------

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
DEEP_YAML = "event: " + "[" * 5000 + "]" * 5000 + "\n"  # valid YAML, nested past what PyYAML recurses through


def touchhub(*args: str, mappings: Path) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "200", "PATH": "", "HUB_MAPPINGS_DIR": str(mappings)}
    return subprocess.run([TOUCHHUB, *args], capture_output=True, text=True, timeout=120, env=env)


def test_mappings_check_names_a_file_nested_too_deep_instead_of_a_traceback(mappings_dir: Path) -> None:
    """`config_files.load_model` turned only YAMLError and ValidationError into problems: PyYAML's RecursionError
    ended `touchhub mappings check` in a traceback."""
    path = mappings_dir / "segment.yaml"
    path.write_text(DEEP_YAML)
    result = touchhub("mappings", "check", mappings=mappings_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert f"{path}: nested too deeply to read" in " ".join(output.split())


def test_mappings_preview_of_a_draft_nested_too_deep_names_it_instead_of_a_traceback(
    mappings_dir: Path, tmp_path: Path
) -> None:
    """`touchhub mappings preview SOURCE SAMPLE --mapping DRAFT`, the CLI's preview of an edit, the same."""
    draft, sample = tmp_path / "draft.yaml", tmp_path / "sample.json"
    draft.write_text(DEEP_YAML)
    sample.write_text(json.dumps(message(userId="u-1", event="Product Viewed")))
    result = touchhub("mappings", "preview", "default", str(sample), "--mapping", str(draft), mappings=mappings_dir)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output[-2000:]
    assert f"{draft}: nested too deeply to read" in " ".join(output.split())


# --- the preview off the event loop ----------------------------------------------------------------------------------


@pytest.mark.hub_settings(max_body_bytes=4 * 1024 * 1024)
def test_ingest_is_answered_while_a_slow_preview_is_worked_out(running_hub: RunningHub) -> None:
    """The live preview parsed and normalized its sample on the event loop: a large sample (a second or more)
    held up every request the hub had, SDK batches included, until it was done.

    The draft mapping makes each of 30 events cost ~50 ms (eight filters over 2,000 items) and the answer small,
    so the preview takes over a second: a batch sent 0.3 s in is answered before the preview is.
    """
    draft = yaml.safe_load((PROJECT_MAPPINGS / "segment.yaml").read_text())
    draft["properties"] = "{" + ", ".join(f"over_{n}: length(properties.items[?price > `{n}`])" for n in range(8)) + "}"
    items = [{"price": 20}] * 2000
    sample = {"batch": [message(userId=f"u-{n}", event="Product Viewed", properties={"items": items}) for n in range(30)]}
    previewed: list[httpx.Response] = []

    def preview() -> None:
        with httpx.Client(base_url=running_hub.url, timeout=120) as client:
            previewed.append(client.post("/api/mappings/default/preview", json={"sample": sample, "mapping": draft},
                                         headers=AUTH))

    worker = threading.Thread(target=preview)
    worker.start()
    try:
        time.sleep(0.3)  # the body is read and parsed in a few tens of milliseconds; the events take over a second
        acknowledged = running_hub.send(message(userId="u-meanwhile", event="Page Viewed"))
        preview_pending = not previewed
    finally:
        worker.join()
    assert acknowledged.status_code == 200
    assert preview_pending, "the batch was answered only once the preview was"
    [answer] = previewed
    assert answer.status_code == 200, answer.text
    outcomes = answer.json()["outcomes"]
    assert {outcome["touchpoint"]["properties"]["over_7"] for outcome in outcomes} == {2000} and len(outcomes) == 30
