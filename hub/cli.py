"""The `touchhub` command line."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hub.cli_deliveries import app as deliveries_app
from hub.errors import ConfigError
from hub.heap import freeze_startup_objects
from hub.logs import configure_logging
from hub.settings import PROJECT_MAPPINGS, HubSettings

if TYPE_CHECKING:
    from hub.preview import PreviewOutcome

app = typer.Typer(
    help="Touchpoint Hub: accept customer events, resolve who they belong to, fire micro-moment "
    "triggers and deliver messages. Settings come from HUB_* environment variables or .env "
    "(see .env.example).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
connectors_app = typer.Typer(help="Inspect installed source and destination connectors.", no_args_is_help=True)
app.add_typer(connectors_app, name="connectors")
profiles_app = typer.Typer(help="Inspect identity resolution: why a profile is one person.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
mappings_app = typer.Typer(help="Validate mapping files and preview what a sample payload becomes.", no_args_is_help=True)
app.add_typer(mappings_app, name="mappings")
app.add_typer(deliveries_app, name="deliveries")
triggers_app = typer.Typer(help="Try trigger rules before they go live.", no_args_is_help=True)
app.add_typer(triggers_app, name="triggers")
decisions_app = typer.Typer(help="Why a trigger fired and what became of each action.", no_args_is_help=True)
app.add_typer(decisions_app, name="decisions")
console = Console()
SAMPLE_JOURNEY = PROJECT_MAPPINGS / "samples" / "demo_journey.json"


def _settings(**overrides: object) -> HubSettings:
    """Settings from the environment and .env, with command-line overrides; a bad value exits with what to fix."""
    with _config_problems_exit():
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
def _config_problems_exit(heading: str = "The hub cannot start") -> Iterator[None]:
    """Turn a ConfigError into a readable list of what to fix and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        console.print(f"[red bold]{heading}; fix these and try again:[/]")
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
        app = create_app(hub)
        freeze_startup_objects()
        console.print(f"Touchpoint Hub on http://{settings.host}:{settings.port} (store: {settings.database_url})")
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())


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
    hub = _build_hub(_settings(workers=",".join(only)) if only else _settings())
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    freeze_startup_objects()
    hub.start()
    console.print(f"Workers running ({', '.join(hub.settings.worker_roles) or 'none'}); Ctrl-C to stop.")
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
    from hub.sources import is_secret

    registry = load_registry()
    table = Table(title="Installed connectors")
    for column in ("slug", "kind", "title", "config keys (* = secret: name an env variable)", "from"):
        table.add_column(column)
    for kind, group in (("source", registry.sources), ("destination", registry.destinations)):
        for slug, connector in sorted(group.items()):
            fields = connector.Config.model_fields.items()
            keys = ", ".join(f"{name}*" if is_secret(field.annotation) else name for name, field in fields)
            table.add_row(slug, kind, connector.title, keys, registry.origins[slug])
    console.print(table)


@profiles_app.command("explain")
def profiles_explain(
    profile_id: str = typer.Argument(help="A profile id; an id merged away since is followed to its survivor."),
    show_pii: bool = typer.Option(False, help="Show emails and phones in full instead of masked."),
) -> None:
    """Show a profile's identity graph: every identifier, the touchpoint that linked it, merges and refused links.

    Example: [bold]touchhub profiles explain 01J9Z3...[/]; undo a bad merge with
    POST /api/profiles/{id}/unmerge.
    """
    from hub.identity_report import explain_tree
    from hub.store import Store
    from hub.store.identity_explain import explain

    store = Store(_settings().database_url)
    with store.read() as connection:
        graph = explain(connection, profile_id)
    if graph is None:
        console.print(f"[red]No profile {profile_id!r}.[/]")
        raise typer.Exit(1)
    console.print(explain_tree(graph, show_pii=show_pii))


@connectors_app.command("show")
def connectors_show(slug: str = typer.Argument(help="A slug from `touchhub connectors list`.")) -> None:
    """Print a connector's config schema (JSON Schema): the keys a sources.yaml entry may set."""
    import json

    from connectors.base import load_registry

    registry = load_registry()
    connector = registry.sources.get(slug) or registry.destinations.get(slug)
    if connector is None:
        console.print(f"[red]No connector {slug!r}[/]; installed: {', '.join(sorted(registry.origins))}")
        raise typer.Exit(2)
    console.print(f"[bold]{connector.slug}[/]: {connector.title} ({registry.origins[slug]})", highlight=False)
    if connector.docs_url:
        console.print(f"Docs: {connector.docs_url}", highlight=False)
    console.print_json(json.dumps(connector.Config.model_json_schema()))


