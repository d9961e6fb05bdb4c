"""POST /v1/webhooks/{source_id} and mappings/sources.yaml: sources configured by ops, secrets from env."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.errors import ConfigError
from hub.runtime import Hub
from hub.store import Store, inbox
from tests.conftest import RunningHub, make_settings, message, serve_hub
from tests.source_contract import fixture_body

SECRET = "segment-shared-secret"
SOURCES = """
sources:
  - id: segment-hook
    connector: segment
    secrets: {shared_secret: HUB_SRC_SEGMENT_HOOK_SECRET}
  - id: app-sdk
    connector: segment
    secrets: {write_key: HUB_SRC_APP_SDK_WRITE_KEY}
  - id: crm
    connector: hubspot
    secrets: {client_secret: HUB_SRC_CRM_SECRET}
  - id: journeys
    connector: journey_map
    secrets: {secret: HUB_SRC_JOURNEYS_SECRET}
    config: {map_file: journeys/web_shop.csv, events: events, message_id: id}
"""


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Signature": hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(), "Content-Type": "application/json"}


@pytest.fixture
def webhook_hub(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningHub]:
    (mappings_dir / "sources.yaml").write_text(SOURCES)
    monkeypatch.setenv("HUB_SRC_SEGMENT_HOOK_SECRET", SECRET)
    monkeypatch.setenv("HUB_SRC_CRM_SECRET", SECRET)
    monkeypatch.setenv("HUB_SRC_APP_SDK_WRITE_KEY", "app-sdk-key")
    monkeypatch.setenv("HUB_SRC_JOURNEYS_SECRET", SECRET)
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides()), sandbox) as hub:
        yield hub


def test_signed_webhook_is_committed_and_normalized(webhook_hub: RunningHub) -> None:
    body = json.dumps(message(userId="u-7", event="Product Viewed", properties={"sku": "A1"})).encode()
    answer = webhook_hub.client.post("/v1/webhooks/segment-hook", content=body, headers=signed(body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True, "accepted": 1, "duplicates": 0, "rejected": []}
    other_connection = Store(webhook_hub.hub.settings.database_url)  # committed before the 200, visible to anyone
    with other_connection.read() as connection:
        assert sum(inbox.count_by_status(connection).values()) == 1
    other_connection.dispose()
    webhook_hub.settle()
    [touchpoint] = webhook_hub.admin("/api/touchpoints", source="segment-hook")["touchpoints"]
    assert (touchpoint["event"], touchpoint["moment"], touchpoint["properties"]) == ("Product Viewed", "product_view", {"sku": "A1"})


def test_unknown_source_is_404(webhook_hub: RunningHub) -> None:
    answer = webhook_hub.client.post("/v1/webhooks/nobody", content=b"{}")
    assert answer.status_code == 404
    assert answer.json()["error"] == "source: no source 'nobody' is configured; see mappings/sources.yaml"


def test_bad_signature_is_401_with_the_reason_and_stores_nothing(webhook_hub: RunningHub) -> None:
    body = json.dumps(message(userId="u-7", event="Product Viewed")).encode()
    answer = webhook_hub.client.post("/v1/webhooks/segment-hook", content=body, headers=signed(body, "wrong"))
    assert answer.status_code == 401
    assert answer.json()["error"] == "X-Signature: signature does not match; check the signing secret"
    assert webhook_hub.admin("/api/stats")["inbox"] == {}


def test_write_key_of_the_default_source_does_not_open_a_webhook_source(webhook_hub: RunningHub) -> None:
    answer = webhook_hub.client.post("/v1/webhooks/segment-hook", json=message(userId="u", event="x"), auth=("test-write-key", ""))
    assert answer.status_code == 401 and answer.json()["error"].startswith("missing X-Signature header")


def test_replayed_webhook_is_acknowledged_but_not_stored_twice(webhook_hub: RunningHub) -> None:
    body = json.dumps(message(userId="u-7", event="Product Viewed")).encode()
    first = webhook_hub.client.post("/v1/webhooks/segment-hook", content=body, headers=signed(body))
    again = webhook_hub.client.post("/v1/webhooks/segment-hook", content=body, headers=signed(body))
    assert (first.json()["accepted"], again.json()["accepted"], again.json()["duplicates"]) == (1, 0, 1)


def test_signed_body_that_is_not_json_is_400_and_quarantined(webhook_hub: RunningHub) -> None:
    body = b"{oops"
    answer = webhook_hub.client.post("/v1/webhooks/segment-hook", content=body, headers=signed(body))
    assert answer.status_code == 400 and answer.json()["error"].startswith("body: not valid JSON")
    [kept] = webhook_hub.admin("/api/quarantine")["quarantine"]
    assert (kept["source_id"], kept["stage"], kept["raw_body"]) == ("segment-hook", "ingest", "{oops")


def test_sdk_ingest_picks_the_segment_source_by_write_key(webhook_hub: RunningHub) -> None:
    assert webhook_hub.send(message(userId="u-1", event="Signed Up")).json()["accepted"] == 1
    assert webhook_hub.send(message(userId="u-2", event="Signed Up"), write_key="app-sdk-key").json()["accepted"] == 1
    webhook_hub.settle()
    touchpoints = webhook_hub.admin("/api/touchpoints")["touchpoints"]
    assert sorted((t["source_id"], t["identifiers"][0][1]) for t in touchpoints) == [("app-sdk", "u-2"), ("default", "u-1")]


@pytest.mark.parametrize(
    ("sources", "problem"),
    [
        ("sources:\n  - {id: a, connector: nope}", "sources.0.connector: no source connector 'nope' is installed"),
        ("sources:\n  - {id: a, connector: segment, secrets: {shared_secret: HUB_UNSET_SECRET}}",
         "sources.0.secrets.shared_secret: environment variable HUB_UNSET_SECRET is not set"),
        ("sources:\n  - {id: a, connector: segment, config: {shared_secret: s3cret}}",
         "sources.0.config.shared_secret: is a secret; name an environment variable under `secrets:` instead"),
        ("sources:\n  - {id: a, connector: segment, config: {}}", "sources.0: (config): Value error, set write_key"),
        ("sources:\n  - {id: Bad Id, connector: segment}", "sources.0.id: Value error, 'Bad Id' must be lower-case"),
        ("sources:\n  - {id: default, connector: segment}", "sources.0.id: 'default' is the built-in source"),
    ],
)
def test_bad_source_config_refuses_to_start_naming_file_key_and_reason(
    tmp_path: Path, mappings_dir: Path, sources: str, problem: str
) -> None:
    (mappings_dir / "sources.yaml").write_text(sources)
    with pytest.raises(ConfigError) as raised:
        Hub(make_settings(tmp_path, mappings_dir=mappings_dir))
    [reported] = raised.value.problems
    assert reported.startswith(str(mappings_dir / "sources.yaml")) and problem in reported, reported


def test_hubspot_signature_over_the_url_the_hub_was_called_at(webhook_hub: RunningHub) -> None:
    body = fixture_body("hubspot_contact_events.json")
    url = f"{webhook_hub.url}/v1/webhooks/crm"
    timestamp = str(int(time.time() * 1000))
    digest = hmac.new(SECRET.encode(), b"POST" + url.encode() + body + timestamp.encode(), hashlib.sha256).digest()
    headers = {"X-HubSpot-Signature-v3": base64.b64encode(digest).decode(), "X-HubSpot-Request-Timestamp": timestamp}
    answer = webhook_hub.client.post(url, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2
    webhook_hub.settle()
    [touchpoint] = webhook_hub.admin("/api/touchpoints", source="crm")["touchpoints"]  # the IMPORT event was dropped
    assert (touchpoint["event"], touchpoint["mapping_version"].split("@")[0]) == ("Contact Updated", "hubspot")
    assert webhook_hub.admin("/api/quarantine")["quarantine"] == []


def test_stale_hubspot_request_is_401_with_the_reason(webhook_hub: RunningHub) -> None:
    stale = str(int((time.time() - 600) * 1000))
    headers = {"X-HubSpot-Signature-v3": "c2lnbmF0dXJl", "X-HubSpot-Request-Timestamp": stale}
    answer = webhook_hub.client.post("/v1/webhooks/crm", content=b"[]", headers=headers)
    assert answer.status_code == 401
    assert re.fullmatch(r"X-HubSpot-Request-Timestamp: timestamp is 60\d s old, outside the 300 s replay window", answer.json()["error"])


def test_journey_map_events_through_the_hub_and_unknown_touchpoints_quarantined(webhook_hub: RunningHub) -> None:
    body = fixture_body("journey_map_events.json")
    headers = {"X-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    answer = webhook_hub.client.post("/v1/webhooks/journeys", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["rejected"] == [
        {"index": 1, "field": "touchpoint_id", "reason": "'TP-NOWHERE' is not a touchpoint of journey map journeys/web_shop.csv"}
    ]
    webhook_hub.settle()
    [touchpoint] = webhook_hub.admin("/api/touchpoints", source="journeys")["touchpoints"]
    assert (touchpoint["stage"], touchpoint["moment"]) == ("consideration", "product_comparison")
    assert touchpoint["properties"]["map_touchpoint_id"] == "TP-COMPARE"
    [kept] = webhook_hub.admin("/api/quarantine")["quarantine"]
    assert (kept["stage"], json.loads(kept["raw_body"])["touchpoint_id"]) == ("item", "TP-NOWHERE")


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "track", "userId": "u-1", "event": "X", "properties": {"amount": ' + b"9" * 5000 + b"}}",
        b'{"type": "track", "userId": "u-1", "event": "X", "properties": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b'{"type": "track", "userId": "u-1", "event": "X", "properties": {"price": NaN}}',
    ],
    ids=["5000-digit-integer", "deep-nesting", "nan"],
)
def test_signed_body_json_cannot_hold_is_400_and_quarantined(webhook_hub: RunningHub, body: bytes) -> None:
    """The webhook sources share json_document: a ValueError or RecursionError from json.loads was a bare 500
    with nothing kept, and NaN was stored."""
    answer = webhook_hub.client.post("/v1/webhooks/segment-hook", content=body, headers=signed(body))
    assert answer.status_code == 400 and answer.json()["error"].startswith("body: not valid JSON ("), answer.text
    [listed] = webhook_hub.admin("/api/quarantine")["quarantine"]
    kept = webhook_hub.admin(f"/api/quarantine/{listed['id']}")  # whole: the list cuts bodies short
    assert (kept["source_id"], kept["stage"], kept["raw_body"]) == ("segment-hook", "ingest", body.decode())
