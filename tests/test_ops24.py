"""Operating the hub, audit 24: readiness of a deleted SQLite file, metrics through an outage, rules waiting on a
template, journey map reloads, and command-line options named as typed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.base import InboundRequest
from connectors.sandbox.providers import SandboxProviders
from connectors.sources import journey_map
from connectors.sources.journey_map import JourneyMapSource
from hub import rulebook as rulebook_module
from hub.rulebook import RuleBook
from hub.settings import PROJECT_MAPPINGS
from hub.templates import TemplateRenderer, template_names
from tests.conftest import RunningHub, logs_of, make_settings, message, migrated_sqlite, serve_hub

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
RULE = "rules:\n  - id: {id}\n    when: {{event: E}}\n    respond: [{{channel: sms, template: {template}}}]\n"
SHOP_MAP = PROJECT_MAPPINGS / "journeys" / "web_shop.csv"


def write(path: Path, content: str) -> None:
    """Save `content` with an mtime a second later than the file had: a new save even on coarse file systems."""
    path.write_text(content)
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


# --- /readyz: the SQLite file deleted or replaced under the hub ---


def _sqlite_files(running_hub: RunningHub) -> list[Path]:
    database = running_hub.hub.store.engine.url.database
    assert database is not None
    return [Path(f"{database}{suffix}") for suffix in ("", "-wal", "-shm")]


def test_readyz_is_not_ready_once_the_sqlite_file_is_deleted(running_hub: RunningHub) -> None:
    """A SQLite file deleted under the running hub (rm, a volume swapped): its pooled connections write on into the
    unlinked file, so every event acknowledged from then on was gone at the next start. /readyz said ready: a
    missing file was taken for a `file:` URI or memory and judged not at all."""
    assert running_hub.client.get("/readyz").status_code == 200
    for each in _sqlite_files(running_hub):
        each.unlink(missing_ok=True)
    answer = running_hub.client.get("/readyz")
    assert answer.status_code == 503, answer.text
    assert "deleted or replaced" in answer.json()["reason"] and "restart the hub" in answer.json()["reason"]


def test_readyz_is_not_ready_once_the_sqlite_file_is_replaced(running_hub: RunningHub, tmp_path: Path) -> None:
    """A file moved over the store's (a restore, another volume's copy) is another store at the same path: the hub's
    connections still write to the old one. /readyz said ready, since the new file exists and can be written."""
    database, *_ = _sqlite_files(running_hub)
    shutil.copyfile(database, tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", database)
    answer = running_hub.client.get("/readyz")
    assert answer.status_code == 503, answer.text
    assert "deleted or replaced" in answer.json()["reason"]


# --- /metrics while the database is down ---


def _sample(body: str, name: str) -> float | None:
    samples = [sample for family in text_string_to_metric_families(body) for sample in family.samples]
    return next((sample.value for sample in samples if sample.name == name), None)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_metrics_still_answer_with_the_process_counters_while_the_database_refuses_connections(
    running_hub: RunningHub, postgres: Any, database_url: str
) -> None:
    """During a database outage ingest answers 503 and counts hub_events_rejected_total{reason="store_unavailable"},
    the counter an alert on the outage reads. But /metrics read the store's gauges in the same answer, and a store
    refusing connections made the whole scrape a 500: Prometheus got none of the counters while the outage lasted."""
    assert _sample(running_hub.client.get("/metrics").text, "hub_store_up") == 1
    with postgres.refusing_connections(database_url):
        assert running_hub.send(message(userId="u-1", event="x")).status_code == 503
        answer = running_hub.client.get("/metrics")
        assert answer.status_code == 200, answer.text[:300]
        assert 'reason="store_unavailable"' in answer.text
        assert _sample(answer.text, "hub_store_up") == 0
        assert _sample(answer.text, "hub_inbox_pending") is None  # left out, not a made-up 0


# --- triggers.yaml refused for a template not saved yet ---


def _rule_book(tmp_path: Path) -> tuple[RuleBook, Path]:
    shutil.copytree(PROJECT_MAPPINGS / "templates", tmp_path / "templates")
    path = tmp_path / "triggers.yaml"
    write(path, RULE.format(id="first", template="post_purchase_support.sms.j2"))
    renderer = TemplateRenderer(tmp_path / "templates", recheck_seconds=0)
    return RuleBook(path, lambda rules: renderer.check(sorted(template_names(rules))), recheck_seconds=0), path


def test_a_rule_refused_for_a_template_not_yet_saved_takes_effect_once_the_template_is(tmp_path: Path) -> None:
    """An ops person adds a rule naming a new template, then creates the template (or a deploy writes triggers.yaml
    before templates/). The reload between the two refuses the rules; once the template exists the edit is fine, but
    the rule book never looked again, the stamp of triggers.yaml being unchanged: the rule stayed out of force, and
    /api/rules showed the stale refusal, until someone saved triggers.yaml again."""
    rulebook, path = _rule_book(tmp_path)
    write(path, RULE.format(id="second", template="brand_new.sms.j2"))
    assert [rule.id for rule in rulebook.current()] == ["first"]  # refused: the template is not there yet
    assert rulebook.last_error
    write(tmp_path / "templates" / "brand_new.sms.j2", "Hello")
    time.sleep(0.01)
    assert [rule.id for rule in rulebook.current()] == ["second"]
    assert rulebook.last_error == []


def test_a_refused_edit_retried_at_each_look_is_logged_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused edit is tried again at each look (every HUB_RULES_RELOAD_SECONDS); a file that stays broken must
    not log its refusal each time, only when its problems change."""
    rulebook, path = _rule_book(tmp_path)
    with logs_of(monkeypatch, rulebook_module) as logs:
        write(path, RULE.format(id="second", template="brand_new.sms.j2"))
        for _ in range(5):
            assert [rule.id for rule in rulebook.current()] == ["first"]
        write(path, RULE.format(id="second", template="other_new.sms.j2"))
        for _ in range(5):
            assert [rule.id for rule in rulebook.current()] == ["first"]
    refusals = [line["problems"] for line in logs if line["log_level"] == "error"]
    assert len(refusals) == 2, logs
    assert "brand_new.sms.j2" in " ".join(refusals[0]) and "other_new.sms.j2" in " ".join(refusals[1])


