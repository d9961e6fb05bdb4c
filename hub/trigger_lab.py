"""`touchhub triggers test`: run rules over a file of events with a simulated clock, sending nothing.

The simulation is the real hub (mapping, identity, triggers, timers, routing)
on a throwaway database with the rules under test in place of the shipped
ones. The events are taken in as the live hub's default source takes them
(`hub.lab_events`: what it refuses is left out, a resend is dropped) and in
the order they reached it, the clock stepping to each arrival: before the events
that arrived at one moment (an SDK's flush shares one `sentAt`), the timers due
earlier are fired, each at its own due time, and then those events are taken in
together; after the last, every remaining timer is run out the same way.
Deliveries are planned into the throwaway outbox and never sent; one due by
the time the clock steps to an event counts as gone (`_gone_by`), as the live
hub's delivery worker would have sent it, so a late follow-up withdraws only
what the live hub would still hold (a nudge quiet hours keep until morning).

Everything reported names the files the user gave, at their lines: the
throwaway copies (and the inbox ids the hub gives events there) mean nothing
once the run is over.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update

from hub.config_files import with_line
from hub.errors import ConfigError
from hub.lab_events import EventsFile, at_lines, load_events
from hub.model import RawEvent
from hub.pii import mask_text
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS, HubSettings
from hub.store import decisions, inbox, schema, timers
from hub.store.outbox import DUE_STATUSES
from hub.store.profile_views import profile_views


@dataclass(frozen=True)
class LabResult:
    decisions: list[dict[str, Any]]
    events: int
    left_out: list[str]  # `path:line: why`, in line order: repeated messages, events the hub quarantined


def _unreported(taken: int, total: int) -> None:
    """No one follows the run's progress."""


def run(
    rules: Path, events_path: Path, settings: HubSettings, on_events: Callable[[int, int], None] = _unreported
) -> LabResult:
    """Try `rules` over the events file; `on_events(taken, total)` is told after each moment's events are taken
    in (a progress bar: a few thousand events take half a minute)."""
    events = load_events(events_path)
    with tempfile.TemporaryDirectory(prefix="touchhub-lab-") as folder:
        hub = _lab_hub(rules, Path(folder), settings)
        try:
            assert hub.rulebook is not None  # Hub() raised otherwise
            if not hub.rulebook.current():
                raise ConfigError(
                    f"{rules}: no rules to try (the file has none, or every rule has `enabled: false`); "
                    f"write them as in {PROJECT_MAPPINGS / 'triggers.yaml'}"
                )
            return _simulate(hub, events, on_events)
        finally:
            hub.delivery.close()
            hub.store.dispose()


def _lab_hub(rules: Path, folder: Path, settings: HubSettings) -> Hub:
    """The hub over copies of HUB_MAPPINGS_DIR with the rules under test in place of triggers.yaml, and a throwaway
    database; what it refuses is reported against the user's files (`_as_given`)."""
    mappings = folder / "mappings"
    shutil.copytree(settings.mappings_dir, mappings)
    shutil.copyfile(rules, mappings / "triggers.yaml")
    try:
        # One attempt per event: an event the pipeline fails on is quarantined (and listed at its line) at once,
        # not postponed on the simulated clock, where it would hold back every timer due after it. No delivery
        # worker: nothing is sent, and a hub that does not deliver routes as if every destination were
        # configured, since the machine trying rules is not the one that sends.
        return Hub(settings.with_overrides(
            database_url=f"sqlite:///{folder}/lab.db", mappings_dir=str(mappings), pipeline_max_attempts=1,
            workers="pipeline,timers",
        ))
    except ConfigError as exc:
        raise ConfigError([_as_given(problem, rules, mappings, settings.mappings_dir) for problem in exc.problems]) from None


def _as_given(problem: str, rules: Path, copies: Path, mappings_dir: Path) -> str:
    """A problem the hub found in its copies, as `path:line: reason` in the files the user gave.

    The schema's problems name the copied rules file and a key, which
    `with_line` finds; the checks across files (routes, templates, params)
    name the copy at its line already. The copy's lines are the user's file's;
    the other files are HUB_MAPPINGS_DIR's.
    """
    copy = copies / "triggers.yaml"
    return with_line(problem, copy).replace(str(copy), str(rules)).replace(str(copies), str(mappings_dir))


