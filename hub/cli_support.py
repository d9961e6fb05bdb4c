"""What every `touchhub` command shares: the consoles, settings from the environment, config problems as exit 2.

Rich reads `[bold]` as markup and `:100:` as an emoji code in any string it
prints. Our own messages use markup on purpose; the text inside them often
comes from users and their files (paths, event names, ids, error messages),
where `events.jsonl:100:` must print as it is and a stray `[/]` must not make
Rich raise. So the consoles never read emoji codes, and user text reaches them
through `styled` (our markup around it) or `plain` (the text alone).

Both also show control characters as escapes (`\\x1b`): user text comes from
anyone holding a client-side write key, and an ESC in a trait would otherwise
reach the ops person's terminal as a command (clear the screen, write the
clipboard with OSC 52). Rich drops BEL and CR, but passes ESC on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from string import Formatter
from time import monotonic
from typing import TYPE_CHECKING, NoReturn, get_args

import typer
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import OperationalError
from typer.core import TyperGroup

from hub.config_files import not_utf8
from hub.errors import ConfigError, StoreBusyError
from hub.logs import configure_logging
from hub.utf8 import has_utf8_form
from hub.secret_urls import setting_shown
from hub.settings import HubSettings

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from hub.store import Store

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)  # why a command stops, and notes beside output for other programs
# C0 and C1 control characters and DEL, but tab and newline: a multi-line value is shown over lines.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What SQLite says (SQLITE_BUSY) when another connection held its write lock past the busy timeout.
_HELD_ELSEWHERE = "database is locked"


def styled(template: str, *values: object) -> Text:
    """`template` is Rich markup written in our code; each `{}` in it is filled with a value printed as it is.

    Example: ``console.print(styled("[red]No decision {!r}[/] in {}", decision_id, url))``.
    """
    return Text.from_markup(_ESCAPING.format(template, *values), emoji=False)


class _EscapingFormatter(Formatter):
    """Escapes each field after its conversion and format spec: escaping first and then `{!r}` would repr() the
    escaping backslash too, which Rich then reads as a literal backslash before a live tag."""

    def format_field(self, value: object, format_spec: str) -> str:
        return escape(visible(super().format_field(value, format_spec)))


_ESCAPING = _EscapingFormatter()


def plain(value: object) -> Text:
    """A value printed as it is (but its control characters), e.g. a table cell or tree label made only of user
    text."""
    return Text(visible(str(value)))


def visible(text: str) -> str:
    """`text` with each control character but tab and newline written as an escape (ESC as `\\x1b`), so that
    it is seen, not obeyed, by the terminal."""
    return _CONTROL.sub(lambda control: f"\\x{ord(control[0]):02x}", text)


class ReadableArguments(TyperGroup):
    """The `touchhub` group: it refuses a command line holding an argument that is not UTF-8 before any command
    runs (`refuse_unreadable`), as every command reads its text arguments alike."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        refuse_unreadable(ctx, args)
        return super().parse_args(ctx, args)


def refuse_unreadable(ctx: typer.Context, args: Sequence[str]) -> None:
    """Exit 2 naming the text argument or option of the command `args` run that is not UTF-8 (typed in a Latin-1
    terminal, pasted from a file in another encoding). Python hands each such byte over as a lone surrogate
    (\\udcff) that no driver can write: the command died on the store's UnicodeEncodeError with a traceback. A path
    argument is left alone: a file name need not be UTF-8, and it opens as given."""
    if all(map(has_utf8_form, args)):
        return
    command = _parsed_leniently(ctx, args)
    for param in command.command.params if command is not None else ():
        given = command.params.get(param.name or "")
        unreadable = [value for value in (given if isinstance(given, (list, tuple)) else [given])
                      if isinstance(value, str) and not has_utf8_form(value)]
        if unreadable:
            shown = unreadable[0].encode(errors="surrogateescape").decode(errors="backslashreplace")
            raise typer.BadParameter(
                f"'{shown}' is not valid UTF-8; check the terminal's encoding (LANG, LC_ALL) and type it again",
                ctx=command, param=param,
            )


def _parsed_leniently(ctx: typer.Context, args: Sequence[str]) -> typer.Context | None:
    """The context of the command `args` name under `ctx`'s group, its parameters parsed without checking or
    running anything; None when `args` name no command or do not parse. (Our groups take no options, so each
    word up to the command is a group's or the command's name.)"""
    context, rest = ctx, list(args)
    try:
        while isinstance(context.command, TyperGroup) and rest:
            sub = context.command.get_command(context, rest[0])
            if sub is None:
                return None
            name, rest = rest[0], rest[1:]
            context = sub.make_context(name, [] if isinstance(sub, TyperGroup) else rest, parent=context, resilient_parsing=True)
    except typer.TyperException:
        return None
    return None if isinstance(context.command, TyperGroup) else context


