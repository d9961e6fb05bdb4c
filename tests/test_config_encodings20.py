"""Ops-edited files read as their authors mean them: times of day as text, Windows exports refused or read.

Mappings and rules go through `hub.config_files.ConfigLoader`; journey maps
through `connectors.sources.journey_map.load_journey_map`. The journey-map
cases run a hub over HTTP, as a marketer re-exporting the map meets it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from connectors.base import InboundRequest
from connectors.sandbox.providers import SandboxProviders
from connectors.sources import journey_map as journey_map_module
from connectors.sources.journey_map import JourneyMapSource, load_journey_map
from hub.errors import ConfigError
from hub.mapping import load_mapping
from hub.model import RawEvent
from hub.normalize import normalize
from hub.rules import load_rules
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.triggers import evaluate
from tests.conftest import RunningHub, logs_of, make_settings, serve_hub
from tests.test_triggers import RecordedHistory, tp

MAPPING = "event: event\noccurred_at: ts\nidentifiers: {user_id: uid}\ndefault: {stage: awareness, moment: other}\n"
SHIPPED_MAP = PROJECT_MAPPINGS / "journeys" / "web_shop.csv"
SECRET = "journey-secret"
SOURCES = """
sources:
  - id: journeys
    connector: journey_map
    secrets: {secret: HUB_SRC_JOURNEYS_SECRET}
    config: {map_file: journeys/web_shop.csv, events: events, message_id: id}
"""
UTF8_BOM = b"\xef\xbb\xbf"


# --- YAML 1.1 base-60 numbers ---------------------------------------------------------------------------------------


def test_an_unquoted_time_of_day_in_a_mapping_is_kept_as_text_not_read_as_a_number(tmp_path: Path) -> None:
    """PyYAML read `10:30` as the base-60 integer 630 and `1:30.5` as 90.5: a mapping constant stamped that number on
    every touchpoint, while docs/connectors.md says an unquoted date or time is read as ISO text."""
    path = tmp_path / "shop.yaml"
    path.write_text(MAPPING + "constants:\n  properties.campaign_start: 2026-11-01\n  properties.store_opens: 10:30\n"
                    "  properties.last_call: 21:00:00\n  properties.lap: 1:30.5\n  properties.count: 1_000\n")
    touchpoint = normalize(RawEvent("shop", "m-1", {"event": "Visit", "uid": "u-1"}), load_mapping(path),
                           datetime.now(timezone.utc), "US")
    assert touchpoint.properties == {"campaign_start": "2026-11-01", "store_opens": "10:30", "last_call": "21:00:00",
                                     "lap": "1:30.5", "count": 1000}  # a plain number stays a number


def test_a_trigger_comparing_with_an_unquoted_time_of_day_holds_for_that_time(tmp_path: Path) -> None:
    """`value: 21:00` in triggers.yaml was the number 1260, so `properties.slot eq 21:00` never held."""
    path = tmp_path / "triggers.yaml"
    path.write_text("rules:\n  - id: late_slot\n    when: {event: Slot Booked, where: [{field: properties.slot, value: 21:00}]}\n"
                    "    respond: [{channel: sms, template: t.j2}]\n")
    [decision] = evaluate(tp("Slot Booked", slot="21:00"), "p", load_rules(path), RecordedHistory())
    assert decision.rule_id == "late_slot"


def test_a_rule_count_written_as_a_time_is_refused_by_the_loader_as_by_the_schema_editors_lint_with(tmp_path: Path) -> None:
    """Editors lint with YAML 1.2, where `at_least: 1:30` is text the schema refuses; the hub read 90 and took it."""
    schema = json.loads((PROJECT_MAPPINGS / "schema" / "triggers.schema.json").read_text())
    as_the_editor_reads_it = {"rules": [{"id": "r", "when": {"count": {"event": "E", "within": "5m", "at_least": "1:30"}},
                                         "respond": [{"channel": "sms", "template": "t.j2"}]}]}
    assert not Draft202012Validator(schema).is_valid(as_the_editor_reads_it)
    path = tmp_path / "triggers.yaml"
    path.write_text("rules:\n  - id: r\n    when: {count: {event: E, within: 5m, at_least: 1:30}}\n"
                    "    respond: [{channel: sms, template: t.j2}]\n")
    with pytest.raises(ConfigError) as refused:
        load_rules(path)
    assert refused.value.problems == [f"{path}: rules.0.when.count.at_least: Value error, write a whole number such as 2, "
                                      "not '1:30'"]


def test_a_mapping_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Held before (PyYAML skips a leading mark); kept as the YAML side of the journey maps' byte-order-mark case."""
    path = tmp_path / "shop.yaml"
    path.write_bytes(UTF8_BOM + MAPPING.encode())
    assert load_mapping(path).name == "shop"


# --- journey map exports from spreadsheets --------------------------------------------------------------------------


@pytest.fixture
def journey_hub(tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningHub]:
    (mappings_dir / "sources.yaml").write_text(SOURCES)
    monkeypatch.setenv("HUB_SRC_JOURNEYS_SECRET", SECRET)
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides()), sandbox) as hub:
        yield hub


