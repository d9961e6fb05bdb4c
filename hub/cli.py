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
triggers_app = typer.Typer(help="Try trigger rules before they go live.", no_args_is_help=True)
app.add_typer(triggers_app, name="triggers")
decisions_app = typer.Typer(help="Why a trigger fired and what became of each action.", no_args_is_help=True)
app.add_typer(decisions_app, name="decisions")
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


@triggers_app.command("test")
def triggers_test(
    rules: Path = typer.Argument(..., exists=True, dir_okay=False, help="Rules file, in the format of mappings/triggers.yaml."),
    events: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Segment-spec messages, one JSON object a line, each with a timestamp."
    ),
) -> None:
    """Run RULES over EVENTS with a simulated clock and print the decisions; nothing is sent.

    The clock is the events' own time, so a 2-minute absence rule fires between two events
    that are more than 2 minutes apart, and every timer still waiting after the last event
    is run out. Templates and routes come from HUB_MAPPINGS_DIR, as in the running hub.

    Example: [bold]touchhub triggers test mappings/triggers.yaml session.jsonl[/]
    """
    from hub.trigger_lab import run as run_lab

    with _config_problems_exit():
        result = run_lab(rules, events, _settings())
    table = Table(title=f"Decisions over {result.events} events (simulated clock, nothing sent)")
    for column in ("time", "rule", "status", "profile", "actions"):
        table.add_column(column)
    for decision in result.decisions:
        actions = ", ".join(f"{action['channel']}: {action['fate']}" for action in decision["actions"])
        table.add_row(decision["decided_at"].isoformat(), decision["rule_id"], decision["status"], decision["who"], actions)
    console.print(table)
    if result.quarantined:
        console.print(f"[yellow]{result.quarantined} event(s) could not be mapped and were left out.[/]")


@decisions_app.command("explain")
def decisions_explain(
    decision_id: str = typer.Argument(..., help="Decision id, as /api/decisions lists them."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole explanation as JSON."),
) -> None:
    """Show the chain behind one decision: rule and version, the touchpoints that satisfied it,
    each action's fate, and every delivery with its attempts."""
    import json

    from rich.tree import Tree

    from hub.explain import explain
    from hub.store import Store

    store = Store(_settings().database_url)
    with store.read() as connection:
        found = explain(connection, decision_id)
    store.dispose()
    if found is None:
        console.print(f"[red]No decision {decision_id!r}[/] in {store.url}")
        raise typer.Exit(1)
    if as_json:
        console.print_json(json.dumps(found, default=str))
        return
    tree = Tree(
        f"[bold]{found['rule_id']}[/] ({found['rule_version']}) {found['status']} "
        f"for profile {found['profile_id']} at {found['decided_at']}"
    )
    evidence = tree.add("because of")
    for touchpoint in found["touchpoints"]:
        evidence.add(f"{touchpoint['event']} at {touchpoint['occurred_at']} ({touchpoint['touchpoint_id']})")
    if found["timer"]:
        evidence.add(f"no follow-up between {found['timer']['anchor_at']} and {found['timer']['due_at']} (timer {found['timer']['status']})")
    actions = tree.add("actions")
    for action in found["actions"]:
        detail = action.get("reason") or action.get("not_before") or action.get("delivery_id", "")
        actions.add(f"{action['channel']}: [bold]{action['fate']}[/] {detail}".rstrip())
    deliveries = tree.add("deliveries")
    for delivery in found["deliveries"]:
        node = deliveries.add(f"{delivery['channel']} to {delivery['target']} via {delivery['destination_id']}: {delivery['status']}")
        for attempt in delivery["attempt_log"]:
            outcome = f"{attempt['outcome']} {attempt['error_message'] or ''}".rstrip()
            node.add(f"attempt {attempt['attempt_no']} at {attempt['started_at']}: {outcome}")
    console.print(tree)
