"""What every `touchhub` command shares: the consoles, settings from the environment, config problems as exit 2.

Rich reads `[bold]` as markup and `:100:` as an emoji code in any string it
prints. Our own messages use markup on purpose; the text inside them often
comes from users and their files (paths, event names, ids, error messages),
where `events.jsonl:100:` must print as it is and a stray `[/]` must not make
Rich raise. So the consoles never read emoji codes, and user text reaches them
through `styled` (our markup around it) or `plain` (the text alone).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from string import Formatter

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from hub.errors import ConfigError
from hub.logs import configure_logging
from hub.settings import HubSettings

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)  # notes beside output meant for other programs (--json)


def styled(template: str, *values: object) -> Text:
    """`template` is Rich markup written in our code; each `{}` in it is filled with a value printed as it is.

    Example: ``console.print(styled("[red]No decision {!r}[/] in {}", decision_id, url))``.
    """
    return Text.from_markup(_ESCAPING.format(template, *values), emoji=False)


class _EscapingFormatter(Formatter):
    """Escapes each field after its conversion and format spec: escaping first and then `{!r}` would repr() the
    escaping backslash too, which Rich then reads as a literal backslash before a live tag."""

    def format_field(self, value: object, format_spec: str) -> str:
        return escape(super().format_field(value, format_spec))


_ESCAPING = _EscapingFormatter()


def plain(value: object) -> Text:
    """A value printed exactly as it is, e.g. a table cell or tree label made only of user text."""
    return Text(str(value))


def load_settings(**overrides: object) -> HubSettings:
    """Settings from the environment and .env, with command-line overrides; a bad value exits with what to fix.

    Logging is configured after the overrides, so a command may set its own level (`triggers test` does).
    """
    with config_problems_exit():
        try:
            settings = HubSettings().with_overrides(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError([
                f"HUB_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']} (got {error['input']!r})"
                for error in exc.errors()
            ]) from None
        configure_logging(settings.log_level, settings.log_json)
        return settings


@contextmanager
def config_problems_exit(heading: str = "The hub cannot start") -> Iterator[None]:
    """Turn a ConfigError into a readable list of what to fix and exit code 2.

    Each problem is one unwrapped line (`path:line: key: reason`, as editors and CI read it), printed as it is.
    """
    try:
        yield
    except ConfigError as exc:
        console.print(styled("[red bold]{}; fix these and try again:[/]", heading))
        for problem in exc.problems:
            console.print(styled("  • {}", problem), soft_wrap=True)
        raise typer.Exit(2) from None