def _simulate(hub: Hub, events_file: EventsFile, on_events: Callable[[int, int], None]) -> LabResult:
    clock = events_file.events[0].at  # load_events refuses a file with nothing to try
    taken, total = 0, len(events_file.events)
    for at, arrived in groupby(events_file.events, key=lambda event: event.at):
        clock = _fire_timers(hub, clock, before=at)
        clock = max(clock, at)
        raws = [event.raw for event in arrived]
        _take_in(hub, raws, clock)
        taken += len(raws)
        on_events(taken, total)
    _fire_timers(hub, clock, before=None)
    with hub.store.read() as connection:
        found = sorted(decisions.search(connection, limit=1_000_000), key=lambda d: (d["decided_at"], d["rule_id"]))
        views = profile_views(connection, {decision["profile_id"] for decision in found})
        for decision in found:
            decision["who"] = _who(views.get(decision["profile_id"], {"identifiers": {}})["identifiers"])
        left_out = events_file.left_out + _quarantined(connection, events_file) + _failed_timers(connection, events_file)
    return LabResult(found, len(events_file.events), at_lines(events_file.path, left_out))


def _take_in(hub: Hub, raws: list[RawEvent], clock: datetime) -> None:
    """Take in the messages that reached the hub at one moment together, before any timer fires.

    An SDK's offline queue sends a cart and its order in one flush (one
    `sentAt`): the live hub takes both in before the cart's timer, overdue
    the moment it is armed, can fire (one pipeline batch, and `claim_due`
    holds back a timer armed after an event still waiting in the inbox was
    received), so the order cancels the wait. Fired between the two, the
    timer would show a decision the live hub never makes.
    """
    with hub.store.write() as connection:
        _gone_by(connection, clock)
        inbox.append(connection, raws, clock)
    _drain(hub.pipeline.run_once, clock)


def _gone_by(connection: Connection, clock: datetime) -> None:
    """Mark the deliveries due by `clock` sent, as the live hub's delivery worker would have them: a late
    follow-up withdraws only a nudge still held (`timer_arming.withdraw_followed_up`), and a decision the live
    hub sent was shown withdrawn."""
    due = schema.deliveries.c
    connection.execute(
        update(schema.deliveries).where(due.status.in_(DUE_STATUSES), due.next_attempt_at <= clock).values(status="sent")
    )


def _quarantined(connection: Connection, events_file: EventsFile) -> list[tuple[int, str]]:
    """The events the hub quarantined, by their line in the file: the inbox ids it logs are the throwaway
    database's."""
    rows = connection.execute(
        select(schema.inbox.c.message_id, schema.quarantine.c.stage, schema.quarantine.c.reason)
        .join(schema.quarantine, schema.quarantine.c.inbox_id == schema.inbox.c.id)
    )
    return [(events_file.lines[row.message_id], f"quarantined at the {row.stage} stage: {row.reason}") for row in rows]


def _failed_timers(connection: Connection, events_file: EventsFile) -> list[tuple[int, str]]:
    """The absence timers whose firing raised (settled `failed` at once: one attempt, as for events), by the line
    of the event that started their wait: a rule that would fail live is no silent non-decision here."""
    rows = connection.execute(
        select(schema.inbox.c.message_id, schema.timers.c.rule_id, schema.timers.c.reason)
        .join(schema.touchpoints, schema.touchpoints.c.inbox_id == schema.inbox.c.id)
        .join(schema.timers, schema.timers.c.touchpoint_id == schema.touchpoints.c.touchpoint_id)
        .where(schema.timers.c.status == "failed")
    )
    return [(events_file.lines[row.message_id], f"the {row.rule_id} timer it started failed to fire: {row.reason}") for row in rows]


def _fire_timers(hub: Hub, clock: datetime, *, before: datetime | None) -> datetime:
    """Fire the timers due before `before` (every one left when None), returning the clock they leave.

    The clock steps to each due time in turn and the timer engine runs there,
    as a live timer worker would: routing judges quiet hours and the daily cap
    at that moment, not at the next event's time. Timers due at the same
    instant as an event fire after it, since a follow-up at the due time still
    counts (`evaluate_expired` looks up to and including it): the outcome must
    not hang on which of the two the simulation took first. A timer that fails
    is settled `failed` at once (`_failed_timers` lists it), so the next step
    goes on past it; one the engine would not claim at its due time (held
    back: `timers.claim_due`) ends the steps rather than repeat them.
    """
    while True:
        with hub.store.read() as connection:
            due = timers.next_due(connection, clock)
        if due is None or (before is not None and due >= before):
            return clock
        clock = max(clock, due)
        if not hub.timers.run_once(clock):
            return clock
        _drain(hub.timers.run_once, clock)


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

