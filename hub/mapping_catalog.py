"""The active mapping of every source, reloaded when ops save a file.

A saved mapping applies to the next events without a restart. A broken save
is refused: the last good version stays active and the log says why, so a
typo in production degrades nothing. That holds for a failure of any kind
(a file the hub may not read, YAML nested past Python's recursion limit),
not only for the problems the loader names. Files are checked at most every
`check_seconds` (each read and hashed: `config_files.content_stamp`), which keeps the per-event
cost nil.

A save goes through the same checks at reload as at start-up (the catalog's
`load`, which the hub gives identifier types to check against identity.yaml): a
save taken live that a restart then refuses would leave the hub unable to start
on its own files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from hub.config_files import content_stamp, problems_of
from hub.errors import ConfigError
from hub.mapping import Mapping, load_mapping

log = structlog.get_logger(__name__)

# Loads a mapping file and checks it against the rest of the hub; ConfigError refuses it.
MappingLoad = Callable[[Path], Mapping]


@dataclass
class _Loaded:
    mapping: Mapping
    stamp: tuple[int, bytes] | None  # `content_stamp` of the file this version came from, or of the last refused save
    refused: list[str] = field(default_factory=list)  # why the file as saved is not in force; empty when it is


class MappingCatalog(MappingABC[str, Mapping]):
    """Source id -> active Mapping; behaves as a read-only dict for the pipeline."""

    def __init__(
        self, folder: Path, files: dict[str, str], check_seconds: float, load: MappingLoad = load_mapping
    ) -> None:
        self.folder = folder
        self.files = dict(files)
        self.check_seconds = check_seconds
        self.load = load  # start-up and reload take a file the same way
        self._lock = threading.Lock()
        self._next_check = time.monotonic() + check_seconds
        self._loaded: dict[str, _Loaded] = {}
        problems: list[str] = []
        for name in sorted(set(files.values())):
            path = folder / name
            try:
                self._loaded[name] = _Loaded(self.load(path), content_stamp(path))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)

    def __getitem__(self, source_id: str) -> Mapping:
        self.refresh_if_due()
        return self._loaded[self.files[source_id]].mapping

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def refresh_if_due(self) -> None:
        if time.monotonic() >= self._next_check:
            self.refresh()

    def refresh(self) -> list[str]:
        """Reload changed files; returns the names of the files whose new version was refused."""
        refused = []
        with self._lock:
            self._next_check = time.monotonic() + self.check_seconds
            for name, loaded in self._loaded.items():
                path = self.folder / name
                stamp = content_stamp(path)
                if stamp == loaded.stamp:
                    continue
                loaded.stamp = stamp
                try:
                    mapping = self.load(path)
                except Exception as exc:  # whatever a reload meets must not reach the pipeline's workers
                    refused.append(name)
                    loaded.refused = problems_of(exc)
                    log.warning("mapping change refused; the last good version stays active",
                                file=name, active_version=loaded.mapping.version, problems=loaded.refused)
                    continue
                if mapping.version != loaded.mapping.version:
                    log.info("mapping reloaded", file=name, version=mapping.version, previous=loaded.mapping.version)
                loaded.mapping, loaded.refused = mapping, []
        return refused

    def refused_now(self, source_id: str) -> list[str]:
        """Why the source's mapping file as saved is not in force (empty when it is), after a look at the files now,
        whatever `check_seconds` says. A source replay starts here: with the catalog as last looked at, a fix saved
        just before was replayed with the old mapping; and `refresh` names a refused save only on the look that
        met it, so an earlier look's refusal is kept on the file's entry."""
        self.refresh()
        with self._lock:
            return list(self._loaded[self.files[source_id]].refused)

