"""Events labelled by the journey map the marketers drew.

A journey map, exported as JSON or CSV, lists stages, micro-moments and
touchpoints, each with an id. Events (HMAC-signed JSON, see `generic_hmac`)
name a map touchpoint by id; the source attaches that touchpoint's stage,
moment and labels under ``journey`` in the raw payload, so the mapping takes
stage and moment from the map rather than from a table in YAML. An event
naming a touchpoint the map does not have is refused item by item and
quarantined with the reason.

JSON export::

    {"name": "...", "stages": [{"id": "S2", "stage": "consideration", "label": "Compare"}],
     "moments": [{"id": "M3", "moment": "product_comparison", "label": "Comparing products"}],
     "touchpoints": [{"id": "TP-PDP", "name": "Product page", "stage": "S2", "moment": "M3", "channel": "web"}]}

CSV export: one touchpoint per row with the columns
``touchpoint_id, touchpoint, channel, stage_id, stage, stage_label, moment_id, moment, moment_label``.

Either is read as UTF-8, with or without the byte-order mark Excel writes
("CSV UTF-8"); an export in another encoding (Excel's plain "CSV" on Windows
is Windows-1252) is refused at the line of its first stray byte.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from connectors.base import InboundRequest, ParseResult
from connectors.sources.generic_hmac import GenericHmacConfig, GenericHmacSource
from hub.config_files import Unchanged, config_text, problems_of, too_deep
from hub.errors import ConfigError, ItemProblem
from hub.mapping import Stage
from hub.settings import PROJECT_MAPPINGS

log = structlog.get_logger(__name__)
# The line endings `io` splits a text at when reading it with newline="", which the csv reader's `line_num` counts.
LINE_BREAK = re.compile(r"\r\n|\r|\n")
CSV_COLUMNS = ("touchpoint_id", "touchpoint", "channel", "stage_id", "stage", "stage_label", "moment_id", "moment", "moment_label")


class MapStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    stage: Stage
    label: str = ""


class MapMoment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    moment: str = Field(min_length=1, pattern=r"^[a-z0-9_]+$")
    label: str = ""


class MapTouchpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    stage: str = Field(description="Id of a stage of the map.")
    moment: str = Field(description="Id of a micro-moment of the map.")
    channel: str = ""


class JourneyMap(BaseModel):
    """A journey map with every reference checked: touchpoints name stages and moments that exist."""

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    stages: list[MapStage]
    moments: list[MapMoment]
    touchpoints: list[MapTouchpoint]

    @model_validator(mode="after")
    def _references_resolve(self) -> "JourneyMap":
        stages, moments = {s.id for s in self.stages}, {m.id for m in self.moments}
        for kind, ids in (("stage", [s.id for s in self.stages]), ("moment", [m.id for m in self.moments]),
                          ("touchpoint", [t.id for t in self.touchpoints])):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            if duplicates:
                raise ValueError(f"{kind} ids must be unique; repeated: {', '.join(duplicates)}")
        for touchpoint in self.touchpoints:
            if touchpoint.stage not in stages:
                raise ValueError(f"touchpoint {touchpoint.id!r} names stage {touchpoint.stage!r}, which the map does not have")
            if touchpoint.moment not in moments:
                raise ValueError(f"touchpoint {touchpoint.id!r} names moment {touchpoint.moment!r}, which the map does not have")
        return self

    def labels(self) -> dict[str, dict[str, str]]:
        """Touchpoint id -> what an event at that touchpoint is labelled with."""
        stages = {s.id: s for s in self.stages}
        moments = {m.id: m for m in self.moments}
        return {
            t.id: {
                "map": self.name, "touchpoint_id": t.id, "touchpoint": t.name, "channel": t.channel,
                "stage_id": t.stage, "stage": stages[t.stage].stage, "stage_label": stages[t.stage].label,
                "moment_id": t.moment, "moment": moments[t.moment].moment, "moment_label": moments[t.moment].label,
            }
            for t in self.touchpoints
        }


def load_journey_map(path: Path) -> JourneyMap:
    """Read a JSON or CSV export; ConfigError names the file and each problem."""
    text = config_text(path)
    try:
        document = _from_csv(text, path) if path.suffix.lower() == ".csv" else json.loads(text)
        return JourneyMap.model_validate(document)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:  # json recurses as it reads: at start-up this was a traceback, not the list of problems
        raise too_deep(path) from None
    except ValidationError as exc:
        raise ConfigError([f"{path}: {'.'.join(map(str, e['loc'])) or '(map)'}: {e['msg']}" for e in exc.errors()]) from None


def _from_csv(text: str, path: Path) -> dict[str, Any]:
    rows = _numbered_rows(text)
    missing = [column for column in CSV_COLUMNS if rows and column not in rows[0][1]]
    if missing or not rows:
        raise ConfigError(f"{path}: CSV needs a header row with {', '.join(CSV_COLUMNS)}; missing {', '.join(missing) or 'rows'}")
    problems: list[str] = []
    stages = _defined_once("stage", rows, path, problems)
    moments = _defined_once("moment", rows, path, problems)
    if problems:
        raise ConfigError(problems)
    touchpoints = [
        {"id": row["touchpoint_id"], "name": row["touchpoint"], "stage": row["stage_id"], "moment": row["moment_id"],
         "channel": row["channel"]}
        for _, row in rows
    ]
    return {"name": path.stem, "stages": stages, "moments": moments, "touchpoints": touchpoints}


def _numbered_rows(text: str) -> list[tuple[int, dict[str, str]]]:
    """Each row of the export with the line it begins on.

    Read as the csv module asks (newline=""): fed `text.splitlines()`, a
    quoted cell's line break (Excel's Alt+Enter) was lost ("Comparisontable"),
    and a U+2028, vertical tab, form feed or other character `splitlines`
    breaks at split the row holding it in two. A row may span lines, and the
    reader's `line_num` is its last; problems name its first, where its
    touchpoint id is.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return [(reader.line_num - _line_breaks(row), row) for row in reader]


