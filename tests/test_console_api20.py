"""The admin API as the console calls it: the mapping preview, answers holding personal data, the identity graph."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors.sandbox.providers import SandboxProviders
from hub.cli import app
from tests.conftest import ADMIN_TOKEN, RunningHub, hub_with_source, message

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STANDARD_WEBHOOKS_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def touchhub(*args: str, **env: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **env})


def rejected_total(running_hub: RunningHub) -> float:
    """hub_events_rejected_total summed over every label set, from /metrics."""
    lines = running_hub.client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("hub_events_rejected_total{"))


# --- the mapping preview -----------------------------------------------------------------------------------------


def test_console_mapping_preview_of_an_incomplete_sample_is_not_counted_as_a_rejected_event(running_hub: RunningHub) -> None:
    """A sample the source refused whole went through the ingest IngestError handler, which counted it in
    hub_events_rejected_total{source="unknown",reason="bad_payload"}: the console previews on every pause in
    typing, so the metric ops alert on climbed with each keystroke while nobody sent the hub anything."""
    before = rejected_total(running_hub)
    for sample in ({}, {"type": "track"}, {"type": "track", "event": "Product Viewed"}):
        answer = running_hub.client.post("/api/mappings/default/preview", headers=AUTH, json={"sample": sample})
        assert answer.status_code == 400, answer.text
        refusal = answer.json()
        assert refusal["success"] is False and refusal["error"] and isinstance(refusal["rejected"], list), refusal
    assert rejected_total(running_hub) == before, "a preview in the console counted as events refused at ingest"


def signed_standard_webhook(payload: dict[str, Any], webhook_id: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers a Standard Webhooks sender posts, signed with STANDARD_WEBHOOKS_SECRET."""
    body = json.dumps(payload).encode()
    timestamp = str(int(time.time()))
    key = base64.b64decode(STANDARD_WEBHOOKS_SECRET.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    return body, {"content-type": "application/json", "webhook-id": webhook_id, "webhook-timestamp": timestamp,
                  "webhook-signature": f"v1,{signature.decode()}"}


@pytest.fixture
def billing_hub(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningHub]:
    """A hub with one Standard Webhooks source, `billing`, in its own mappings folder."""
    with hub_with_source(
        tmp_path, mappings_dir, sandbox, monkeypatch, "{id: billing, connector: standard_webhooks, secrets: "
        "{secret: HUB_SRC_BILLING_SECRET}}", {"HUB_SRC_BILLING_SECRET": STANDARD_WEBHOOKS_SECRET},
    ) as hub:
        yield hub


def test_mapping_preview_shows_the_touchpoint_id_the_event_will_get(billing_hub: RunningHub, tmp_path: Path) -> None:
    """The preview parsed the sample with no request headers, and a Standard Webhooks sender's message id is
    its `webhook-id` header: the preview fell back to a hash of the payload and showed a touchpoint_id the
    stored event never got. The API ignored a `headers` object beside the sample, and the CLI took none."""
    payload = {"type": "invoice.paid", "timestamp": "2026-11-20T10:00:00Z", "data": {"user_id": "u-bill", "amount": 42}}
    webhook_id = f"msg_{uuid.uuid4().hex}"
    body, headers = signed_standard_webhook(payload, webhook_id)
    sent = billing_hub.client.post("/v1/webhooks/billing", content=body, headers=headers)
    assert sent.status_code < 300, sent.text
    billing_hub.settle()
    [stored] = billing_hub.admin("/api/touchpoints", source="billing")["touchpoints"]

    answer = billing_hub.client.post("/api/mappings/billing/preview", headers=AUTH,
                                     json={"sample": payload, "headers": {"Webhook-Id": webhook_id}})
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["outcomes"]
    assert outcome["touchpoint"]["touchpoint_id"] == stored["touchpoint_id"], outcome

    sample = tmp_path / "invoice.json"
    sample.write_bytes(body)
    mappings = str(billing_hub.hub.settings.mappings_dir)
    result = touchhub("mappings", "preview", "--json", "billing", str(sample), "--header", f"webhook-id: {webhook_id}",
                      HUB_MAPPINGS_DIR=mappings)
    assert result.exit_code == 0, result.output
    [printed] = json.loads(result.output)
    assert printed["touchpoint"]["touchpoint_id"] == stored["touchpoint_id"], printed

    malformed = touchhub("mappings", "preview", "billing", str(sample), "--header", webhook_id, HUB_MAPPINGS_DIR=mappings)
    assert malformed.exit_code == 2 and "--header" in malformed.output and "Name: value" in malformed.output


# --- answers holding personal data -------------------------------------------------------------------------------


def test_admin_api_answers_holding_personal_data_are_not_cacheable(running_hub: RunningHub) -> None:
    """Profiles, touchpoints, the delivery log and quarantined bodies hold emails and phones, yet the admin API
    answered them with no Cache-Control (only the console's own files had headers), so a browser or an HTTP
    cache could keep them on disk; nor X-Content-Type-Options: nosniff."""
    running_hub.send(message("identify", userId="u-cache", traits={"email": "ana@example.com", "phone": "+14155550100"}))
    running_hub.settle()
    profile_id = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-cache")["profile_id"]
    for path in (f"/api/profiles/{profile_id}", "/api/touchpoints", "/api/quarantine", "/api/deliveries",
                 f"/api/profiles/{profile_id}/explain", "/api/profiles/01NOSUCHPROFILE0000000000"):
        answer = running_hub.client.get(path, headers=AUTH)
        assert answer.headers.get("cache-control") == "no-store", f"{path}: Cache-Control is {answer.headers.get('cache-control')!r}"
        assert answer.headers.get("x-content-type-options") == "nosniff", path


# --- the identity graph, seen from either side -------------------------------------------------------------------


def explained(running_hub: RunningHub, profile_id: str) -> tuple[dict[str, Any], str]:
    """The profile's graph from GET /api/profiles/{id}/explain, and `touchhub profiles explain` of it."""
    printed = touchhub("profiles", "explain", profile_id, HUB_DATABASE_URL=running_hub.hub.settings.database_url)
    assert printed.exit_code == 0, printed.output
    return running_hub.admin(f"/api/profiles/{profile_id}/explain"), printed.output


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_identity_graph_names_the_other_profile_of_a_refused_link_seen_from_either_side(running_hub: RunningHub) -> None:
    """A refused link is recorded once, from the profile the touchpoint went to. Explained from the profile it
    was kept from, `other_profile_id` was that profile itself: the console's "Links refused" linked the profile
    to itself, the CLI printed its own id, and the person it was kept apart from was named nowhere."""
    running_hub.send(message("identify", userId="u-first", traits={"email": "shared@example.com"}))
    running_hub.settle()
    running_hub.send(message("identify", userId="u-second", traits={"email": "shared@example.com"}))
    running_hub.settle()
    first = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-first")["profile_id"]
    second = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-second")["profile_id"]
    assert first != second, "precondition: one user_id per profile keeps them apart"
    for viewed, other in ((first, second), (second, first)):
        graph, printed = explained(running_hub, viewed)
        assert [(entry["profile_id"], entry["other_profile_id"]) for entry in graph["refused"]] == [(viewed, other)], graph["refused"]
        assert f"(profile {other})" in printed and f"(profile {viewed})" not in printed, printed


def test_identity_graph_names_the_other_profile_of_an_undone_merge_seen_from_either_side(running_hub: RunningHub) -> None:
    """An unmerge is recorded once, from the survivor: the profile it restored showed itself under "Merges
    undone" as the profile it had been split from, in the console and in `touchhub profiles explain`."""
    running_hub.send(
        message("identify", userId="u-ana", traits={"email": "ana@example.com"}),
        message("identify", anonymousId="kiosk", traits={"email": "bo@example.com"}),
    )
    running_hub.settle()
    running_hub.send(message("track", event="Product Viewed", userId="u-ana", anonymousId="kiosk"))
    running_hub.settle()
    profile = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-ana")
    survivor, [restored] = profile["profile_id"], profile["merged_profile_ids"]
    undone = running_hub.client.post(f"/api/profiles/{survivor}/unmerge", json={"merged_profile_id": restored}, headers=AUTH)
    assert undone.status_code == 200, undone.text
    for viewed, other in ((survivor, restored), (restored, survivor)):
        graph, printed = explained(running_hub, viewed)
        assert [(entry["profile_id"], entry["other_profile_id"]) for entry in graph["unmerges"]] == [(viewed, other)], graph["unmerges"]
        assert f"(profile {other})" in printed and f"(profile {viewed})" not in printed, printed