def utc_text(moment: datetime | None) -> str:
    """A time as the CLI's tables show it (their headings say UTC); blank for none."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else ""


def id_column(table: Table, header: str, ids: Iterable[str]) -> None:
    """Add a column of ids that a command takes back (`deliveries replay ID`, `keys revoke ID`): each id stays
    whole on one line at any width, in a pipe's 80 columns too, so it can be copied or grepped; the table's
    other columns fold instead."""
    table.add_column(header, no_wrap=True, min_width=max((len(each) for each in ids), default=len(header)))


# The settings `serve` and `worker` take from a command-line option, by that option: `load_settings` names a bad
# value given there as typed (`--only piepline`), not after an environment variable (HUB_WORKERS) never set.
COMMAND_LINE_OPTIONS = {"host": "--host", "port": "--port", "workers": "--only"}


def load_settings(**overrides: object) -> HubSettings:
    """Settings from the environment and .env, with command-line overrides; a bad value exits with what to fix,
    named by its option (`COMMAND_LINE_OPTIONS`) when it was given by one. Logging is configured after the
    overrides, so a command may set its own level (`triggers test` does).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    with config_problems_exit():
        try:
            settings = HubSettings().with_overrides(**given)
        except ValidationError as exc:
            raise ConfigError([
                f"{_named(error['loc'], given)}: {error['msg']} (got {_shown_input(_field(error['loc']), error['input'])})"
                for error in exc.errors()
            ]) from None
        except UnicodeDecodeError as exc:  # python-dotenv reads the whole .env, so `exc` holds all of its bytes
            raise ConfigError(not_utf8(Path(str(HubSettings.model_config["env_file"])), exc)) from None
        configure_logging(settings.log_level, settings.log_json)
        return settings


def _named(loc: tuple[int | str, ...], given: Mapping[str, object]) -> str:
    """The option a bad value was given by, when it was, else its environment variable (HUB_...)."""
    field = _field(loc)
    return COMMAND_LINE_OPTIONS[field] if field in given and field in COMMAND_LINE_OPTIONS else f"HUB_{field.upper()}"


def _shown_input(field: str, value: object) -> str:
    """A value given for the setting `field`, as a message refusing it may echo it: a secret's not at all, a URL's
    without the credentials it may carry (`setting_shown`). The value is refused, but it is often the real secret
    mistyped or cut short, and the message goes to a terminal, a CI log or a pod's events."""
    if field in _SECRET_FIELDS:
        return repr(str(SecretStr(str(value))))  # as SecretStr prints it: stars, or '' when it was empty
    return repr(setting_shown(field, value))


# The settings typed SecretStr (alone or optional).
_SECRET_FIELDS = frozenset(
    name for name, field in HubSettings.model_fields.items() if SecretStr in (field.annotation, *get_args(field.annotation))
)


def _field(loc: tuple[int | str, ...]) -> str:
    """The setting a validation error's `loc` names."""
    return "_".join(map(str, loc))


@contextmanager
def config_problems_exit(heading: str = "The hub cannot start") -> Iterator[None]:
    """Turn a ConfigError into a readable list of what to fix and exit code 2.

    Each problem is one unwrapped line (`path:line: key: reason`, as editors and CI read it), printed as it is.
    """
    try:
        yield
    except ConfigError as exc:
        heading_line = styled("[red bold]{}; fix these and try again:[/]", heading)
        fail(heading_line, *(styled("  • {}", problem) for problem in exc.problems), code=2)


def fail(*lines: Text | str, code: int = 1) -> NoReturn:
    """Say why the command stops, on stderr, and exit with `code`: 2 when the command line or the set-up is wrong,
    1 when what it asked for is not there or cannot be done.

    On stderr so that `ids=$(touchhub ...)` or a pipe into jq does not take the reason for output and the person
    running it sees it. A `str` line is our own markup; user text comes in through `styled`.
    """
    for line in lines:
        err_console.print(line, soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@contextmanager
def writing(store: Store, heading: str) -> Iterator[Connection]:
    """`store.write()` for a command, with `store_busy_exit` around it."""
    with store_busy_exit(store, heading), store.write() as connection:
        yield connection


@contextmanager
def store_busy_exit(store: Store, heading: str) -> Iterator[None]:
    """Another writer that holds SQLite's write lock past the busy timeout (a sqlite3 shell left in a
    transaction, a backup) as exit 2 saying so and what to do, instead of a "database is locked" traceback;
    `heading` as `config_problems_exit` takes it. Around a call that writes through the store further down
    (`hub.replay`); a command's own write takes `writing`."""
    with config_problems_exit(heading):
        started = monotonic()
        try:
            yield
        except StoreBusyError as exc:  # a touchhub process holding the hub's own writer lock, named
            raise ConfigError(str(exc)) from None
        except OperationalError as exc:
            if _HELD_ELSEWHERE not in str(exc.orig):
                raise
            raise ConfigError(
                f"the store is busy: another process has held its write lock for {monotonic() - started:.0f} s; "
                f"try again, or find it with `fuser {Path(store.engine.url.database or '').resolve()}`"
            ) from None