def _line_breaks(row: dict[Any, Any]) -> int:
    """The line breaks inside the row's cells, extra cells (under None) included, as `io` splits lines."""
    cells = [cell for value in row.values() for cell in (value if isinstance(value, list) else [value])]
    return sum(len(LINE_BREAK.findall(cell)) for cell in cells if isinstance(cell, str))


def _defined_once(
    kind: str, rows: list[tuple[int, dict[str, str]]], path: Path, problems: list[str]
) -> list[dict[str, str]]:
    """Each stage (or moment) of the CSV rows, as the first row giving its id defines it; a later row defining
    that id otherwise is added to `problems`, naming both lines.

    Every row repeats its stage's and moment's columns. Keeping the last row
    for each id, a row copied and half edited silently relabelled every other
    touchpoint of that id (Home page views became cart activity), where the
    JSON export refuses an id given twice.
    """
    first: dict[str, tuple[int, dict[str, str]]] = {}
    for line, row in rows:
        definition = {"id": row[f"{kind}_id"], kind: row[kind], "label": row[f"{kind}_label"]}
        first_line, kept = first.setdefault(definition["id"], (line, definition))
        if kept != definition:
            problems.append(
                f"{path}:{line}: {kind}_id: {definition['id']!r} is {kind} {definition[kind]!r} labelled "
                f"{definition['label']!r} here but {kept[kind]!r} labelled {kept['label']!r} at line {first_line}; "
                f"give each {kind} its own id, or make the rows agree"
            )
    return [definition for _, definition in first.values()]


class JourneyMapConfig(GenericHmacConfig):
    map_file: str = Field(description="Journey map export (.json or .csv), relative to the mappings folder.")
    touchpoint_field: str = Field("touchpoint_id", description="Field of each event naming the map touchpoint.")


class JourneyMapSource(GenericHmacSource):
    slug = "journey_map"
    title = "Journey map: events labelled with the stage and micro-moment of a map touchpoint"
    docs_url = ""
    default_mapping = "journey_map.yaml"
    Config = JourneyMapConfig

    def __init__(self, source_id: str, config: BaseModel, folder: Path = PROJECT_MAPPINGS) -> None:
        super().__init__(source_id, config, folder)
        assert isinstance(config, JourneyMapConfig)
        self._path = folder / config.map_file
        self._unchanged = Unchanged(self._path)  # before reading: a save during the read is loaded at the next request
        self.journey_map = load_journey_map(self._path)
        self._labels = self.journey_map.labels()

    def parse(self, request: InboundRequest) -> ParseResult:
        self._reload_if_changed()
        return self.parse_events(request, self._label)

    def _reload_if_changed(self) -> None:
        """Marketers re-export the map while the hub runs: a saved map applies to the next request.

        A broken export is refused with every problem logged, and the last good
        map stays in force, as for mapping files: whatever the load meets,
        since a failure here would fail the request that found the edit. The
        refused file is tried again once it changes; a missing or unreadable
        one is such a change too (its stamp is None), logged once, not at every
        request while an export is being replaced. Asking costs one `stat` per
        request (`Unchanged`), where reading and hashing the whole map did.
        """
        if self._unchanged():
            return
        self._unchanged = Unchanged(self._path)
        try:
            journey_map = load_journey_map(self._path)
        except Exception as exc:  # whatever a reload meets must not reach the webhook request
            log.error("journey map edit refused; the last good map stays in force", file=str(self._path),
                      problems=problems_of(exc))
            return
        self.journey_map, self._labels = journey_map, journey_map.labels()
        log.info("journey map reloaded", file=str(self._path), touchpoints=len(self._labels))

    def _label(self, index: int, event: dict[str, Any]) -> dict[str, Any] | ItemProblem:
        """The event with its map touchpoint's labels under `journey`, or why it has none."""
        config = self.config
        assert isinstance(config, JourneyMapConfig)
        touchpoint_id = event.get(config.touchpoint_field)
        labels = self._labels.get(str(touchpoint_id)) if touchpoint_id is not None else None
        if labels is None:
            return ItemProblem(index, config.touchpoint_field, f"{touchpoint_id!r} is not a touchpoint of journey map {config.map_file}")
        return {**event, "journey": labels}
