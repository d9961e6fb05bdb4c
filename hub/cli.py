"""The `touchhub` command line."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.table import Table

from hub.cli_deliveries import app as deliveries_app
from hub.cli_keys import app as keys_app
from hub.cli_mappings import app as mappings_app
from hub.cli_processes import listening_socket, metrics_served, run_server, stop_on_signals, wait_while_workers_live
from hub.cli_profiles import app as profiles_app
from hub.cli_prune import prune_command
from hub.cli_support import (
    ReadableArguments, config_problems_exit, console, err_console, fail, load_settings, plain, store_busy_exit, styled,
)
from hub.cli_triggers import decisions_app, triggers_app
from hub.heap import freeze_startup_objects
from hub.secret_urls import shown_url
from hub.serving import socket_url
from hub.settings import PROJECT_MAPPINGS, HubSettings

app = typer.Typer(
    help="Touchpoint Hub: accept customer events, resolve who they belong to, fire micro-moment "
    "triggers and deliver messages. Settings come from HUB_* environment variables or .env "
    "(see .env.example).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    cls=ReadableArguments,  # an argument that is not UTF-8 is refused naming it, whichever command takes it
)
connectors_app = typer.Typer(help="Inspect installed source and destination connectors.", no_args_is_help=True)
app.add_typer(connectors_app, name="connectors")
app.add_typer(profiles_app, name="profiles")
app.add_typer(mappings_app, name="mappings")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(triggers_app, name="triggers")
app.add_typer(decisions_app, name="decisions")
app.add_typer(keys_app, name="keys")
app.command("prune")(prune_command)
SAMPLE_JOURNEY = PROJECT_MAPPINGS / "samples" / "demo_journey.json"


def _build_hub(settings: HubSettings):  # type: ignore[no-untyped-def]
    from hub.runtime import Hub

    with config_problems_exit():
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

    settings = load_settings(host=host, port=port)
    with ExitStack() as stack:
        sock = stack.enter_context(listening_socket(settings.host, settings.port, "HUB_PORT (--port)"))
        if sandbox:
            providers = stack.enter_context(SandboxProviders())
            settings = settings.with_overrides(**providers.settings_overrides())
            console.print(f"Sandbox providers: {providers.urls}")
        hub = _build_hub(settings)
        app = create_app(hub)
        freeze_startup_objects()
        console.print(f"Touchpoint Hub on {socket_url(sock)} (store: {shown_url(settings.database_url)})")
        run_server(app, sock, settings.log_level)


@app.command()
def worker(
    only: list[str] = typer.Option(
        None, help="Run only this worker (pipeline, timers or delivery); repeat for several. Default: HUB_WORKERS (all three).",
    ),
) -> None:
    """Run workers without HTTP, e.g. as extra processes beside `serve`.

    Each worker is a thread on its process's one GIL. A hub that spends its CPU
    in several workers can run them in separate processes: for example
    [bold]HUB_WORKERS=pipeline touchhub serve[/] and [bold]touchhub worker --only timers --only delivery[/].
    """
    settings = load_settings(workers=",".join(only) if only else None)
    if not settings.worker_roles:  # it idled for ever, which its supervisor took for a healthy process
        fail("No worker to run: HUB_WORKERS is empty; set it (e.g. HUB_WORKERS=pipeline,timers,delivery) or give "
             "--only pipeline, --only timers or --only delivery.", code=2)
    hub = _build_hub(settings)
    stopping = threading.Event()
    stop_on_signals(stopping)  # a second signal exits at once, not after the workers' steps
    with metrics_served(hub):
        freeze_startup_objects()
        hub.start()
        console.print(f"Workers running ({', '.join(hub.settings.worker_roles)}); Ctrl-C to stop.")
        try:
            wait_while_workers_live(hub, stopping)
        finally:
            hub.stop()


@app.command()
def demo(
    journey: Path = typer.Option(SAMPLE_JOURNEY, exists=True, dir_okay=False, help="Journey file to replay."),
) -> None:
    """Replay a sample customer journey through a real hub and sandbox providers, then summarize.

    Nothing leaves this machine: the hub, its database (a temporary SQLite file) and the fake
    Twilio, Salesforce, FCM, SMTP server and webhook receiver all run on 127.0.0.1 and are gone when the command
    ends.
    """
    from hub.demo import load_journey, print_summary, run_demo

    try:
        loaded = load_journey(journey, datetime.now(timezone.utc))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--journey") from None
    with config_problems_exit():
        result = run_demo(load_settings(), loaded, console)
    print_summary(result, console)
    if not result.idle:
        raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (serve and worker also do this on start)."""
    from hub.store.opening import open_store

    settings = load_settings()
    with config_problems_exit("The schema cannot be migrated"):
        open_store(settings.database_url, migrate=True, lock_timeout=settings.sqlite_lock_timeout_seconds).dispose()
    console.print(f"Schema is up to date in {shown_url(settings.database_url)}")


