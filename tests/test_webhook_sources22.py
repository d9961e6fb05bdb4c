"""Inbound webhook sources reading a body: their own expressions failing on it, a CSV journey map giving one id two
meanings, and a sender's own `receivedAt`."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.base import InboundRequest
from connectors.sandbox.providers import SandboxProviders
from connectors.sources.journey_map import load_journey_map
from connectors.sources.rudderstack import RudderStackSource
from hub.errors import ConfigError
from hub.mapping import load_mapping
from hub.normalize import normalize
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import RunningHub, hub_with_source

SECRET = "form-secret"
FORMS = "{id: forms, connector: generic_hmac, secrets: {secret: HUB_SRC_FORMS_SECRET}, " \
        "config: {events: events, message_id: \"join('-', [form, id])\"}}"
SORTED_FORMS = "{id: sorted-forms, connector: generic_hmac, secrets: {secret: HUB_SRC_FORMS_SECRET}, " \
               "config: {events: \"sort_by(events, &at)\"}}"


@pytest.fixture
def forms_hub(
    request: pytest.FixtureRequest, tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[RunningHub]:
    """A hub with the generic HMAC source the test names (`indirect` parametrization: FORMS or SORTED_FORMS)."""
    with hub_with_source(tmp_path, mappings_dir, sandbox, monkeypatch, request.param, {"HUB_SRC_FORMS_SECRET": SECRET}) as hub:
        yield hub


def post_signed(hub: RunningHub, source_id: str, document: Any) -> tuple[bytes, Any]:
    body = json.dumps(document).encode()
    headers = {"X-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
               "Content-Type": "application/json"}
    return body, hub.client.post(f"/v1/webhooks/{source_id}", content=body, headers=headers)


@pytest.mark.parametrize("forms_hub", [FORMS], indirect=True, ids=["forms"])
def test_a_message_id_expression_failing_on_one_event_refuses_that_event_alone(forms_hub: RunningHub) -> None:
    """`join` of a number id raised out of parse(): the signed request was a 500, which the platform resent for
    ever, and the hub kept neither event."""
    events = [{"form": "f1", "id": 7, "event": "Signed Up", "user_id": "u1"},
              {"form": "f1", "id": "8", "event": "Signed Up", "user_id": "u2"}]
    _, answer = post_signed(forms_hub, "forms", {"events": events})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    [problem] = answer.json()["rejected"]
    assert (problem["index"], problem["field"]) == (0, "message_id")
    assert problem["reason"].startswith(
        "\"join('-', [form, id])\" failed on this event: In function join(), invalid type for value: 7"
    ), problem["reason"]
    [kept] = forms_hub.admin("/api/quarantine", source="forms")["quarantine"]
    assert (kept["stage"], json.loads(kept["raw_body"])) == ("item", events[0])


@pytest.mark.parametrize("forms_hub", [SORTED_FORMS], indirect=True, ids=["sorted-forms"])
def test_an_events_expression_failing_on_the_body_is_a_400_and_the_body_quarantined(forms_hub: RunningHub) -> None:
    """`sort_by` over a number and a string raised out of parse(): a 500, resent for ever, nothing kept."""
    body, answer = post_signed(forms_hub, "sorted-forms", {"events": [{"at": 1, "user_id": "u1"}, {"at": "2", "user_id": "u2"}]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("events: 'sort_by(events, &at)' failed on this body: In function sort_by()")
    [kept] = forms_hub.admin("/api/quarantine", source="sorted-forms")["quarantine"]
    assert (kept["stage"], kept["raw_body"]) == ("ingest", body.decode())


def test_a_csv_journey_map_giving_one_stage_id_two_stages_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """The CSV repeats each stage and moment on every row and the last row won: a row copied and half edited
    (TP-CART keeping S1/M1 as decision/cart_activity) relabelled Home page views as cart activity, which the cart
    rules answered. The JSON export refuses such a map ("stage ids must be unique")."""
    path = tmp_path / "shop.csv"
    path.write_text(
        "touchpoint_id,touchpoint,channel,stage_id,stage,stage_label,moment_id,moment,moment_label\n"
        "TP-HOME,Home page,web,S1,awareness,Discover,M1,browsing,Just looking\n"
        "TP-CART,Cart drawer,mobile,S1,decision,Buy,M1,cart_activity,Filling the cart\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_journey_map(path)
    assert raised.value.problems == [
        f"{path}:3: stage_id: 'S1' is stage 'decision' labelled 'Buy' here but 'awareness' labelled 'Discover' "
        "at line 2; give each stage its own id, or make the rows agree",
        f"{path}:3: moment_id: 'M1' is moment 'cart_activity' labelled 'Filling the cart' here but 'browsing' "
        "labelled 'Just looking' at line 2; give each moment its own id, or make the rows agree",
    ]


def test_rudderstacks_own_received_at_is_kept_and_dates_an_event_without_a_timestamp() -> None:
    """The hub wrote its own time over the `receivedAt` RudderStack forwards (when RudderStack took the event in,
    maybe hours before a retried forward): the raw event lost it, and rudderstack.yaml's
    `occurred_at: timestamp || originalTimestamp || receivedAt` dated the event when the hub got it."""
    now = datetime.now(timezone.utc)
    sent = now - timedelta(minutes=10)
    forwarded = {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m-1",
                 "receivedAt": sent.isoformat()}
    unstamped = {"type": "track", "event": "Order Completed", "userId": "u2"}
    source = RudderStackSource("rs", RudderStackSource.validate_config("test", {"token": "t"}))
    request = InboundRequest("POST", "http://hub.invalid/v1/webhooks/rs", {"Authorization": "t"},
                             json.dumps([forwarded, unstamped]).encode())
    kept, hubs = source.parse(request).events
    assert kept.payload["receivedAt"] == sent.isoformat()
    touchpoint = normalize(kept, load_mapping(PROJECT_MAPPINGS / "rudderstack.yaml"), now, "US")
    assert touchpoint.occurred_at == sent
    assert now <= datetime.fromisoformat(hubs.payload["receivedAt"]) <= datetime.now(timezone.utc)
    assert source.parse(request).events[1].message_id == hubs.message_id  # the hub's time is no part of the id
