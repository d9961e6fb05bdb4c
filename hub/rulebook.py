"""The rules in force, reloaded when `triggers.yaml` changes on disk.

Ops edit rules while the hub runs. An edit that does not validate (or names a
template that does not parse) is refused with every problem logged, and the
last good rules stay in force, so a typo never switches triggers off. So is
an edit the checks fail on in a way they did not expect: a bug of the hub's
must not fail the events in hand either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import structlog

from hub.config_files import load_model
from hub.errors import ConfigError
from hub.rules import RuleFile, RuleSpec
from hub.rule_events import Rejudged, RuleIndex

log = structlog.get_logger(__name__)


class RuleBook:
    def __init__(self, path: Path, check: Callable[[list[RuleSpec]], None] = lambda rules: None, recheck_seconds: float = 1.0) -> None:
        """Load now (ConfigError if the file is bad); `check` may refuse rules, e.g. for missing templates."""
        self.path = path
        self._check = check
        self._recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._take(*self._load())
        self._checked_at = time.monotonic()
        self.last_error: list[str] = []

    def current(self) -> list[RuleSpec]:
        """The rules in force, by priority; looks at the file at most every `recheck_seconds`."""
        if time.monotonic() - self._checked_at >= self._recheck_seconds:
            self.reload_if_changed()
        return self._rules

    def for_event(self, event: str) -> tuple[RuleSpec, ...]:
        """The rules in force that an event of this name can make hold, arm or cancel, by priority."""
        self.current()
        return self._index.for_event(event)

    def rejudged_by(self, event: str, stage: str | None, moment: str | None) -> tuple[Rejudged, ...]:
        """The rules in force a late event of this name (stage, moment) may make hold at events stored before it."""
        self.current()
        return self._index.rejudged_by(event, stage, moment)

    def longest_evidence_window(self) -> timedelta | None:
        """How far back any rule's `recent` looks for evidence (`rejudged_by`), if any does."""
        self.current()
        return self._index.longest_evidence_window()

    def get(self, rule_id: str) -> RuleSpec | None:
        self.current()
        return self._by_id.get(rule_id)

    def reload_if_changed(self) -> bool:
        """Reload if the file changed since the last look; True when new rules took effect."""
        with self._lock:
            self._checked_at = time.monotonic()
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                rules, disabled = self._load()
            except Exception as exc:  # any: a bug in a check must not raise into the pipeline's event in hand
                self.last_error = self._refusal(exc)
                log.error("trigger rules edit refused; the last good rules stay in force", problems=self.last_error,
                          exc_info=not isinstance(exc, ConfigError))
                return False
            self._take(rules, disabled)
            self.last_error = []
            log.info("trigger rules reloaded", rules=[rule.version for rule in rules])
            return True

    def looked_at_now(self) -> tuple[list[RuleSpec], list[str]]:
        """The rules in force and why the last edit was refused, after a look at the file that waits for any
        reload in progress: `current()` skips a look within `recheck_seconds` of another thread's, so while that
        thread is still checking an edit it would answer with the old refusal (none) for the new file."""
        self.reload_if_changed()
        with self._lock:
            return self._rules, self.last_error

    def not_in_force(self, rule_id: str) -> str:
        """Why a rule id names no rule in force, in the words a timer or decision keeps."""
        self.current()
        return "rule disabled (enabled: false)" if rule_id in self._disabled else "rule removed from triggers.yaml"

    def _refusal(self, exc: Exception) -> list[str]:
        """Why an edit was refused, as `/api/rules` shows it: the file's problems, or an error the checks did not
        expect (the hub's bug, not the file's), named so the edit is still refused rather than raised out of
        `current()` into whichever event was in hand."""
        if isinstance(exc, ConfigError):
            return exc.problems
        return [f"{self.path}: the hub could not check this edit ({type(exc).__name__}: {exc}); the last good rules "
                "stay in force: please report this, with the edit, as a bug of the hub"]

    def _take(self, rules: list[RuleSpec], disabled: frozenset[str]) -> None:
        """Put rules in force with what is derived from them once, not per event."""
        self._rules, self._by_id, self._index = rules, {rule.id: rule for rule in rules}, RuleIndex(rules)
        self._disabled = disabled

    def _load(self) -> tuple[list[RuleSpec], frozenset[str]]:
        """The rules in force, and the ids of those the file turns off."""
        every = load_model(self.path, RuleFile).rules
        rules = [rule for rule in every if rule.enabled]
        self._check(rules)
        return rules, frozenset(rule.id for rule in every if not rule.enabled)

    def _file_stamp(self) -> tuple[int, int] | None:
        """None when the file cannot be looked at (gone, a file where its folder should be, no permission): loading
        it then says why as a ConfigError, instead of a traceback from here."""
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)
