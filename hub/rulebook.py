"""The rules in force, reloaded when `triggers.yaml` changes on disk.

Ops edit rules while the hub runs. An edit that does not validate (or names a
template that does not parse) is refused with every problem logged, and the
last good rules stay in force, so a typo never switches triggers off. So is
an edit the checks fail on in a way they did not expect: a bug of the hub's
must not fail the events in hand either.

The rules and what is derived from them (the index, the ids turned off) are
one `InForce`, swapped by one assignment: a reader that takes it once per
event (or set of timers) sees one edit's rules throughout, never the new
rules with the old index, without a lock on the pipeline's path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from hub.config_files import Unchanged, load_model
from hub.errors import ConfigError
from hub.rules import RuleFile, RuleSpec
from hub.rule_events import RuleIndex

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class InForce:
    """One edit's rules in force, by priority, with what is derived from them once, not per event. Never changed
    once built: a reload builds another."""

    rules: list[RuleSpec]
    by_id: Mapping[str, RuleSpec]
    index: RuleIndex
    disabled: frozenset[str]  # ids of the rules the file turns off (`enabled: false`)

    @classmethod
    def of(cls, rules: list[RuleSpec], disabled: frozenset[str]) -> InForce:
        return cls(rules, {rule.id: rule for rule in rules}, RuleIndex(rules), disabled)

    def not_in_force(self, rule_id: str) -> str:
        """Why a rule id names no rule in force, in the words a timer or decision keeps."""
        return "rule disabled (enabled: false)" if rule_id in self.disabled else "rule removed from triggers.yaml"


class RuleBook:
    def __init__(self, path: Path, check: Callable[[list[RuleSpec]], None] = lambda rules: None, recheck_seconds: float = 1.0) -> None:
        """Load now (ConfigError if the file is bad); `check` may refuse rules, e.g. for missing templates."""
        self.path = path
        self._check = check
        self._recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._unchanged = Unchanged(self.path)  # before the read: a save during it is seen at the next look
        loaded = self._load()
        self._check(loaded[0])
        self._in_force = InForce.of(*loaded)
        self._unchecked: tuple[list[RuleSpec], frozenset[str]] | None = None  # the file's, while `check` refuses it
        self._checked_at = time.monotonic()
        self.last_error: list[str] = []

    def in_force(self) -> InForce:
        """The rules in force, to take once per event or set of timers: two calls may straddle a reload, so a
        reader that asks several questions asks them of one `InForce`. Looks at the file at most every
        `recheck_seconds`."""
        if time.monotonic() - self._checked_at >= self._recheck_seconds:
            self.reload_if_changed()
        return self._in_force

    def current(self) -> list[RuleSpec]:
        """The rules in force, by priority."""
        return self.in_force().rules

    def for_event(self, event: str) -> tuple[RuleSpec, ...]:
        """The rules in force that an event of this name can make hold, arm or cancel, by priority."""
        return self.in_force().index.for_event(event)

    def get(self, rule_id: str) -> RuleSpec | None:
        return self.in_force().by_id.get(rule_id)

    def reload_if_changed(self) -> bool:
        """Reload if the file changed since the last look, or `check` refused its last edit; True when new rules
        took effect.

        An edit `check` refused is checked again at each look, not only once the file changes: what refused it lies
        outside the file (a template the rules name, saved after them, as a deploy writing triggers.yaml before
        templates/ does). One the file itself refuses (its YAML, its schema) waits for the next save: it is not
        parsed again meanwhile. Looks come every `recheck_seconds` at most (and when /api/rules is asked), and a
        refusal is logged only when its problems differ from the last one's, or the file was saved again."""
        with self._lock:
            self._checked_at = time.monotonic()
            saved = not self._unchanged()
            if saved:
                self._unchanged, self._unchecked = Unchanged(self.path), None
            elif self._unchecked is None:
                return False
            try:
                self._unchecked = self._unchecked or self._load()
                self._check(self._unchecked[0])
            except Exception as exc:  # any: a bug in a check must not raise into the pipeline's event in hand
                refusal = self._refusal(exc)
                if saved or refusal != self.last_error:
                    log.error("trigger rules edit refused; the last good rules stay in force", problems=refusal,
                              exc_info=not isinstance(exc, ConfigError))
                self.last_error = refusal
                return False
            rules, disabled = self._unchecked
            self._unchecked = None
            self._in_force = InForce.of(rules, disabled)  # one assignment: readers see the old edit or this one
            self.last_error = []
            log.info("trigger rules reloaded", rules=[rule.version for rule in rules])
            return True

    def looked_at_now(self) -> tuple[list[RuleSpec], list[str]]:
        """The rules in force and why the last edit was refused, after a look at the file that waits for any
        reload in progress: `current()` skips a look within `recheck_seconds` of another thread's, so while that
        thread is still checking an edit it would answer with the old refusal (none) for the new file."""
        self.reload_if_changed()
        with self._lock:
            return self._in_force.rules, self.last_error

    def _refusal(self, exc: Exception) -> list[str]:
        """Why an edit was refused, as `/api/rules` shows it: the file's problems, or an error the checks did not
        expect (the hub's bug, not the file's), named so the edit is still refused rather than raised out of
        `current()` into whichever event was in hand."""
        if isinstance(exc, ConfigError):
            return exc.problems
        return [f"{self.path}: the hub could not check this edit ({type(exc).__name__}: {exc}); the last good rules "
                "stay in force: please report this, with the edit, as a bug of the hub"]

    def _load(self) -> tuple[list[RuleSpec], frozenset[str]]:
        """The rules the file turns on, and the ids of those it turns off, not yet checked (`check`)."""
        every = load_model(self.path, RuleFile).rules
        return [rule for rule in every if rule.enabled], frozenset(rule.id for rule in every if not rule.enabled)
