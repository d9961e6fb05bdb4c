"""The events file `touchhub triggers test` runs: read, checked and ordered as the live hub would take it in.

Ops hold events as JSON Lines or one JSON array. Each message passes the
default source's own checks and gets its id (`take_message`), so what the
hub refuses at ingest, and a resend it drops, are left out and named at
their lines rather than tried. The messages come in the order they reached
the hub (`receivedAt`, else the later of the event's time and `sentAt`), which
is the simulated clock's. Times are read as the Segment source reads them.
Every problem names the user's file at its line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from connectors.base import RejectedItem
from connectors.sources.segment import take_message
from connectors.sources.segment_times import time_of
from hub.config_files import utf8_text
from hub.errors import ConfigError, ItemProblem
from hub.model import RawEvent
from hub.settings import PROJECT_MAPPINGS
from hub.sources import DEFAULT_SOURCE_ID

SAMPLE_EVENTS = PROJECT_MAPPINGS / "samples" / "demo_journey.jsonl"
EVENTS_FORMAT = (
    "Segment messages, each with a timestamp (or RudderStack's originalTimestamp), as JSON Lines (one message a line) "
    "or as one JSON array of them"
)


@dataclass(frozen=True)
class Arrival:
    """One message of an events file as the hub's inbox holds it: the line it starts on, when it reached the hub."""

    line: int
    at: datetime
    raw: RawEvent


@dataclass(frozen=True)
class EventsFile:
    """The messages of one events file in the order they reached the hub, and what was left out.

    `left_out` holds `(line, why)` for messages the hub would not take in (one
    it refuses at ingest, a resend): they are reported, and not counted as tried.
    """

    path: Path
    events: list[Arrival]
    left_out: list[tuple[int, str]]

    @cached_property
    def lines(self) -> dict[str, int]:
        """The line of each message tried, by its id: what the hub reports about a message, named in the file."""
        return {event.raw.message_id: event.line for event in self.events}


def load_events(path: Path) -> EventsFile:
    """The messages of an events file the hub would take in, in the order they reached it (a tie keeps the
    file's order).

    Ops people hold events in two shapes: JSON Lines (a warehouse or log
    export, one message a line) and one JSON array (a copy from a debugger or
    an API response); both are read. A file that is neither gets one line
    saying what is expected, not an error for each of its lines.

    A file with no events is refused (ConfigError: exit 2), as Segment's and
    RudderStack's HTTP APIs refuse a batch with no message (and so does the
    hub's `/v1/batch`): an empty export is a mistake upstream, and an empty
    table with exit 0 would let a CI check pass without trying a single rule.
    So is a file none of whose messages the hub would take in.

    Each message passes the default source's own checks (`take_message`).
    One it refuses (a track without `event`, ...) is left out with each
    problem named, as the live hub quarantines it and takes in the rest of
    its batch; trying it would show decisions the live hub never makes. So
    is a resend: the inbox keeps the first copy of a message, by its
    `messageId` or, without one, by a hash of its content.

    A message reached the hub at its `receivedAt` where it has one (an export
    from Segment, RudderStack or the hub's inbox), else at its `timestamp`
    (RudderStack's SDKs send `originalTimestamp` instead), or at its `sentAt`
    where that is later (an SDK's offline queue). A time without an offset is
    UTC, as the Segment source and `normalize` read it.
    Taken in in that order, a message that came late meets the timers that
    fired before it came, and `triggers.rejudge` judges again what it
    changes, as in the live hub.
    """
    items, problems = _items(path, utf8_text(path, "utf-8-sig"))  # -sig: a byte-order mark is no error
    if not items and not problems:
        raise ConfigError(f"{path}: no events; give {EVENTS_FORMAT}, e.g. {SAMPLE_EVENTS}")
    taken, refused, unplaced = _taken_in(items)
    arrivals, repeats = _first_copies(taken)
    left_out = refused + repeats
    if problems or unplaced:
        raise ConfigError(at_lines(path, problems + unplaced))
    if not arrivals:
        raise ConfigError([*at_lines(path, left_out), f"{path}: no message the hub would take in, so nothing to try"])
    return EventsFile(path, arrivals, left_out)


def _taken_in(items: list[tuple[int, Any]]) -> tuple[list[Arrival], list[tuple[int, str]], list[tuple[int, str]]]:
    """The messages the hub takes in, each at its arrival; then `(line, why)` for those it refuses, and for
    those the simulated clock cannot place."""
    taken: list[Arrival] = []
    refused: list[tuple[int, str]] = []
    unplaced: list[tuple[int, str]] = []
    for number, item in items:
        raw = take_message(DEFAULT_SOURCE_ID, item)
        if isinstance(raw, RejectedItem):
            refused.append((number, _refusal(raw.problems)))
            continue
        try:
            taken.append(Arrival(number, _arrival(item), raw))
        except ValueError as exc:
            unplaced.append((number, str(exc)))
    return taken, refused, unplaced


def _refusal(problems: list[ItemProblem]) -> str:
    """Every problem of the message in one note, so each note is one message left out."""
    named = "; ".join(f"{problem.field}: {problem.reason}" for problem in problems)
    return f"{named}; the hub refuses this message at ingest (it quarantines it), so it was not tried"


def _first_copies(taken: list[Arrival]) -> tuple[list[Arrival], list[tuple[int, str]]]:
    """The messages in the order they arrived, less the copies the inbox drops, which are named at their lines."""
    first: dict[str, Arrival] = {}
    repeats: list[tuple[int, str]] = []
    for arrival in sorted(taken, key=lambda arrival: arrival.at):
        kept = first.setdefault(arrival.raw.message_id, arrival)
        if kept is not arrival:
            repeats.append((arrival.line, f"{_same_message(arrival.raw, kept.line)}; the hub keeps the first copy "
                                          "of a message, so this one was not tried"))
    return list(first.values()), repeats


