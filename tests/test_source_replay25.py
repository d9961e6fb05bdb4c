"""A source replay (`touchhub replay`, `POST /api/sources/{id}/replay`, the console's "Re-process") after a mapping
fix: it maps with the file as just saved, it counts an inbox row the pipeline set aside as unreadable instead of
failing on it, and the console's quarantine list shows what it replayed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.replay import UNREADABLE_PAYLOAD, UNREADABLE_RECEIVED_AT, replay_source
from hub.runtime import Hub
from tests.conftest import ADMIN_TOKEN, RunningHub, make_settings, message, serve_hub
from tests.test_absence_timers import hub_on
from tests.test_console20 import render
from tests.test_mapping_edges import touch_later
from tests.test_mapping_reload22 import UNDECLARED, add_typo
from tests.test_poison25 import drive
from tests.test_poison_pipeline25 import INBOX_POISONS, identifies, inbox_fates, opened, spoil_inbox_row, take_in
from tests.test_replay import edit

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CRM_ID_LINE = "  device_id: context.device.id"  # the line of segment.yaml the fix adds `crm_id` after
FIXED = f"{CRM_ID_LINE}\n  crm_id: properties.customer_id"
REPLAYED_COLUMN = 5  # the quarantine list's Received, Source, Stage, Reason, Problems, Replayed, Body


def quarantine_an_order(hub: RunningHub) -> None:
    """An order whose only identifier the shipped mapping does not read (`properties.customer_id`): quarantined at
    stage mapping, until the fix (`FIXED`) maps it."""
    hub.send(message(userId="null", event="Order Completed", properties={"customer_id": "C-77"}))
    hub.settle()
    assert hub.admin("/api/quarantine")["quarantine"][0]["stage"] == "mapping"


def replay_by_api(hub: RunningHub) -> tuple[int, dict]:
    answer = hub.client.post("/api/sources/default/replay", params={"since": "1h"}, headers=AUTH)
    return answer.status_code, answer.json()


@pytest.fixture
def slow_reload_hub(
    tmp_path: Path, database_url: str, mappings_dir: Path, sandbox: SandboxProviders
) -> Iterator[RunningHub]:
    """A hub that looks for changed mapping files every 30 s (HUB_MAPPINGS_RELOAD_SECONDS may be set so)."""
    settings = make_settings(tmp_path, database_url=database_url, mappings_dir=mappings_dir,
                             mappings_reload_seconds=30, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        yield running


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_api_source_replay_maps_with_the_mapping_file_just_saved(slow_reload_hub: RunningHub, mappings_dir: Path) -> None:
    """The API replayed with the mapping the hub had last loaded, looked at only every HUB_MAPPINGS_RELOAD_SECONDS,
    while `touchhub replay` reads the file: ops who saved the fix and pressed Re-process got the old mapping, the
    quarantined order still unmappable, and nothing re-processed."""
    quarantine_an_order(slow_reload_hub)
    edit(mappings_dir / "segment.yaml", CRM_ID_LINE, FIXED)

    status, report = replay_by_api(slow_reload_hub)
    assert status == 200, report
    assert (report["requeued"], report["unmappable"]) == (1, 0), report


def test_a_source_replay_after_a_refused_save_is_refused_naming_why(slow_reload_hub: RunningHub, mappings_dir: Path) -> None:
    """A save the hub refuses leaves the last good mapping in force; a replay then answered 200 with that mapping,
    as if the save had taken: the order still unmappable, and no word of the refusal (already met by the hub's own
    look at the files, which names it once)."""
    quarantine_an_order(slow_reload_hub)
    path = mappings_dir / "segment.yaml"
    line = add_typo(path)
    touch_later(path)
    assert slow_reload_hub.hub.mappings.refresh() == ["segment.yaml"]  # a worker's look met the save first

    status, answer = replay_by_api(slow_reload_hub)
    assert status == 409, answer
    heading, problem = answer["detail"]
    assert "'default' as saved was refused" in heading and "replay again" in heading
    assert problem == f"{path}:{line}: {UNDECLARED}"
    assert slow_reload_hub.admin("/api/quarantine")["quarantine"][0]["replayed_at"] is None


def nothing_pending(hub: Hub) -> bool:
    return "pending" not in {status for status, _ in inbox_fates(hub).values()}


def test_a_source_replay_counts_an_inbox_row_the_pipeline_set_aside_as_unreadable_and_replays_it_once_mended(
    tmp_path: Path,
) -> None:
    """An inbox row whose payload is not JSON text (written by hand or by an older version; SQLite keeps it) is set
    aside by the pipeline with "mend the row, then replay its source"; until mended, every replay of its source
    raised JSONDecodeError out of the store's read (the API answered 500, the CLI died), and no other event of the
    source could be re-normalized. SQLite only: PostgreSQL's json column refuses such a payload."""
    spoilt, _ = INBOX_POISONS["payload"]
    with opened(hub_on(tmp_path, mappings_reload_seconds=0.05)) as hub:
        poison, *good = identifies("zed", "ann", "bo")
        take_in(hub, [poison, *good])
        spoil_inbox_row(hub, poison["messageId"], "payload", spoilt)
        drive(hub.pipeline.run_once, until=lambda: nothing_pending(hub), seconds=5)
        assert inbox_fates(hub)[poison["messageId"]][0] == "failed"

        report = replay_source(hub, "default", utcnow() - timedelta(hours=1))
        assert (report.unchanged, report.unmappable, report.errors) == (2, 1, {UNREADABLE_PAYLOAD: 1})

        mended = json.dumps(poison).replace("'", "''")
        spoil_inbox_row(hub, poison["messageId"], "payload", f"'{mended}'")
        report = replay_source(hub, "default", utcnow() - timedelta(hours=1))
        assert (report.unchanged, report.requeued, report.unmappable) == (2, 1, 0)
        drive(hub.pipeline.run_once, until=lambda: nothing_pending(hub), seconds=5)
        assert inbox_fates(hub)[poison["messageId"]] == ("done", None)


