"""Message templates, rendered in Jinja2's sandbox.

Ops write templates; a sandboxed environment means a template can read the
values it is given but never reach Python internals. Undefined names fail
loudly at planning time instead of sending "Hi ," to a customer.

A trait sent as null renders as nothing, never as "None"
(hub/template_values.py).

A template's top level runs before its blocks render (`{% set %}`s, `{% from
... import %}`s, the layouts it `{% extends %}`), so each block sees what it
would see rendered in place, and a layout's blocks are parts of the message
as the template's own are. Only a template without blocks is rendered as a
whole, as its `body`: in one with blocks that would be the subject again,
then every other part run together.

A template that fails as it renders (a division by a zero count, text
added to a number) is a template error of its message too, naming the file
and line (`TemplateRuntimeError`): raised as itself it failed the whole
event, every other message of its decision with it, until the event was
quarantined.

An email's `html` block is rendered with autoescape on, and only it: a
first name sent as `<a href=...>` by any SDK would otherwise be a link in
the brand's own email. The subject, the text part, an SMS and a push are
plain text, where escaping would show `&amp;` to the reader. A value meant
as markup is marked `| safe`.

A template file that is not UTF-8 is a template error like any other
(`NotUTF8TemplateError`): Jinja lets it out as UnicodeDecodeError, which
would fail the whole event at planning time and escape the rule book's
check on a hot reload.

An edit that does not parse is refused as the rule book refuses one (a typo
never switches messages off): the last good version of the file stays in
force, the refusal is logged once and shown by `refused_edits`. This holds
per file, for the files a template extends, includes or imports too: Jinja
loads those as it renders. Only a file that never parsed in this process
skips the messages built on it.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from jinja2 import (
    BaseLoader, Environment, FileSystemLoader, StrictUndefined, Template, TemplateError, TemplateRuntimeError,
    TemplateSyntaxError, meta,
)
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from hub.config_files import Unchanged, not_utf8
from hub.errors import ConfigError
from hub.pii import mask_text
from hub.template_values import null_aware

if TYPE_CHECKING:  # hub.rules checks its inline templates with this module
    from hub.rules import RuleSpec

log = structlog.get_logger(__name__)


class NotUTF8TemplateError(TemplateError):
    """A template file saved in another encoding; its message is ``path:line: not UTF-8 ...``."""


def template_names(rules: Sequence[RuleSpec]) -> set[str]:
    """Every template the rules may render, fallbacks included."""
    return set(template_places(rules))


def template_places(rules: Sequence[RuleSpec]) -> dict[str, tuple[str | int, ...]]:
    """Each template the rules may render -> (rule id, keys...) of the first place naming it, for `RuleLines.where`."""
    named: dict[str, tuple[str | int, ...]] = {}
    for rule in rules:
        for number, action in enumerate(rule.respond):
            for keys, _, template in action.choices():
                named.setdefault(template, (rule.id, "respond", number, *keys, "template"))
    return named


HTML_BLOCK = "html"  # the one part read as HTML (see the module doc)


def _sandbox(loader: BaseLoader | None = None, *, autoescape: bool = False) -> SandboxedEnvironment:
    """The Jinja environment templates are compiled and rendered in (see the module doc), so an inline value
    checked when the rules load compiles as it will when it renders: same filters, same syntax. The escaping
    one differs only in `autoescape`, for the `html` block."""
    return null_aware(SandboxedEnvironment(
        loader=loader, undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=False,
    ))


_CHECKING = _sandbox()  # no loader: compiling an inline value reads no file (an `include` is looked up as it renders)


def compiles(value: Any) -> Any:
    """A rule's inline template value (a CRM field) as it is; ValueError saying why Jinja cannot compile it.

    Found only as it rendered, a typo skipped every CRM update of its rule; the
    rules loader calls this, so the file is refused at start-up, on hot reload
    and by `touchhub mappings check`, at the value's key.
    """
    if isinstance(value, str):
        try:
            _CHECKING.from_string(value)
        except TemplateSyntaxError as exc:
            raise ValueError(
                f"does not compile as a template: {exc.message} (line {exc.lineno} of the value); fix the "
                "{{ }} / {% %} syntax, or the filter's name"
            ) from None
    return value


_Source = tuple[str, str, Callable[[], bool]]  # what a Jinja loader gives: text, file name, "is it unchanged?"


class _LastGoodLoader(FileSystemLoader):
    """The template files as saved, except one whose edit does not compile: its last good source stays in force.

    Kept per file, not per template a rule names: Jinja loads the file a template extends, includes or imports
    when it renders, so a typo saved there would skip every message built on it. A file that never compiled in
    this process is the TemplateError it raises (routing skips the message saying why; the check refuses it).
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.folder = folder
        self._good: dict[str, tuple[str, frozenset[str]]] = {}  # name -> (its last source that compiled, files it loads)
        self.refused: dict[str, str] = {}  # name -> why its file on disk is not in force, while the last good one is

    def get_source(self, environment: Environment, template: str) -> _Source:
        unchanged = Unchanged(self.folder / template)  # before reading: a save while Jinja reads is looked at again
        try:
            source, filename, _ = self._read(environment, template)
            uses = _compiled_uses(environment, source, template, filename)
        except TemplateError as exc:
            if template not in self._good:
                raise
            return self._last_good(template, exc, unchanged)
        self._good[template] = (source, uses)
        self.refused.pop(template, None)
        return source, filename, unchanged

    def uses(self, name: str) -> frozenset[str]:
        """The files the source of `name` in force extends, includes or imports by name (none known yet: none)."""
        return self._good[name][1] if name in self._good else frozenset()

    def problem(self, name: str, exc: TemplateError) -> str:
        """``path: Error: reason at line N`` (``path:line: not UTF-8 ...``), what ops fix in an editor."""
        if isinstance(exc, NotUTF8TemplateError):
            return str(exc)
        path = getattr(exc, "filename", None) or self.folder / name  # a syntax error names the file it is in
        line = getattr(exc, "lineno", None)
        return f"{path}: {exc.__class__.__name__}: {exc}" + (f" at line {line}" if line else "")

    def _read(self, environment: Environment, name: str) -> _Source:
        """FileSystemLoader's, with a file that is not UTF-8 a TemplateError: Jinja lets it out as UnicodeDecodeError,
        which would fail the whole event at planning time."""
        try:
            return super().get_source(environment, name)
        except UnicodeDecodeError as exc:
            raise NotUTF8TemplateError(not_utf8(self.folder / name, exc)) from None

    def _last_good(self, name: str, exc: TemplateError, unchanged: Unchanged) -> _Source:
        """The last good source of `name`, in force until its file is saved again (Jinja then asks anew)."""
        self._refuse(name, exc)
        return self._good[name][0], str(unchanged.path), unchanged

    def _refuse(self, name: str, exc: TemplateError) -> None:
        """Log a refused edit once (not on each re-check of the same broken file), naming the file, line and reason."""
        problem = self.problem(name, exc)
        if self.refused.get(name) != problem:
            self.refused[name] = problem
            log.error("template edit refused; the last good template stays in force", problem=problem)