def _same_message(raw: RawEvent, line: int) -> str:
    if raw.message_id == raw.payload.get("messageId"):
        return f"messageId {raw.message_id!r} repeats line {line}"
    return f"the same message as line {line} (without a messageId, the hub knows a message by its content)"


def at_lines(path: Path, notes: list[tuple[int, str]]) -> list[str]:
    """`path:line: why` for each note, in line order."""
    return [f"{path}:{line}: {why}" for line, why in sorted(notes)]


def _arrival(event: dict[str, Any]) -> datetime:
    """When the message reached the hub (its `receivedAt`, else the later of its event time, which it must have,
    and its `sentAt`), or ValueError saying what is wrong with it in the user's words.

    An SDK's offline queue sends an event minutes after its `timestamp`: the live hub cannot take it in before
    its `sentAt`, so the timers due meanwhile fire first. Taken in at `sentAt`, live ingest's clock correction
    (`segment_times.skew_corrected`) leaves its `timestamp` as it is, so the lab need not apply it. With `sentAt`
    before `timestamp` (a clock that stepped) the correction dates the event after it arrived, and `normalize`
    takes such a time back to the arrival, here the `timestamp`: the same time again. A message with
    `receivedAt` already passed through a hub that corrected it, and live ingest leaves it as it is too; a
    `timestamp` after its `receivedAt` is taken back to it by `normalize`, in the lab as live.
    """
    happened = _event_time(event)
    if "receivedAt" in event:
        return _checked_time("receivedAt", event["receivedAt"])
    return max(happened, _checked_time("sentAt", event["sentAt"])) if "sentAt" in event else happened


def _event_time(event: dict[str, Any]) -> datetime:
    """The message's `timestamp`, else its `originalTimestamp`: RudderStack's SDKs send the device's time there
    and leave `timestamp` to the server, and the shipped mappings read `timestamp || originalTimestamp`, so the
    live hub times such a message by it."""
    if "timestamp" in event:
        return _checked_time("timestamp", event["timestamp"])
    device_time = event.get("originalTimestamp") or None
    if device_time is None:
        raise ValueError("timestamp: missing; the simulated clock needs every event's time")
    return _checked_time("originalTimestamp", device_time)


def _checked_time(field: str, value: Any) -> datetime:
    """`value` in UTC as the Segment source reads it (`segment_times.time_of`: no offset means UTC), or ValueError
    naming `field`. A time outside the years 1-9999 once in UTC (9999-12-31T23:00-05:00) is one the live hub
    quarantines (`normalize._parsed_time`); the simulated clock cannot stand on it, as the store keeps UTC."""
    at = time_of(value)
    if at is None:
        raise ValueError(f"{field}: {value!r} is not an ISO-8601 timestamp; write one such as 2026-01-05T10:00:00Z")
    try:
        return at.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(
            f"{field}: {value!r} is not a time within the years 1 to 9999 (UTC), so the live hub quarantines this "
            "message; give a time within them, or take the message out of the file"
        ) from None


def _items(path: Path, text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """`(line, value)` for each event of the file (the elements of one JSON array, or the lines of JSON Lines),
    and the lines that are not JSON, each named."""
    if not text.strip():
        return [], []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("[") or not _some_line_is_an_object(text):
            raise ConfigError(
                f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); expected {EVENTS_FORMAT}"
            ) from None
        return _json_lines(text)
    if isinstance(document, list):
        return _array_items(text), []
    if isinstance(document, dict):
        _refuse_other_shapes(path, document)
    return [(_first_line(text), document)], []  # one message, however it is laid out


def _json_lines(text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    items: list[tuple[int, Any]] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append((number, f"not one JSON object on one line ({exc.msg}, column {exc.colno})"))
    return items, problems


def _some_line_is_an_object(text: str) -> bool:
    """Whether the file can be JSON Lines at all: a pretty-printed document has no line that is an object alone."""
    for line in text.splitlines():
        try:
            if isinstance(json.loads(line), dict):
                return True
        except json.JSONDecodeError:
            continue
    return False


def _array_items(text: str) -> list[tuple[int, Any]]:
    """The elements of a JSON array (already known to parse), each with the line it starts on."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []
    at, line, counted = text.index("[") + 1, 1, 0
    while True:
        while text[at] in " \t\r\n,":
            at += 1
        if text[at] == "]":
            return items
        line, counted = line + text.count("\n", counted, at), at
        value, at = decoder.raw_decode(text, at)
        items.append((line, value))


def _refuse_other_shapes(path: Path, document: dict[str, Any]) -> None:
    """One line for the JSON documents that hold events but are not a list of them, saying how to get one."""
    entries = document.get("events")
    if isinstance(entries, list) and entries and all(isinstance(e, dict) and "message" in e for e in entries):
        raise ConfigError(
            f"{path}: a `touchhub demo` journey (times in `at` are relative to the moment the demo runs), "
            f"not events with timestamps; expected {EVENTS_FORMAT}. The same journey with fixed times: {SAMPLE_EVENTS}"
        )
    if isinstance(document.get("batch"), list):
        raise ConfigError(
            f"{path}: a Segment batch body; expected {EVENTS_FORMAT}. "
            f"Take its messages out with: jq -c '.batch[]' {path} > events.jsonl"
        )


def _first_line(text: str) -> int:
    """The line a document starts on, after any blank lines."""
    return text[: len(text) - len(text.lstrip())].count("\n") + 1