@mappings_app.command("check")
def mappings_check() -> None:
    """Validate every YAML file in the mappings folder (HUB_MAPPINGS_DIR) the way the hub loads it.

    Problems print as [bold]file:line: key: reason[/]; the exit code is 1 when there is any, so CI can run it.
    """
    from connectors.base import load_registry
    from hub.mapping_check import check_folder

    settings = _settings()
    with _config_problems_exit():
        files, problems = check_folder(settings.mappings_dir, load_registry())
    for problem in problems:
        console.print(problem, highlight=False, markup=False, soft_wrap=True)
    if problems:
        console.print(f"[red]{len(problems)} problem(s) in {len(files)} file(s)[/]")
        raise typer.Exit(1)
    console.print(f"[green]{len(files)} file(s) OK[/] in {settings.mappings_dir}")


@mappings_app.command("preview")
def mappings_preview(
    source: str = typer.Argument(help="A source id from sources.yaml, `default`, or a connector slug (its default mapping)."),
    sample: Path = typer.Argument(exists=True, dir_okay=False, help="A payload as the platform sends it (JSON body)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcomes as JSON instead of tables."),
    draft: Path = typer.Option(None, "--mapping", exists=True, dir_okay=False,
                               help="Try this mapping file (e.g. an edited copy) instead of the source's own."),
) -> None:
    """Show the canonical touchpoint(s) SAMPLE becomes under SOURCE's current mapping; nothing is stored.

    Example: [bold]touchhub mappings preview hubspot tests/fixtures/hubspot_contact_events.json[/]
    Before saving an edit: [bold]touchhub mappings preview crm sample.json --mapping hubspot.draft.yaml[/]
    """
    import json

    from connectors.base import load_registry
    from hub.clock import utcnow
    from hub.errors import IngestError
    from hub.identity_config import identity_config_in
    from hub.mapping import load_mapping
    from hub.preview import offline_source, preview

    settings = _settings()
    with _config_problems_exit():
        instance, mapping_file = offline_source(load_registry(), settings.mappings_dir, source)
        mapping = load_mapping(draft or settings.mappings_dir / mapping_file)
    try:
        outcomes = preview(
            instance, mapping, sample.read_bytes(), utcnow(), settings.default_phone_region, identity_config_in(settings.mappings_dir)
        )
    except IngestError as exc:
        console.print(f"[red]The source refuses this sample:[/] {exc.message}", highlight=False)
        for problem in exc.problems:
            console.print(f"  • {problem.field}: {problem.reason}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps([outcome.as_dict() for outcome in outcomes], default=str))
        return
    for outcome in outcomes:
        console.print(_outcome_table(outcome, mapping.version))


def _outcome_table(outcome: PreviewOutcome, version: str) -> Table:
    """One row per field, sorted, values as compact JSON: two previews diff line by line."""
    import json

    from rich import box

    table = Table(title=f"event {outcome.index}: {outcome.outcome} ({version})", box=box.ASCII, title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    if outcome.touchpoint is None:
        table.add_row("reason", outcome.reason or "")
        return table
    for key, value in sorted(_flatten(outcome.touchpoint).items()):
        table.add_row(key, json.dumps(value, default=str, ensure_ascii=False, sort_keys=True))
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
    from datetime import timedelta

    from rich.progress import Progress

    from hub.clock import utcnow
    from hub.replay import replay
    from hub.store import replays

    settings = _settings()
    hub = _build_hub(settings)
    try:
        start = _since(since)
        if source not in hub.sources:
            console.print(f"[red]No source {source!r}[/]; configured: {', '.join(sorted(hub.sources))}")
            raise typer.Exit(2)
        with hub.store.read() as connection:
            total = replays.count_stored(connection, source, start)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"Re-normalizing {source}", total=total)
            assert hub.mappings is not None
            # Running hubs pick up the mapping within HUB_MAPPINGS_RELOAD_SECONDS; re-processed events wait for that.
            delay = timedelta(seconds=2 * settings.mappings_reload_seconds)
            assert hub.identity is not None
            report = replay(hub.store, hub.mappings, source, start, utcnow() + delay, settings.default_phone_region, hub.identity,
                            on_batch=lambda count: progress.advance(task, count))
        if report.requeued:
            time.sleep(delay.total_seconds())
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
    """An aware UTC datetime from ISO-8601 text or a duration ago."""
    from hub.clock import utcnow
    from hub.durations import parse_duration

    try:
        return utcnow() - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither an ISO-8601 time nor a duration such as 24h", param_hint="--since") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


@triggers_app.command("test")
def triggers_test(
    rules: Path = typer.Argument(..., exists=True, dir_okay=False, help="Rules file, in the format of mappings/triggers.yaml."),
    events: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Segment-spec messages, one JSON object a line, each with a timestamp."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object a line per decision (rule, version, profile, time, status, reasons, "
        "evidence touchpoints, each action's fate and details), for diffing two runs."
    ),
) -> None:
    """Run RULES over EVENTS with a simulated clock and print the decisions; nothing is sent.

    The clock is the events' own time, so a 2-minute absence rule fires between two events
    that are more than 2 minutes apart, and every timer still waiting after the last event
    is run out. Each timer fires at its own due time: quiet hours and caps are judged then.
    Templates and routes come from HUB_MAPPINGS_DIR, as in the running hub.

    Each action shows its fate and why, e.g. [bold]email: delayed_quiet_hours until 2026-01-06 08:00 UTC[/]
    or [bold]push: fell_back -> email (profile has no push_token)[/]. With --json, each decision is
    one JSON object a line instead, so two runs can be diffed.

    Example: [bold]touchhub triggers test mappings/triggers.yaml session.jsonl[/]
    """
    from hub.trigger_lab import run as run_lab

    with _config_problems_exit("The rules cannot be tried"):
        result = run_lab(rules, events, _settings())
    if as_json:
        _print_lab_json(result.decisions)
    else:
        console.print(_lab_table(result.decisions, result.events))
    if result.quarantined:
        message = f"{result.quarantined} event(s) could not be mapped and were left out."
        (Console(stderr=True) if as_json else console).print(f"[yellow]{message}[/]")


