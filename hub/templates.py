"""Message templates, rendered in Jinja2's sandbox.

Ops write templates; a sandboxed environment means a template can read the
values it is given but never reach Python internals. Undefined names fail
loudly at planning time instead of sending "Hi ," to a customer.

A trait sent as null (Segment identify calls often carry `company: null`)
is no value either: it renders as nothing, and `default(...)` replaces it as
it replaces a missing one. Jinja's own would print "None", writing "Hi
None," to a customer and "None" into a CRM's Company.

A template file that is not UTF-8 is a template error like any other
(`NotUTF8TemplateError`): Jinja lets it out as UnicodeDecodeError, which
would fail the whole event at planning time and escape the rule book's
check on a hot reload.

An edit that does not parse is refused as the rule book refuses one (a typo
never switches messages off): the last good template stays in force, the
refusal is logged once and shown by `refused_edits`. Only a template that
never parsed in this process skips the messages that name it.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog
from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment

from hub.config_files import not_utf8
from hub.errors import ConfigError
from hub.rules import RuleSpec

log = structlog.get_logger(__name__)


class NotUTF8TemplateError(TemplateError):
    """A template file saved in another encoding; its message is ``path:line: not UTF-8 ...``."""


def template_names(rules: list[RuleSpec]) -> set[str]:
    """Every template the rules may render, fallbacks included."""
    names = set()
    for rule in rules:
        for action in rule.respond:
            names.add(action.template)
            names.update(alternative.template for alternative in action.fallback)
    return names


def _nothing_for_none(value: Any) -> Any:
    return "" if value is None else value


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja's `default`, with a null value counted as missing."""
    if value is None or isinstance(value, Undefined) or (boolean and not value):
        return default_value
    return value


class TemplateRenderer:
    def __init__(self, folder: Path, recheck_seconds: float = 1.0) -> None:
        """Edited template files are picked up within `recheck_seconds` (HUB_RULES_RELOAD_SECONDS), like rules."""
        self.folder = folder
        self._environment = SandboxedEnvironment(
            loader=FileSystemLoader(folder), undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
            finalize=_nothing_for_none,
        )
        self._environment.filters["default"] = self._environment.filters["d"] = _default
        self._recheck_seconds = recheck_seconds
        self._loaded: dict[str, tuple[float, Template]] = {}  # name -> (when Jinja last looked at the file, template)
        self._refused: dict[str, str] = {}  # name -> why its file on disk is not in force, while the last good one is
        # CRM field values are inline templates, the same few strings on every decision: compiled once each.
        self._inline = lru_cache(maxsize=512)(self._environment.from_string)

    def render(self, name: str, context: dict[str, Any]) -> dict[str, str]:
        """The whole template as ``body``, plus each ``{% block %}`` it defines under the block's name.

        One file per message keeps its parts together: an email template has
        ``subject``, ``text`` and ``html`` blocks, a push template ``title``
        and ``body``; an SMS template is plain text.
        """
        template = self._template(name)
        rendered = {"body": template.render(**context).strip()}
        if template.blocks:
            block_context = template.new_context(dict(context))
            for block, render_block in template.blocks.items():
                rendered[block] = "".join(render_block(block_context)).strip()
        return rendered

    def render_value(self, value: Any, context: dict[str, Any]) -> Any:
        """A CRM field value: strings are inline templates (`"{{ touchpoint.moment }}"`), others pass as they are."""
        if not isinstance(value, str):
            return value
        return self._inline(value).render(**context)

    def _template(self, name: str) -> Template:
        """The template, asking Jinja again only once `recheck_seconds` have passed since it last did.

        Jinja stats the file on every `get_template` to see whether it changed:
        one `stat` per planned message, 5% of what the timer engine spent
        firing a timer (bench/triggers.py's timer capacity, under py-spy).
        """
        now = time.monotonic()
        loaded = self._loaded.get(name)
        if loaded is None or now - loaded[0] >= self._recheck_seconds:
            loaded = self._loaded[name] = (now, self._reloaded(name, None if loaded is None else loaded[1]))
        return loaded[1]

    def _reloaded(self, name: str, in_force: Template | None) -> Template:
        """The file as it is now or, when an edit no longer parses, the template `in_force` (the TemplateError if
        there is none): a typo saved while the hub runs must not switch a rule's messages off."""
        try:
            template = self._compiled(name)
        except TemplateError as exc:
            if in_force is None:
                raise
            self._refuse(name, exc)
            return in_force
        self._refused.pop(name, None)
        return template

    def _refuse(self, name: str, exc: TemplateError) -> None:
        """Log a refused edit once (not on each re-check of the same broken file), naming the file, line and reason."""
        problem = self._problem(name, exc)
        if self._refused.get(name) != problem:
            self._refused[name] = problem
            log.error("template edit refused; the last good template stays in force", problem=problem)

    def refused_edits(self, names: Collection[str]) -> list[str]:
        """Why the files of these templates (those the rules in force name) are not in force, one line each; empty
        when every edit took. Looking re-checks them, so an edit made since the last message shows too."""
        for name in names:
            if name in self._loaded:
                self._template(name)
        refused = dict(self._refused)  # a snapshot: workers re-check templates meanwhile
        return sorted(problem for name, problem in refused.items() if name in names)

    def _compiled(self, name: str) -> Template:
        """Jinja's template, with a file that is not UTF-8 a TemplateError, so routing skips the action saying why."""
        try:
            return self._environment.get_template(name)
        except UnicodeDecodeError as exc:
            raise NotUTF8TemplateError(not_utf8(self.folder / name, exc)) from None

    def check(self, names: list[str]) -> None:
        """Fail at start-up, not at send time, if a rule names a template that does not parse."""
        problems = []
        for name in names:
            try:  # in force from here on: the last good one, also where no message has named it yet
                self._loaded[name] = (time.monotonic(), self._reloaded(name, None))
            except TemplateError as exc:
                problems.append(self._problem(name, exc))
        if problems:
            raise ConfigError(problems)

    def _problem(self, name: str, exc: TemplateError) -> str:
        """``path: Error: reason at line N`` (``path:line: not UTF-8 ...``), what ops fix in an editor."""
        if isinstance(exc, NotUTF8TemplateError):
            return str(exc)
        path = getattr(exc, "filename", None) or self.folder / name  # a syntax error names the file it is in
        line = getattr(exc, "lineno", None)
        return f"{path}: {exc.__class__.__name__}: {exc}" + (f" at line {line}" if line else "")