# --- journey map reloads ---


def _journey_source(tmp_path: Path) -> tuple[JourneyMapSource, Path, InboundRequest]:
    """A journey map source over a copy of the shop's map, and a signed request for an event at TP-CART."""
    (tmp_path / "journeys").mkdir()
    path = tmp_path / "journeys" / "web_shop.csv"
    path.write_text(SHOP_MAP.read_text())
    config = JourneyMapSource.validate_config("test", {
        "secret": "journey-secret", "map_file": "journeys/web_shop.csv", "events": "events", "message_id": "id",
    })
    body = json.dumps({"events": [{"id": "e-1", "touchpoint_id": "TP-CART", "userId": "u-1"}]}).encode()
    signature = hmac.new(b"journey-secret", body, hashlib.sha256).hexdigest()
    request = InboundRequest("POST", "http://hub.test/v1/webhooks/journeys", {"X-Signature": signature}, body)
    return JourneyMapSource("journeys", config, tmp_path), path, request


def _channel(source: JourneyMapSource, request: InboundRequest) -> str:
    channel: str = source.parse(request).events[0].payload["journey"]["channel"]
    return channel


def test_a_journey_map_re_export_of_the_same_size_within_one_mtime_tick_is_reloaded(tmp_path: Path) -> None:
    """The journey map was stamped by (mtime, size): a re-export moving a touchpoint to another channel (mobile ->
    tablet, the same length) within one tick of the file system's clock was never loaded; events kept the old labels
    until an export of another size."""
    source, path, request = _journey_source(tmp_path)
    assert _channel(source, request) == "mobile"
    before = path.stat()
    path.write_text(path.read_text().replace("TP-CART,Cart drawer,mobile,", "TP-CART,Cart drawer,tablet,"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # saved within the same tick of the clock
    assert _channel(source, request) == "tablet"


def test_a_missing_journey_map_is_logged_once_not_at_every_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a marketer's export is replaced (deleted, then written) the map file is missing, and the source logged
    "journey map unreadable" at every webhook request (its stat raised before the stamp was compared): thousands of
    error lines a minute on a busy source. Once, and the last good map serves; the export written back is loaded."""
    source, path, request = _journey_source(tmp_path)
    exported = path.read_text()
    path.unlink()
    with logs_of(monkeypatch, journey_map) as logs:
        for _ in range(5):
            assert _channel(source, request) == "mobile"  # the last good map
    assert len([line for line in logs if line["log_level"] == "error"]) == 1, logs
    path.write_text(exported.replace("TP-CART,Cart drawer,mobile,", "TP-CART,Cart drawer,tablet,"))
    assert _channel(source, request) == "tablet"


# --- command-line options named as typed ---


@pytest.mark.parametrize(
    ("arguments", "option"),
    [(["worker", "--only", "piepline"], "--only"), (["serve", "--port", "70000"], "--port")],
)
def test_a_bad_option_value_is_named_as_the_option_typed(tmp_path: Path, arguments: list[str], option: str) -> None:
    """`touchhub worker --only piepline` (a typo on the command line) exited 2 saying "HUB_WORKERS: unknown worker
    piepline", and `serve --port 70000` "HUB_PORT: ...": the person looked for a setting they never set."""
    scratch = tmp_path / "work"
    scratch.mkdir()
    done = subprocess.run(
        [TOUCHHUB, *arguments], cwd=scratch, capture_output=True, text=True, timeout=90,
        env={"COLUMNS": "200", "PATH": "", "HUB_DATABASE_URL": migrated_sqlite(tmp_path / "hub.db")},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    flat = " ".join(done.stderr.split())
    assert f"{option}:" in flat and "HUB_" not in flat, flat


def _processed(running: RunningHub) -> float:
    families = text_string_to_metric_families(running.client.get("/metrics").text)
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == "hub_touchpoints_processed_total")


def test_an_event_a_drop_rule_drops_is_not_counted_as_a_touchpoint_processed(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """hub_touchpoints_processed_total counts inbox rows turned into touchpoints, but every row of a set was counted
    before a mapping's `drop` rule dropped some: a mapping dropping heartbeats inflated the rate by all of them."""
    mapping = mappings_dir / "segment.yaml"
    mapping.write_text(mapping.read_text() + "\ndrop:\n  - when: \"event == 'Heartbeat'\"\n    reason: app heartbeats\n")
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides()), sandbox) as running:
        before = _processed(running)
        assert running.send(message(userId="u-beat", event="Heartbeat")).status_code == 200
        assert running.send(message(userId="u-beat", event="Cart Viewed")).status_code == 200
        running.settle()
        assert [each["event"] for each in running.admin("/api/touchpoints")["touchpoints"]] == ["Cart Viewed"]
        assert _processed(running) - before == 1