@connectors_app.command("list")
def connectors_list() -> None:
    """Show every installed connector, its kind and where it came from."""
    from connectors.base import load_registry
    from hub.sources import is_secret

    registry = load_registry()
    table = Table(title="Installed connectors")
    for column in ("slug", "kind", "title", "config keys (* = secret: name an env variable)", "from"):
        table.add_column(column)
    for kind, group in (("source", registry.sources), ("destination", registry.destinations)):
        for slug, connector in sorted(group.items()):
            fields = connector.Config.model_fields.items()
            keys = ", ".join(f"{name}*" if is_secret(field.annotation) else name for name, field in fields)
            table.add_row(*map(plain, (slug, kind, connector.title, keys, registry.origins[slug])))
    console.print(table)


@connectors_app.command("show")
def connectors_show(slug: str = typer.Argument(help="A slug from `touchhub connectors list`.")) -> None:
    """Print a connector's config schema (JSON Schema): the keys a sources.yaml entry may set.

    The schema alone goes to stdout, so it pipes into jq or a file; the connector's name and docs go to stderr.
    """
    import json

    from connectors.base import load_registry

    registry = load_registry()
    connector = registry.sources.get(slug) or registry.destinations.get(slug)
    if connector is None:
        fail(styled("[red]No connector {!r}[/]; installed: {}", slug, ", ".join(sorted(registry.origins))), code=2)
    err_console.print(styled("[bold]{}[/]: {} ({})", connector.slug, connector.title, registry.origins[slug]), highlight=False)
    if connector.docs_url:
        err_console.print(styled("Docs: {}", connector.docs_url), highlight=False)
    typer.echo(json.dumps(connector.Config.model_json_schema(), indent=2))


@app.command("replay")
def replay_command(
    source: str = typer.Option(..., "--source", help="Source id whose stored events to re-normalize (e.g. default)."),
    since: str = typer.Option(..., "--since", help="ISO-8601 time (2026-11-20T00:00Z) or how long ago (90m, 24h, 7d)."),
) -> None:
    """Re-normalize a source's stored raw events with its current mapping, e.g. after fixing the mapping.

    Touchpoints already made are rewritten in place (same ids; no trigger fires again). Events that were
    quarantined as unmappable, or dropped by a rule that no longer matches, go through the whole pipeline
    now. Running it twice changes nothing the second time.
    """
    import time

    from rich.progress import Progress

    from hub.cli_store import existing_store
    from hub.clock import utcnow
    from hub.replay import replay_source
    from hub.store import replays

    settings = load_settings()
    with config_problems_exit("The stored events cannot be replayed"):  # not an empty store made in the wrong folder
        existing_store(settings).dispose()
    hub = _build_hub(settings)
    try:
        start = _since(since)
        if source not in hub.sources:
            fail(styled("[red]No source {!r}[/]; configured: {}", source, ", ".join(sorted(hub.sources))), code=2)
        with hub.store.read() as connection:
            total = replays.count_stored(connection, source, start)
        busy = store_busy_exit(hub.store, "The stored events cannot be replayed")
        refused = config_problems_exit("The stored events cannot be replayed")  # the mapping saved broken meanwhile
        with refused, busy, Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"Re-normalizing {source}", total=total)
            report = replay_source(hub, source, start, on_batch=lambda count: progress.advance(task, count))
        if report.available_at is not None:
            time.sleep(max(0.0, (report.available_at - utcnow()).total_seconds()))
            while hub.pipeline.run_once():
                pass
    finally:
        hub.stop()
    table = Table(title=f"Replay of {source} since {start.isoformat()}")
    table.add_column("outcome")
    table.add_column("events", justify="right")
    for label, count in (("touchpoints rewritten", report.rewritten), ("already current", report.unchanged),
                         ("re-processed (were quarantined or dropped)", report.requeued),
                         ("dropped by a rule", report.dropped), ("still unmappable", report.unmappable)):
        table.add_row(label, str(count))
    console.print(table)
    for error, count in sorted(report.errors.items()):
        console.print(f"  {count} x {error}", highlight=False, markup=False)


def _since(text: str) -> datetime:
    from hub.clock import utcnow
    from hub.durations import since

    try:
        return since(text, utcnow())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None