def post_event(hub: RunningHub, message_id: str) -> str:
    """The `map_touchpoint` label the hub stored for an event at TP-COMPARE (the map's name for it)."""
    body = json.dumps({"events": [{"id": message_id, "touchpoint_id": "TP-COMPARE", "email": "ana@example.com"}]}).encode()
    answer = hub.client.post("/v1/webhooks/journeys", content=body,
                             headers={"X-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()})
    assert answer.status_code == 200, answer.text
    hub.settle()
    stored = hub.admin("/api/touchpoints", source="journeys")["touchpoints"]
    return next(t["properties"]["map_touchpoint"] for t in stored if t["message_id"] == message_id)


def re_export(path: Path, content: bytes) -> None:
    """Save `content`, its mtime moved on: some file systems keep whole seconds, and the reload compares stamps."""
    path.write_bytes(content)
    later = time.time() + 2
    os.utime(path, (later, later))


def test_a_journey_map_re_exported_in_windows_1252_keeps_the_last_good_map_instead_of_failing_the_request(
    journey_hub: RunningHub, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Excel's "CSV (Comma delimited)" on Windows is Windows-1252: the UnicodeDecodeError escaped the reload, so the
    request that found the edit was a 500, later ones kept the old map, and nothing logged that the edit was refused."""
    map_file = mappings_dir / "journeys" / "web_shop.csv"
    assert post_event(journey_hub, "e-1") == "Comparison table"
    french = SHIPPED_MAP.read_text(encoding="utf-8").replace("Comparison table", "Tableau comparatif du café")

    re_export(map_file, french.encode("cp1252"))
    with logs_of(monkeypatch, journey_map_module) as logs:
        assert post_event(journey_hub, "e-2") == "Comparison table"  # the last good map, as documented
    [refused] = [entry for entry in logs if entry["event"].startswith("journey map edit refused")]
    assert refused["problems"] == [f"{map_file}:3: not UTF-8 (byte 0xe9 at column 37, e.g. an accented letter saved "
                                   "as Latin-1 or Windows-1252); save the file as UTF-8"]

    re_export(map_file, french.encode("utf-8"))  # saved again, as UTF-8: tried again and applied
    assert post_event(journey_hub, "e-3") == "Tableau comparatif du café"


def test_a_journey_map_in_windows_1252_at_start_up_is_a_problem_the_hub_lists_not_a_traceback(
    tmp_path: Path, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same export at start-up raised UnicodeDecodeError out of `Hub()` instead of the list of problems."""
    (mappings_dir / "sources.yaml").write_text(SOURCES)
    monkeypatch.setenv("HUB_SRC_JOURNEYS_SECRET", SECRET)
    map_file = mappings_dir / "journeys" / "web_shop.csv"
    map_file.write_bytes(SHIPPED_MAP.read_text(encoding="utf-8").replace("Help centre", "Aide café").encode("cp1252"))
    with pytest.raises(ConfigError) as refused:
        Hub(make_settings(tmp_path, mappings_dir=mappings_dir))
    assert refused.value.problems == [f"{map_file}:5: not UTF-8 (byte 0xe9 at column 17, e.g. an accented letter saved "
                                      "as Latin-1 or Windows-1252); save the file as UTF-8"]


def test_a_journey_map_nested_past_what_json_reads_keeps_the_last_good_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON export nested past Python's recursion limit (RecursionError from json.loads) failed the request
    that found it, and later requests kept the old map without a word; at start-up it was a traceback."""
    shutil.copytree(PROJECT_MAPPINGS / "journeys", tmp_path / "journeys")
    config = JourneyMapSource.validate_config("maps", {"secret": SECRET, "map_file": "journeys/web_shop.json",
                                                       "events": "events", "message_id": "id"})
    source = JourneyMapSource("maps", config, tmp_path)
    body = json.dumps({"events": [{"id": "e-1", "touchpoint_id": "TP-COMPARE"}]}).encode()
    request = InboundRequest("POST", "http://hub.test/v1/webhooks/maps",
                             {"x-signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}, body)
    before = source.parse(request).events[0].payload["journey"]

    re_export(tmp_path / "journeys" / "web_shop.json", b'{"stages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with logs_of(monkeypatch, journey_map_module) as logs:
        assert source.parse(request).events[0].payload["journey"] == before
    [refused] = logs
    assert refused["event"] == "journey map edit refused; the last good map stays in force"
    assert refused["problems"] == [f"{tmp_path / 'journeys' / 'web_shop.json'}: nested too deeply to read: lists or "
                                   "maps hundreds of levels inside each other; look for brackets pasted by mistake"]
    with pytest.raises(ConfigError, match="nested too deeply to read"):  # as the hub's start reads it
        load_journey_map(tmp_path / "journeys" / "web_shop.json")


@pytest.mark.parametrize("export", ["web_shop.csv", "web_shop.json"])
def test_a_journey_map_csv_saved_by_excel_as_utf8_is_read_not_refused_for_a_missing_touchpoint_id(
    tmp_path: Path, export: str
) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte-order mark, which became part of the first header: the map was
    refused for "missing touchpoint_id" (a JSON export with one, as "not valid JSON")."""
    shipped = PROJECT_MAPPINGS / "journeys" / export
    saved = tmp_path / "journeys" / export
    saved.parent.mkdir()
    saved.write_bytes(UTF8_BOM + shipped.read_bytes())
    assert load_journey_map(saved).labels() == load_journey_map(shipped).labels()
