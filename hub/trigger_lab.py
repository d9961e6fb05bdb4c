"""`touchhub triggers test`: run rules over a file of events with a simulated clock, sending nothing.

The simulation is the real hub (mapping, identity, triggers, timers, routing)
on a throwaway database with the rules under test in place of the shipped
ones. The clock is the events' own time: before each event, the timers due
earlier are fired, each at its own due time; after the last, every remaining
timer is run out the same way. Deliveries are planned into the throwaway
outbox and never sent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hub.clock import utcnow
from hub.config_files import with_line
from hub.errors import ConfigError
from hub.model import RawEvent, derived_id
from hub.pii import mask_text
from hub.runtime import DEFAULT_SOURCE_ID, Hub
from hub.settings import HubSettings
from hub.store import decisions, inbox, quarantine, timers
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
            at = _event_time(event)
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
        try:
            hub = Hub(settings.with_overrides(database_url=f"sqlite:///{folder}/lab.db", mappings_dir=str(mappings)))
        except ConfigError as exc:  # name the file the user gave, with its lines, not the throwaway copy
            copy = mappings / "triggers.yaml"
            raise ConfigError([
                with_line(problem, copy).replace(str(copy), str(rules)) for problem in exc.problems
            ]) from None
        try:
            return _simulate(hub, events)
        finally:
            hub.delivery.close()
            hub.store.dispose()


def _simulate(hub: Hub, events: list[dict[str, Any]]) -> LabResult:
    clock = _event_time(events[0]) if events else utcnow()
    for event in events:
        at = _event_time(event)
        clock = _fire_timers(hub, clock, before=at)
        clock = max(clock, at)
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent(DEFAULT_SOURCE_ID, str(event["messageId"]), event)], clock)
        _drain(hub.pipeline.run_once, clock)
    _fire_timers(hub, clock, before=None)
    with hub.store.read() as connection:
        found = sorted(decisions.search(connection, limit=1_000_000), key=lambda d: (d["decided_at"], d["rule_id"]))
        for decision in found:
            profile = profile_view(connection, decision["profile_id"]) or {"identifiers": {}}
            decision["who"] = _who(profile["identifiers"])
        return LabResult(found, len(events), quarantine.count(connection))


def _fire_timers(hub: Hub, clock: datetime, *, before: datetime | None) -> datetime:
    """Fire the timers due before `before` (every one left when None), returning the clock they leave.

    The clock steps to each due time in turn and the timer engine runs there,
    as a live timer worker would: routing judges quiet hours and the daily cap
    at that moment, not at the next event's time. Timers due at the same
    instant as an event fire after it, since a follow-up at the due time still
    counts (`evaluate_expired` looks up to and including it): the outcome must
    not hang on which of the two the simulation took first. A timer that fails
    stays held for its lease, so the next step goes on past it and the loop ends.
    """
    while True:
        with hub.store.read() as connection:
            due = timers.next_due(connection, clock)
        if due is None or (before is not None and due >= before):
            return clock
        clock = max(clock, due)
        _drain(hub.timers.run_once, clock)


def _event_time(event: dict[str, Any]) -> datetime:
    """An event's `timestamp`: the simulated clock reads nothing else, so every step is where an event or timer put it."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))


def _drain(step: Any, now: datetime) -> None:
    while step(now):
        continue


def as_record(decision: dict[str, Any]) -> dict[str, Any]:
    """One decision as `--json` prints it: what the decision log holds, less what differs from run to run.

    Profile, decision and delivery ids are left out (profiles get new ids in
    each throwaway database; nothing is delivered), so two runs over the same
    events diff line by line; `profile` is the masked name the table shows.
    """
    evidence = dict(decision["evidence"])
    touchpoint_ids = evidence.pop("touchpoints", [decision["touchpoint_id"]])
    return {
        "time": decision["decided_at"].isoformat(),
        "rule_id": decision["rule_id"],
        "rule_version": decision["rule_version"],
        "profile": decision["who"],
        "status": decision["status"],
        "reasons": evidence,
        "touchpoints": touchpoint_ids,
        "actions": [{key: value for key, value in action.items() if key != "delivery_id"} for action in decision["actions"]],
    }


def _who(identifiers: dict[str, list[str]]) -> str:
    """A recognisable name for the profile; emails and phones masked as everywhere else."""
    for kind in ("user_id", "anonymous_id", "email", "phone"):
        if identifiers.get(kind):
            return f"{kind}:{mask_text(identifiers[kind][0])}"
    return "unknown"

