"""Replay: stored raw events re-normalized with the current mapping; quarantined ones replayable after a fix."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors.sandbox.providers import SandboxProviders
from hub.cli import app
from hub.clock import utcnow
from hub.identity_config import DEFAULT_IDENTITY
from hub.mapping_catalog import MappingCatalog
from hub.replay import replay
from tests.conftest import ADMIN_TOKEN, WRITE_KEY, RunningHub, make_settings, message, serve_hub


@pytest.fixture
def hub(tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders) -> Iterator[RunningHub]:
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, mappings_reload_seconds=0.05, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        yield running


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    later = time.time() + 2  # visible to mtime checks on coarse file systems
    os.utime(path, (later, later))
    time.sleep(0.1)  # the running hub reloads every 0.05 s


def run_replay(hub: RunningHub, mappings_dir: Path) -> Any:
    catalog = MappingCatalog(mappings_dir, {"default": "segment.yaml"}, check_seconds=60)
    return replay(hub.hub.store, catalog, "default", utcnow() - timedelta(hours=1), utcnow(), "US", DEFAULT_IDENTITY)  # available at once


def test_unmappable_event_is_quarantined_then_replayed_after_the_mapping_is_fixed(hub: RunningHub, mappings_dir: Path) -> None:
    hub.send(message(userId="null", event="Order Completed", properties={"customer_id": "C-77"}))
    hub.settle()
    [kept] = hub.admin("/api/quarantine")["quarantine"]
    assert (kept["stage"], kept["reason"]) == ("mapping", "identifiers: no usable identifier (all missing or junk values such as 'null')")
    assert kept["inbox_id"] is not None and kept["replayed_at"] is None

    edit(mappings_dir / "segment.yaml", "  device_id: context.device.id", "  device_id: context.device.id\n  crm_id: properties.customer_id")
    report = run_replay(hub, mappings_dir)
    assert (report.requeued, report.rewritten, report.unmappable) == (1, 0, 0)
    hub.settle()
    [touchpoint] = hub.admin("/api/touchpoints")["touchpoints"]
    assert touchpoint["identifiers"] == [["crm_id", "C-77"]] and touchpoint["moment"] == "purchase"
    assert hub.admin("/api/quarantine")["quarantine"][0]["replayed_at"] is not None

    again = run_replay(hub, mappings_dir)
    assert (again.requeued, again.rewritten, again.unchanged) == (0, 0, 1)


def test_the_api_replays_what_a_fixed_mapping_can_now_map(hub: RunningHub, mappings_dir: Path) -> None:
    """Re-processing quarantined events took shell access (`touchhub replay`); the console and scripts, with a
    `replay` key, could only replay deliveries. Bad parameters are refused naming them."""
    hub.send(message(userId="null", event="Order Completed", properties={"customer_id": "C-77"}))
    hub.settle()
    edit(mappings_dir / "segment.yaml", "  device_id: context.device.id", "  device_id: context.device.id\n  crm_id: properties.customer_id")

    answer = admin_post(hub, "/api/sources/default/replay", since="1h")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["requeued"], report["rewritten"], report["unmappable"]) == (1, 0, 0) and report["available_at"]
    deadline = time.monotonic() + 20
    while not hub.admin("/api/touchpoints")["touchpoints"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the running pipeline takes it at available_at
    [touchpoint] = hub.admin("/api/touchpoints")["touchpoints"]
    assert touchpoint["identifiers"] == [["crm_id", "C-77"]]
    assert admin_post(hub, "/api/sources/default/replay", since="1h").json()["requeued"] == 0

    unknown = admin_post(hub, "/api/sources/nope/replay", since="1h")
    assert unknown.status_code == 404 and "configured: default" in unknown.json()["detail"]
    bad = admin_post(hub, "/api/sources/default/replay", since="yesterday")
    assert bad.status_code == 422 and bad.json()["detail"].startswith("since: 'yesterday' is neither")
    edge = admin_post(hub, "/api/sources/default/replay", since="0001-01-01T00:00:00+14:00")  # was a 500 (OverflowError)
    assert edge.status_code == 422 and "outside the calendar" in edge.json()["detail"]


def admin_post(hub: RunningHub, path: str, **params: str) -> Any:
    return hub.client.post(path, params=params, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def test_replay_rewrites_touchpoints_in_place_with_the_new_mapping_version(hub: RunningHub, mappings_dir: Path) -> None:
    hub.send(message(userId="u-1", event="Product Viewed"), message(userId="u-1", event="Product Added"))
    hub.settle()
    before = {t["event"]: t for t in hub.admin("/api/touchpoints")["touchpoints"]}
    edit(mappings_dir / "segment.yaml", "moment: product_view}", "moment: browsing_products}")

    report = run_replay(hub, mappings_dir)
    assert (report.rewritten, report.unchanged, report.requeued) == (2, 0, 0)  # the version changed for both
    after = {t["event"]: t for t in hub.admin("/api/touchpoints")["touchpoints"]}
    assert after["Product Viewed"]["moment"] == "browsing_products"
    assert after["Product Viewed"]["touchpoint_id"] == before["Product Viewed"]["touchpoint_id"]
    assert after["Product Viewed"]["profile_id"] == before["Product Viewed"]["profile_id"]
    assert after["Product Viewed"]["mapping_version"] != before["Product Viewed"]["mapping_version"]
    assert run_replay(hub, mappings_dir).unchanged == 2


def test_replay_command_reports_what_it_did(hub: RunningHub, mappings_dir: Path, tmp_path: Path) -> None:
    hub.send(message(userId="null", event="Signed Up"))
    hub.settle()
    env = {"HUB_DATABASE_URL": f"sqlite:///{tmp_path}/hub.db", "HUB_MAPPINGS_DIR": str(mappings_dir),
           "HUB_DEFAULT_WRITE_KEY": WRITE_KEY, "COLUMNS": "120"}
    result = CliRunner().invoke(app, ["replay", "--source", "default", "--since", "1h"], env=env)
    assert result.exit_code == 0, result.output
    lines = {" ".join(line.replace("│", " ").split()) for line in result.output.splitlines()}
    assert "still unmappable 1" in lines
    assert "1 x identifiers: no usable identifier (all missing or junk values such as 'null')" in lines
    bad = CliRunner().invoke(app, ["replay", "--source", "default", "--since", "last tuesday"], env=env)
    assert bad.exit_code == 2 and "neither an ISO-8601 time nor a duration" in bad.output
