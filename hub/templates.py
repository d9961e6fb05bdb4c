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
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment

from hub.config_files import not_utf8
from hub.errors import ConfigError
from hub.rules import RuleSpec


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
            loaded = self._loaded[name] = (now, self._compiled(name))
        return loaded[1]

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
            try:
                self._compiled(name)
            except NotUTF8TemplateError as exc:
                problems.append(str(exc))
            except TemplateError as exc:
                problems.append(f"{self.folder / name}: {exc.__class__.__name__}: {exc}")
        if problems:
            raise ConfigError(problems)
