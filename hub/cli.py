"""The `touchhub` command line."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from hub.cli_deliveries import app as deliveries_app
from hub.errors import ConfigError
from hub.logs import configure_logging
from hub.settings import PROJECT_MAPPINGS, HubSettings

app = typer.Typer(
    help="Touchpoint Hub: accept customer events, resolve who they belong to, fire micro-moment "
    "triggers and deliver messages. Settings come from HUB_* environment variables or .env "
    "(see .env.example).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
connectors_app = typer.Typer(help="Inspect installed source and destination connectors.", no_args_is_help=True)
app.add_typer(connectors_app, name="connectors")
app.add_typer(deliveries_app, name="deliveries")
console = Console()
SAMPLE_JOURNEY = PROJECT_MAPPINGS / "samples" / "demo_journey.json"


def _settings(**overrides: object) -> HubSettings:
    settings = HubSettings()
    configure_logging(settings.log_level, settings.log_json)
    return settings.with_overrides(**{k: v for k, v in overrides.items() if v is not None})


@contextmanager
def _config_problems_exit() -> Iterator[None]:
    """Turn a ConfigError into a readable list of what to fix and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        console.print("[red bold]The hub cannot start; fix these and try again:[/]")
        for problem in exc.problems:
            console.print(f"  • {problem}")
        raise typer.Exit(2) from None


def _build_hub(settings: HubSettings):  # type: ignore[no-untyped-def]
    from hub.runtime import Hub

    with _config_problems_exit():
        return Hub(settings)


@app.command()
def serve(
    host: str = typer.Option(None, help="Interface to listen on (default HUB_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port to listen on (default HUB_PORT, 8000)."),
    sandbox: bool = typer.Option(False, help="Also start the fake providers and send to them instead of the real ones."),
) -> None:
    """Run the hub: HTTP ingest and admin API, pipeline and delivery workers, in one process.

    Example: [bold]touchhub serve --sandbox[/], then send events with any Segment SDK to
    http://127.0.0.1:8000 using the write key from HUB_DEFAULT_WRITE_KEY.
    """
    from contextlib import ExitStack

    from connectors.sandbox.providers import SandboxProviders
    from hub.api import create_app

    settings = _settings(host=host, port=port)
    with ExitStack() as stack:
        if sandbox:
            providers = stack.enter_context(SandboxProviders())
            settings = settings.with_overrides(**providers.settings_overrides())
            console.print(f"Sandbox providers: {providers.urls}")
        hub = _build_hub(settings)
        console.print(f"Touchpoint Hub on http://{settings.host}:{settings.port} (store: {settings.database_url})")
        uvicorn.run(create_app(hub), host=settings.host, port=settings.port, log_level=settings.log_level.lower())


@app.command()
def worker() -> None:
    """Run only the pipeline and delivery workers (no HTTP), e.g. as extra processes beside `serve`."""
    hub = _build_hub(_settings())
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    hub.start()
    console.print("Workers running; Ctrl-C to stop.")
    stopping.wait()
    hub.stop()


@app.command()
def demo(
    journey: Path = typer.Option(SAMPLE_JOURNEY, exists=True, dir_okay=False, help="Journey file to replay."),
) -> None:
    """Replay a sample customer journey through a real hub and sandbox providers, then summarize.

    Nothing leaves this machine: the hub, its database (a temporary SQLite file) and the fake
    Twilio all run on 127.0.0.1 and are gone when the command ends.
    """
    from hub.demo import print_summary, run_demo

    with _config_problems_exit():
        result = run_demo(_settings(), journey, console)
    print_summary(result, console)
    if not result.idle:
        raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (serve and worker also do this on start)."""
    from hub.store import Store

    settings = _settings()
    Store(settings.database_url).migrate()
    console.print(f"Schema is up to date in {settings.database_url}")


@connectors_app.command("list")
def connectors_list() -> None:
    """Show every installed connector, its kind and where it came from."""
    from connectors.base import load_registry

    registry = load_registry()
    table = Table(title="Installed connectors")
    for column in ("slug", "kind", "title", "config keys", "from"):
        table.add_column(column)
    for kind, group in (("source", registry.sources), ("destination", registry.destinations)):
        for slug, connector in sorted(group.items()):
            keys = ", ".join(connector.Config.model_fields)
            table.add_row(slug, kind, connector.title, keys, registry.origins[slug])
    console.print(table)
