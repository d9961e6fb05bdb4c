"""Audit 23, small defects: a number beyond a double in one event of a webhook refusing only that event, a process
with no workers saying so at start, and provider callbacks' refusals counted under the destination called."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from connectors.base import InboundRequest, Source
from connectors.sandbox.providers import SandboxProviders
from connectors.sources.generic_hmac import GenericHmacSource
from connectors.sources.hubspot import HubSpotSource
from connectors.sources.rudderstack import RudderStackSource
from hub import runtime
from hub.errors import BadPayloadError
from hub.runtime import Hub
from tests.conftest import RunningHub, hub_with_source, logs_of, make_settings, message

URL = "https://hub.example.com/v1/webhooks/src"
BIG = '"BIG"'  # written in place of 1e400, which json.dumps cannot write
TOKEN = "Bearer rudder-token"


def _hubspot_event(event_id: int, **fields: Any) -> dict[str, Any]:
    return {"portalId": 33, "subscriptionId": 25, "eventId": event_id, "objectId": 1246965,
            "occurredAt": 1462216307945, "subscriptionType": "contact.propertyChange", **fields}


# (source, body wrapping three events, field of the second one's big number)
SOURCES: dict[str, tuple[Callable[[], Source], Callable[[list[Any]], Any], str]] = {
    "rudderstack": (
        lambda: RudderStackSource("src", RudderStackSource.validate_config("test", {"token": "t"})),
        lambda events: events, "properties.price",
    ),
    "hubspot": (
        lambda: HubSpotSource("src", HubSpotSource.validate_config("test", {"client_secret": "s"})),
        lambda events: events, "propertyValue",
    ),
    "generic_hmac": (
        lambda: GenericHmacSource("src", GenericHmacSource.validate_config("test", {"secret": "s", "events": "data.events"})),
        lambda events: {"data": {"events": events}}, "properties.price",
    ),
}


def _events(slug: str) -> list[dict[str, Any]]:
    """Three events of the source's kind, the second carrying BIG where its number goes."""
    if slug == "hubspot":
        return [_hubspot_event(1), _hubspot_event(2, propertyValue="BIG"), _hubspot_event(3)]
    return [message(userId="u-1", event="Viewed"), message(userId="u-2", event="Bought", properties={"price": "BIG"}),
            message(userId="u-3", event="Viewed")]


@pytest.mark.parametrize("slug", list(SOURCES))
def test_a_number_beyond_a_double_refuses_its_webhook_event_alone(slug: str) -> None:
    """One event carrying 1e400 got the whole RudderStack batch, HubSpot array or HMAC webhook's list a 400 "not
    valid JSON", and its good neighbours were lost with it."""
    make_source, wrap, field = SOURCES[slug]
    body = json.dumps(wrap(_events(slug))).replace(BIG, "1e400").encode()
    result = make_source().parse(InboundRequest("POST", URL, {}, body))
    assert len(result.events) == 2
    [problem] = result.problems
    assert (problem.index, problem.field) == (1, field)
    assert "double-precision" in problem.reason


@pytest.mark.parametrize("slug", list(SOURCES))
def test_a_webhook_body_that_is_not_json_beside_a_number_beyond_a_double_is_still_a_400(slug: str) -> None:
    """Kept as it was: reading such a body again for its big numbers must not take what is not JSON."""
    make_source, wrap, _ = SOURCES[slug]
    body = json.dumps(wrap([*_events(slug)[:2], "NAN"])).replace(BIG, "1e400").replace('"NAN"', "NaN").encode()
    with pytest.raises(BadPayloadError, match="body: not valid JSON .*NaN"):
        make_source().parse(InboundRequest("POST", URL, {}, body))


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_rudderstack_batch_with_a_number_beyond_a_double_keeps_its_other_events(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch, database_url: str,
) -> None:
    """Over HTTP: the batch was a 400 and nothing of it kept; now a 200 for the two good events, and the third is
    quarantined naming its field."""
    entry = "{id: rudder, connector: rudderstack, secrets: {token: HUB_SRC_RUDDER_TOKEN}}"
    with hub_with_source(tmp_path, mappings_dir, sandbox, monkeypatch, entry, {"HUB_SRC_RUDDER_TOKEN": TOKEN},
                         database_url=database_url) as running:
        body = json.dumps(_events("rudderstack")).replace(BIG, "1e400").encode()
        answer = running.client.post("/v1/webhooks/rudder", content=body,
                                     headers={"Authorization": TOKEN, "Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == 2
        [problem] = answer.json()["rejected"]
        assert (problem["index"], problem["field"]) == (1, "properties.price")
        [kept] = running.admin("/api/quarantine", source="rudder")["quarantine"]
        assert kept["problems"] == [problem]


# --- a process with no workers ---------------------------------------------------------------------------------------


def test_a_hub_with_no_workers_warns_at_start_that_it_only_takes_events_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`touchhub serve` with HUB_WORKERS empty (or `touchhub worker` with none) ran no worker and said nothing:
    events were taken in and never processed."""
    hub = Hub(make_settings(tmp_path, workers=""))
    with logs_of(monkeypatch, runtime) as logs:
        hub.start()
    hub.stop()
    [warning] = [entry["event"] for entry in logs if "HUB_WORKERS" in entry["event"]]
    assert "only takes events in" in warning and "touchhub worker" in warning

    working = Hub(make_settings(tmp_path, workers="pipeline"))
    with logs_of(monkeypatch, runtime) as logs:
        working.start()
    working.stop()
    assert not [entry for entry in logs if "HUB_WORKERS" in entry["event"]]


# --- callback refusals in hub_events_rejected_total ------------------------------------------------------------------


def _rejected(source: str, reason: str) -> float:
    return REGISTRY.get_sample_value("hub_events_rejected_total", {"source": source, "reason": reason}) or 0.0


def test_callback_refusals_count_under_the_destination_named_or_unknown(running_hub: RunningHub) -> None:
    """A forged (403) or bad (400) Twilio callback counted under source `unknown`, and one to an unknown
    destination (404) was not counted at all."""
    url = f"{running_hub.url}/v1/callbacks/twilio_sms"
    before = {key: _rejected(*key) for key in
              [("twilio_sms", "forbidden"), ("twilio_sms", "bad_payload"), ("unknown", "unknown_source")]}
    assert httpx.post(url, data={"MessageSid": "SM1", "MessageStatus": "delivered"},
                      headers={"X-Twilio-Signature": "forged"}).status_code == 403
    assert running_hub.sandbox.twilio.post_signed(url, {"MessageSid": "SM1"}).status_code == 400
    guessed = httpx.post(f"{running_hub.url}/v1/callbacks/scanner-guess-23", data={"a": "b"})
    assert guessed.status_code == 404
    assert {key: _rejected(*key) - count for key, count in before.items()} == {
        ("twilio_sms", "forbidden"): 1, ("twilio_sms", "bad_payload"): 1, ("unknown", "unknown_source"): 1,
    }
    assert guessed.json()["error"].startswith("destination_id: no destination 'scanner-guess-23' takes callbacks")
    assert b"scanner-guess-23" not in running_hub.client.get("/metrics").content
