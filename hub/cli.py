"""The `touchhub` command line."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import uvicorn
from rich.table import Table

from hub.cli_deliveries import app as deliveries_app
from hub.cli_keys import app as keys_app
from hub.cli_profiles import app as profiles_app
from hub.cli_support import config_problems_exit, console, err_console, load_settings, plain, store_busy_exit, styled
from hub.cli_triggers import decisions_app, triggers_app
from hub.errors import ConfigError
from hub.heap import freeze_startup_objects
from hub.secret_urls import shown_url
from hub.settings import PROJECT_MAPPINGS, HubSettings

if TYPE_CHECKING:
    from hub.preview import PreviewOutcome
    from hub.runtime import Hub

app = typer.Typer(
    help="Touchpoint Hub: accept customer events, resolve who they belong to, fire micro-moment "
    "triggers and deliver messages. Settings come from HUB_* environment variables or .env "
    "(see .env.example).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
connectors_app = typer.Typer(help="Inspect installed source and destination connectors.", no_args_is_help=True)
app.add_typer(connectors_app, name="connectors")
app.add_typer(profiles_app, name="profiles")
mappings_app = typer.Typer(help="Validate mapping files and preview what a sample payload becomes.", no_args_is_help=True)
app.add_typer(mappings_app, name="mappings")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(triggers_app, name="triggers")
app.add_typer(decisions_app, name="decisions")
app.add_typer(keys_app, name="keys")
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
        sock = stack.enter_context(_listening_socket(settings.host, settings.port, "HUB_PORT (--port)"))
        if sandbox:
            providers = stack.enter_context(SandboxProviders())
            settings = settings.with_overrides(**providers.settings_overrides())
            console.print(f"Sandbox providers: {providers.urls}")
        hub = _build_hub(settings)
        app = create_app(hub)
        freeze_startup_objects()
        console.print(f"Touchpoint Hub on http://{settings.host}:{settings.port} (store: {shown_url(settings.database_url)})")
        _run_server(app, sock, settings.log_level)


def _run_server(app: Any, sock: socket.socket, log_level: str) -> None:
    """uvicorn on a socket bound before the hub was built, ending as `uvicorn.run` does: Ctrl-C is the way to stop
    it, and an app whose start-up failed exits 3."""
    host, port = sock.getsockname()[:2]  # for uvicorn's "running on" line
    # log_config=None: uvicorn's lines go to the root handler configure_logging set up (JSON, masked).
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), log_config=None))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it stopped on again once it has shut down
        pass
    if not server.started:
        raise typer.Exit(3)


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
    hub = _build_hub(load_settings(workers=",".join(only)) if only else load_settings())
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with _metrics_served(hub):
        freeze_startup_objects()
        hub.start()
        console.print(f"Workers running ({', '.join(hub.settings.worker_roles) or 'none'}); Ctrl-C to stop.")
        try:
            wait_while_workers_live(hub, stopping)
        finally:
            hub.stop()


def wait_while_workers_live(hub: Hub, stopping: threading.Event, poll_seconds: float = 1.0) -> None:
    """Return once `stopping` is set; exit 1 naming the dead worker once one dies, so that a supervisor (systemd,
    Kubernetes) restarts a process whose work would otherwise pile up while it waits for a signal."""
    from hub.runtime import dead_workers_line

    while not stopping.wait(poll_seconds):
        if dead := hub.dead_workers():
            err_console.print(
                plain(f"{dead_workers_line(dead)}; exiting with status 1 so a supervisor restarts it"), soft_wrap=True
            )
            raise typer.Exit(1)


@contextmanager
def _metrics_served(hub: Hub) -> Iterator[None]:
    """/metrics on HUB_HOST:HUB_METRICS_PORT while the block runs, when that port is set; a port in use exits 2
    naming the setting."""
    from hub.metrics import metrics_app
    from hub.serving import BackgroundServer

    settings = hub.settings
    if settings.metrics_port is None:
        yield
        return
    sock = _listening_socket(settings.host, settings.metrics_port, "HUB_METRICS_PORT")
    with BackgroundServer(metrics_app(hub.store), sock=sock) as server:
        console.print(f"Metrics on {server.url}/metrics")
        yield


def _listening_socket(host: str, port: int, setting: str) -> socket.socket:
    """A socket bound to `host`:`port` before anything else starts, so a port in use exits 2 naming `setting`,
    not after the hub's workers started (uvicorn's own bind failure was only a log line and exit 3)."""
    from hub.serving import bind_socket

    with config_problems_exit():
        try:
            return bind_socket(host, port)
        except OSError as exc:
            raise ConfigError(
                f"{setting}: cannot listen on {host}:{port} ({exc.strerror}); pick a free port or stop what listens there"
            ) from None


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
        open_store(settings.database_url, migrate=True).dispose()
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
        console.print(styled("[red]No connector {!r}[/]; installed: {}", slug, ", ".join(sorted(registry.origins))))
        raise typer.Exit(2)
    err_console.print(styled("[bold]{}[/]: {} ({})", connector.slug, connector.title, registry.origins[slug]), highlight=False)
    if connector.docs_url:
        err_console.print(styled("Docs: {}", connector.docs_url), highlight=False)
    typer.echo(json.dumps(connector.Config.model_json_schema(), indent=2))


@mappings_app.command("check")
def mappings_check() -> None:
    """Validate every YAML file in the mappings folder (HUB_MAPPINGS_DIR) the way the hub loads it.

    Problems print as [bold]file:line: key: reason[/]; the exit code is 1 when there is any, so CI can run it.
    """
    from connectors.base import load_registry
    from hub.mapping_check import check_folder

    settings = load_settings()
    with config_problems_exit():
        files, problems = check_folder(settings.mappings_dir, load_registry())
    for problem in problems:
        console.print(problem, highlight=False, markup=False, soft_wrap=True)
    if problems:
        console.print(f"[red]{len(problems)} problem(s) in {len(files)} file(s)[/]")
        raise typer.Exit(1)
    console.print(styled("[green]{} file(s) OK[/] in {}", len(files), settings.mappings_dir))


@mappings_app.command("preview")
def mappings_preview(
    source: str = typer.Argument(help="A source id from sources.yaml, `default`, or a connector slug (its default mapping)."),
    sample: Path = typer.Argument(exists=True, dir_okay=False, help="A payload as the platform sends it (JSON body)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcomes as JSON instead of tables."),
    draft: Path = typer.Option(None, "--mapping", exists=True, dir_okay=False,
                               help="Try this mapping file (e.g. an edited copy) instead of the source's own."),
    header: list[str] = typer.Option(
        None, "--header", "-H", metavar="'NAME: VALUE'",
        help="A request header the platform sends with the sample, as curl takes it; repeat for more. A source "
        "that reads the message id from a header (Standard Webhooks' webhook-id) needs it for the real touchpoint_id.",
    ),
) -> None:
    """Show the canonical touchpoint(s) SAMPLE becomes under SOURCE's current mapping; nothing is stored.

    Example: [bold]touchhub mappings preview hubspot tests/fixtures/hubspot_contact_events.json[/]
    Before saving an edit: [bold]touchhub mappings preview crm sample.json --mapping hubspot.draft.yaml[/]
    With the message id from a header: [bold]touchhub mappings preview billing event.json -H 'webhook-id: msg_1'[/]
    """
    import json

    from connectors.base import load_registry
    from hub.clock import utcnow
    from hub.errors import IngestError
    from hub.identity_config import identity_config_in
    from hub.mapping import load_mapping
    from hub.preview import offline_source, preview

    headers = _preview_headers(header or [])
    settings = load_settings()
    with config_problems_exit():
        instance, mapping_file = offline_source(load_registry(), settings.mappings_dir, source)
        mapping = load_mapping(draft or settings.mappings_dir / mapping_file)
    try:
        outcomes = preview(
            instance, mapping, sample.read_bytes(), utcnow(), settings.default_phone_region,
            identity_config_in(settings.mappings_dir), headers,
        )
    except IngestError as exc:
        console.print(styled("[red]The source refuses this sample:[/] {}", exc.message), highlight=False)
        for problem in exc.problems:
            console.print(f"  • {problem.field}: {problem.reason}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps([outcome.as_dict() for outcome in outcomes], default=str))
        return
    for outcome in outcomes:
        console.print(_outcome_table(outcome, mapping.version))


def _preview_headers(values: list[str]) -> dict[str, str]:
    """`--header 'Name: value'` options as a header dict; a malformed one is a usage error naming it."""
    headers = {}
    for value in values:
        name, colon, content = value.partition(":")
        if not colon or not name.strip():
            raise typer.BadParameter(f"{value!r} is no header; write it as 'Name: value', e.g. 'webhook-id: msg_1'",
                                     param_hint="--header")
        headers[name.strip()] = content.strip()
    return headers


def _outcome_table(outcome: PreviewOutcome, version: str) -> Table:
    """One row per field, sorted, values as compact JSON: two previews diff line by line."""
    import json

    from rich import box

    table = Table(title=f"event {outcome.index}: {outcome.outcome} ({version})", box=box.ASCII, title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    if outcome.touchpoint is None:
        table.add_row("reason", plain(outcome.reason or ""))
        return table
    for key, value in sorted(_flatten(outcome.touchpoint).items()):
        table.add_row(plain(key), plain(json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)))
    return table


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
        existing_store(settings.database_url).dispose()
    hub = _build_hub(settings)
    try:
        start = _since(since)
        if source not in hub.sources:
            console.print(styled("[red]No source {!r}[/]; configured: {}", source, ", ".join(sorted(hub.sources))))
            raise typer.Exit(2)
        with hub.store.read() as connection:
            total = replays.count_stored(connection, source, start)
        busy = store_busy_exit(hub.store, "The stored events cannot be replayed")
        with busy, Progress(console=console, transient=True) as progress:
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


