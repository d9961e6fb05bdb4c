"""POST /v1/webhooks/{source_id} and mappings/sources.yaml: sources configured by ops, secrets from env."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.errors import ConfigError
from hub.runtime import Hub
from tests.conftest import RunningHub, make_settings, message, serve_hub

SECRET = "segment-shared-secret"
SOURCES = """
sources:
  - id: segment-hook
    connector: segment
    secrets: {shared_secret: HUB_SRC_SEGMENT_HOOK_SECRET}
"""


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Signature": hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(), "Content-Type": "application/json"}


@pytest.fixture
def webhook_hub(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningHub]:
    (mappings_dir / "sources.yaml").write_text(SOURCES)
    monkeypatch.setenv("HUB_SRC_SEGMENT_HOOK_SECRET", SECRET)
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides()), sandbox) as hub:
        yield hub


def test_signed_webhook_is_committed_and_normalized(webhook_hub: RunningHub) -> None:
    body = json.dumps(message(userId="u-7", event="Product Viewed", properties={"sku": "A1"})).encode()
    answer = webhook_hub.client.post("/v1/webhooks/segment-hook", content=body, headers=signed(body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True, "accepted": 1, "duplicates": 0, "rejected": []}
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
    assert answer.status_code == 401 and answer.json()["error"].startswith("unknown write key")


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


def test_sdk_ingest_still_uses_the_default_source(webhook_hub: RunningHub) -> None:
    assert webhook_hub.send(message(userId="u-1", event="Signed Up")).json()["accepted"] == 1
    webhook_hub.settle()
    [touchpoint] = webhook_hub.admin("/api/touchpoints")["touchpoints"]
    assert touchpoint["source_id"] == "default"


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
