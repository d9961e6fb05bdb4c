"""What every `touchhub` command shares: the console, settings from the environment, config problems as exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from rich.console import Console

from hub.errors import ConfigError
from hub.logs import configure_logging
from hub.settings import HubSettings

console = Console()


def load_settings(**overrides: object) -> HubSettings:
    """Settings from the environment and .env, with command-line overrides; a bad value exits with what to fix."""
    with config_problems_exit():
        try:
            settings = HubSettings()
            configure_logging(settings.log_level, settings.log_json)
            return settings.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError([
                f"HUB_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']} (got {error['input']!r})"
                for error in exc.errors()
            ]) from None


@contextmanager
def config_problems_exit(heading: str = "The hub cannot start") -> Iterator[None]:
    """Turn a ConfigError into a readable list of what to fix and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        console.print(f"[red bold]{heading}; fix these and try again:[/]")
        for problem in exc.problems:
            console.print(f"  • {problem}")
        raise typer.Exit(2) from None
