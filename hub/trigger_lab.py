"""`touchhub triggers test`: run rules over a file of events with a simulated clock, sending nothing.

The simulation is the real hub (mapping, identity, triggers, timers, routing)
on a throwaway database with the rules under test in place of the shipped
ones. The clock is the events' own time: before each event, timers that came
due are fired; after the last, every remaining timer is run out. Deliveries
are planned into the throwaway outbox and never sent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hub.clock import utcnow
from hub.durations import parse_duration
from hub.errors import ConfigError
from hub.model import RawEvent, derived_id
from hub.pii import mask_text
from hub.runtime import DEFAULT_SOURCE_ID, Hub
from hub.settings import HubSettings
from hub.store import decisions, inbox, quarantine
from hub.store.identity_graph import profile_view


@dataclass(frozen=True)
class LabResult:
    decisions: list[dict[str, Any]]
    events: int
    quarantined: int


def load_events(path: Path) -> list[dict[str, Any]]:
    """Segment-spec messages, one JSON object a line, each with a `timestamp`; sorted by it."""
    problems: list[str] = []
    events: list[tuple[datetime, dict[str, Any]]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("a line must be one JSON object")
            at = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
            if at.tzinfo is None:
                raise ValueError("timestamp needs a time zone (e.g. Z or +00:00)")
        except KeyError:
            problems.append(f"{path}:{number}: timestamp: missing; the simulated clock needs every event's time")
            continue
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        event.setdefault("messageId", derived_id("lab", str(path), str(number)))
        events.append((at, event))
    if problems:
        raise ConfigError(problems)
    return [event for _, event in sorted(events, key=lambda pair: pair[0])]


def run(rules: Path, events_path: Path, settings: HubSettings) -> LabResult:
    events = load_events(events_path)
    with tempfile.TemporaryDirectory(prefix="touchhub-lab-") as folder:
        mappings = Path(folder) / "mappings"
        shutil.copytree(settings.mappings_dir, mappings)
        shutil.copyfile(rules, mappings / "triggers.yaml")
        hub = Hub(settings.with_overrides(database_url=f"sqlite:///{folder}/lab.db", mappings_dir=str(mappings)))
        try:
            return _simulate(hub, events)
        finally:
            hub.delivery.close()
            hub.store.dispose()


def _simulate(hub: Hub, events: list[dict[str, Any]]) -> LabResult:
    clock = utcnow()
    for event in events:
        clock = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
        _drain(hub.timers.run_once, clock)
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent(DEFAULT_SOURCE_ID, str(event["messageId"]), event)], clock)
        _drain(hub.pipeline.run_once, clock)
    longest = max((rule.absence.within for rule in hub.rulebook.current() if rule.absence), default=timedelta())
    _drain(hub.timers.run_once, clock + longest + parse_duration("1s"))
    with hub.store.read() as connection:
        found = sorted(decisions.search(connection, limit=1_000_000), key=lambda d: (d["decided_at"], d["rule_id"]))
        for decision in found:
            profile = profile_view(connection, decision["profile_id"]) or {"identifiers": {}}
            decision["who"] = _who(profile["identifiers"])
        return LabResult(found, len(events), quarantine.count(connection))


def _drain(step: Any, now: datetime) -> None:
    while step(now):
        continue


def _who(identifiers: dict[str, list[str]]) -> str:
    """A recognisable name for the profile; emails and phones masked as everywhere else."""
    for kind in ("user_id", "anonymous_id", "email", "phone"):
        if identifiers.get(kind):
            return f"{kind}:{mask_text(identifiers[kind][0])}"
    return "unknown"