def _lab_table(found: list[dict[str, Any]], events: int) -> Table:
    """One row per decision, one line per action with its fate and why."""
    table = Table(title=f"Decisions over {events} events (simulated clock, nothing sent)")
    for column in ("time", "rule", "status", "profile", "actions"):
        table.add_column(column)
    for decision in found:
        actions = "\n".join(escape(_action_line(action)) for action in decision["actions"])
        table.add_row(decision["decided_at"].isoformat(), decision["rule_id"], decision["status"], decision["who"], actions)
    return table


def _print_lab_json(found: list[dict[str, Any]]) -> None:
    """Plain lines on stdout (no Rich wrapping or colour), keys sorted, so two runs diff line by line."""
    import json

    from hub.trigger_lab import as_record

    for decision in found:
        typer.echo(json.dumps(as_record(decision), sort_keys=True, ensure_ascii=False, default=str))


def _action_line(action: dict[str, Any]) -> str:
    """`channel: fate` and what the decision log says about it: where it fell back to, until when it is held,
    and routing's reason in its own words (hub/routing.py), as `decisions explain` shows them."""
    parts = [f"{action['channel']}: {action['fate']}"]
    if action.get("to"):
        parts.append(f"-> {action['to']}")
    if action.get("not_before"):
        parts.append(f"until {_utc_text(action['not_before'])}")
    if action.get("reason"):
        parts.append(f"({action['reason']})")
    return " ".join(parts)


def _utc_text(iso: str) -> str:
    """`2026-01-06 08:00 UTC` from a stored ISO time; seconds only when there are some."""
    at = datetime.fromisoformat(iso).astimezone(timezone.utc)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC" if at.second else "%Y-%m-%d %H:%M UTC")


@decisions_app.command("explain")
def decisions_explain(
    decision_id: str = typer.Argument(..., help="Decision id, as /api/decisions lists them."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole explanation as JSON."),
) -> None:
    """Show the chain behind one decision: rule and version, the touchpoints that satisfied it,
    each action's fate, and every delivery with its attempts."""
    import json

    from rich.tree import Tree

    from hub.decision_explain import explain
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
        delivery = f" (delivery {action['delivery_id']})" if action.get("delivery_id") else ""
        actions.add(escape(_action_line(action)) + delivery)
    for channel in found["evidence"].get("only_if_left_out", []):
        actions.add(escape(f"{channel}: left out (its only_if did not hold for this touchpoint)"))
    deliveries = tree.add("deliveries")
    for delivery in found["deliveries"]:
        node = deliveries.add(f"{delivery['channel']} to {delivery['target']} via {delivery['destination_id']}: {delivery['status']}")
        for attempt in delivery["attempt_log"]:
            outcome = f"{attempt['outcome']} {attempt['error_message'] or ''}".rstrip()
            node.add(f"attempt {attempt['attempt_no']} at {attempt['started_at']}: {outcome}")
    console.print(tree)