def test_a_source_replay_counts_a_row_whose_received_time_cannot_be_read_as_unmappable(tmp_path: Path) -> None:
    """The pipeline's other unreadable row, a received time no calendar has (here one sorting inside the replay's
    window), raised ValueError out of the replay's read: the whole replay of the source failed (a 500, a
    traceback). SQLite only, as above."""
    with opened(hub_on(tmp_path)) as hub:
        poison, *good = identifies("zed", "ann")
        take_in(hub, [poison, *good])
        spoil_inbox_row(hub, poison["messageId"], "received_at", "'2026-12-99 00:00:00.000000'")
        drive(hub.pipeline.run_once, until=lambda: nothing_pending(hub), seconds=5)
        report = replay_source(hub, "default", utcnow() - timedelta(hours=1))
        assert (report.unchanged, report.unmappable, report.errors) == (1, 1, {UNREADABLE_RECEIVED_AT: 1})


@pytest.fixture
def quick_reload_hub(tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders) -> Iterator[RunningHub]:
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, mappings_reload_seconds=0.05, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        yield running


def test_the_quarantine_view_shows_when_a_re_process_replayed_its_entries(
    quick_reload_hub: RunningHub, mappings_dir: Path, tmp_path: Path
) -> None:
    """After the view's "Re-process after a mapping fix" the report showed, but the quarantine list below stayed as
    loaded: its entry still read "Replayed —", though the replay had marked it (the API answered the time)."""
    quarantine_an_order(quick_reload_hub)
    edit(mappings_dir / "segment.yaml", CRM_ID_LINE, FIXED)

    view = render(quick_reload_hub, tmp_path, "#quarantine", {"submit": "Re-process"})
    assert "Re-processing (were quarantined or dropped): 1" in view["text"], view["text"]
    [entry] = [row for row in view["rows"] if "mapping" in row and "default" in row]
    assert entry[REPLAYED_COLUMN] != "—", entry