def _compiled_uses(environment: Environment, source: str, name: str, filename: str) -> frozenset[str]:
    """The files `source` extends, includes or imports by name, raising what compiling it raises (a syntax error,
    an unknown filter), so an edit that would fail every render is refused before it is in force."""
    tree = environment.parse(source, name, filename)
    uses = frozenset(used for used in meta.find_referenced_templates(tree) if used is not None)
    environment.compile(tree, name, filename)
    return uses


def _run(template: Template, context: dict[str, Any]) -> tuple[str, Context]:
    """The template's output as a whole, and the context its top level ran in: its `{% set %}`s and imports done,
    its blocks and those of the layouts it extends in ``blocks`` (the template's own first), to render in it.

    The template's own blocks print nothing while the top level runs: `_blocks` renders each once after, where
    printing them here too rendered every part twice (half as fast again for an email). The output as a whole is
    then only what lies between them, and it is the ``body`` only of a template without blocks."""
    run = template.new_context(context)
    own = list(run.blocks)
    for name in own:
        run.blocks[name].insert(0, _silent)
    try:
        whole = "".join(template.root_render_func(run))
    except Exception:
        template.environment.handle_exception()  # raises, with the template's own lines in the traceback
    for name in own:
        del run.blocks[name][0]
    return whole, run


def _silent(context: Context) -> Iterator[str]:
    return iter(())


def _blocks(run: Context, names: Collection[str]) -> dict[str, str]:
    """These blocks, each rendered in `run` (`_run`'s) as the template that defines it last has it."""
    rendered: dict[str, str] = {}
    for block in names:
        try:
            rendered[block] = "".join(run.blocks[block][0](run)).strip()
        except Exception:  # a block a layout does not print runs only here: Jinja's lines, not ours
            run.environment.handle_exception()
    return rendered


@contextmanager
def _failures_as_template_errors(inline: str | None = None) -> Iterator[None]:
    """Any other error a template raises as it renders, as a TemplateRuntimeError saying where: the file and line
    (Jinja's traceback has the template's own frames), or the inline value.

    Its text is masked (`mask_text`), a Jinja error's too: a failure quotes the value it failed on (`could not
    convert string to float: 'amy@example.com'`, a phone used as a key), and routing records it in the decision
    log, shown by the API and `touchhub decisions explain`. Not chained to the error it masks, which quotes it
    whole."""
    try:
        yield
    except TemplateError as exc:
        masked = mask_text(str(exc))
        if masked == str(exc):
            raise
        raise TemplateRuntimeError(masked) from None
    except Exception as exc:
        where = f"`{inline}`" if inline is not None else _template_line(exc)
        raise TemplateRuntimeError(mask_text(f"{where}: {type(exc).__name__}: {exc}")) from None


def _template_line(exc: Exception) -> str:
    """`file:line` of the template frame nearest the error (in an included or extended file, that file's)."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if not frame.filename.endswith(".py")]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "while rendering"


class TemplateRenderer:
    def __init__(self, folder: Path, recheck_seconds: float = 1.0) -> None:
        """Edited template files are picked up within `recheck_seconds` (HUB_RULES_RELOAD_SECONDS), like rules."""
        self.folder = folder
        self._files = _LastGoodLoader(folder)
        self._environment = _sandbox(self._files)
        self._escaping = _sandbox(self._files, autoescape=True)  # the same files, compiled again for `html` blocks
        self._recheck_seconds = recheck_seconds
        # (name, escaped) -> (when Jinja last looked at the file, template)
        self._loaded: dict[tuple[str, bool], tuple[float, Template]] = {}
        # CRM field values are inline templates, the same few strings on every decision: compiled once each.
        self._inline = lru_cache(maxsize=512)(self._environment.from_string)

    def render(self, name: str, context: dict[str, Any]) -> dict[str, str]:
        """Each ``{% block %}`` of the template, those of the layouts it extends too, under the block's name; a
        template without blocks as a whole, as ``body``.

        One file per message keeps its parts together: an email template has
        ``subject``, ``text`` and ``html`` blocks, a push template ``title``
        and ``body``; an SMS template is plain text. `context` is
        `template_context`'s.
        """
        template = self._template(name)
        with _failures_as_template_errors():
            whole, run = _run(template, context)
            if not run.blocks:
                return {"body": whole.strip()}
            rendered = _blocks(run, run.blocks.keys() - {HTML_BLOCK})
            if HTML_BLOCK in run.blocks:
                rendered.update(_blocks(_run(self._template(name, escaped=True), context)[1], {HTML_BLOCK}))
        return rendered

    def render_value(self, value: Any, context: dict[str, Any]) -> Any:
        """A CRM field value: strings are inline templates (`"{{ touchpoint.moment }}"`), others pass as they are."""
        if not isinstance(value, str):
            return value
        with _failures_as_template_errors(value):
            return self._inline(value).render(**context)

    def _template(self, name: str, *, escaped: bool = False) -> Template:
        """The template, asking Jinja again only once `recheck_seconds` have passed since it last did.

        Jinja stats the file on every `get_template` to see whether it changed:
        one `stat` per planned message, 5% of what the timer engine spent
        firing a timer (bench/triggers.py's timer capacity, under py-spy).
        """
        now = time.monotonic()
        loaded = self._loaded.get((name, escaped))
        if loaded is None or now - loaded[0] >= self._recheck_seconds:
            environment = self._escaping if escaped else self._environment
            loaded = self._loaded[name, escaped] = (now, environment.get_template(name))
        return loaded[1]

    def refused_edits(self, names: Collection[str]) -> list[str]:
        """Why files of these templates (those the rules in force name) or files they load are not in force, one
        line each; empty when every edit took. Looking re-checks them, so an edit made since the last message shows
        too."""
        files = {name for name, _, _ in self._look(names)}
        refused = dict(self._files.refused)  # a snapshot: workers re-check templates meanwhile
        return sorted(problem for name, problem in refused.items() if name in files)

    def check(self, names: Iterable[str], where: Callable[[str], str] | None = None) -> None:
        """Fail at start-up, not at send time, if a rule's template or a file it loads does not parse; each one
        that does is in force from here on as the last good one, also where no message has named it yet.

        Args:
            where: `path:line` where the rules name a template of `names`; each problem is then put there, as
                ``path:line: template: problem``, at the template that is or loads the file, since ops reach the
                file from the rule.
        """
        found = [(named, self._files.problem(name, exc)) for name, named, exc in self._look(names) if exc is not None]
        problems = [problem if where is None else f"{where(named)}: template: {problem}" for named, problem in found]
        if problems:
            raise ConfigError(problems)

    def _look(self, names: Iterable[str]) -> Iterator[tuple[str, str, TemplateError | None]]:
        """Each of these templates and of the files they extend, include or import by name, each file once, as it
        is on disk now: with the template of `names` that first loads it, and the TemplateError of one that never
        parsed in this process."""
        files = {name: name for name in names}  # file -> the template of `names` that first loads it
        walk = list(files)
        for name in walk:  # grows as it is walked: the files each one loads are looked at in turn
            try:
                self._environment.get_template(name)
            except TemplateError as exc:
                yield name, files[name], exc
            else:
                yield name, files[name], None
            for used in self._files.uses(name):
                if used not in files:
                    files[used] = files[name]
                    walk.append(used)
