"""`touchhub triggers` and `touchhub decisions`: try rules before they go live, and explain what they decided."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.cli_support import config_problems_exit, console, err_console, fail, load_settings, plain, styled
from hub.cli_store import delivery_recipients, existing_store
from hub.secret_urls import shown_url
from hub.store.outbox import DUE_STATUSES

if TYPE_CHECKING:
    from rich.tree import Tree

triggers_app = typer.Typer(help="Try trigger rules before they go live.", no_args_is_help=True)
decisions_app = typer.Typer(help="Why a trigger fired and what became of each action.", no_args_is_help=True)


@triggers_app.command("test")
def triggers_test(
    rules: Path = typer.Argument(..., exists=True, dir_okay=False, help="Rules file, in the format of mappings/triggers.yaml."),
    events: Path = typer.Argument(
        ..., exists=True, dir_okay=False,
        help="Segment-spec messages, each with a timestamp or, as RudderStack's SDKs send, an originalTimestamp (no offset means UTC; and receivedAt or sentAt where known: the lab takes them in "
        "in the order they reached the hub): JSON Lines (one object a line) or one JSON array. Sample: mappings/samples/demo_journey.jsonl.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object a line per decision (rule, version, profile, time, status, reasons, "
        "evidence touchpoints, each action's fate and details), for diffing two runs."
    ),
) -> None:
    """Run RULES over EVENTS with a simulated clock and print the decisions; nothing is sent.

    The clock is the time each event reached the hub (its receivedAt, else its timestamp or its
    sentAt if later, as an SDK's offline queue sends it), so a 2-minute absence rule fires between
    two events that arrived more than 2 minutes apart, a late event meets the timers that fired
    before it came, and every timer still waiting after the last event is run out. Each timer
    fires at its own due time: quiet hours and caps are judged then.
    Templates and routes come from HUB_MAPPINGS_DIR, as in the running hub.

    Each action shows its fate and why, e.g. [bold]email: delayed_quiet_hours until 2026-01-06 08:00 UTC[/]
    or [bold]push: fell_back -> email (profile has no push_token)[/]. With --json, each decision is
    one JSON object a line instead, so two runs can be diffed.

    Events the hub would not take in (one it refuses at ingest, such as a track without `event`;
    a resend: a repeated messageId or, without one, the same content) or would quarantine are
    listed after the decisions at their lines in EVENTS. An empty EVENTS or RULES, or EVENTS with
    no message the hub would take in, exits with 2.

    Example: [bold]touchhub triggers test mappings/triggers.yaml mappings/samples/demo_journey.jsonl[/]
    """
    from hub.trigger_lab import run as run_lab

    # The hub's own warnings name the throwaway database's inbox ids and would go to stdout between the
    # --json lines; what they say is reported below, at the line of EVENTS it is about.
    settings = load_settings(log_level="ERROR")
    with config_problems_exit("The rules cannot be tried"), _lab_progress() as advance:
        result = run_lab(rules, events, settings, on_events=advance)
    if as_json:
        _print_lab_json(result.decisions)
    else:
        console.print(_lab_table(result.decisions, result.events))
    _print_left_out(result.left_out, err_console if as_json else console)


@contextmanager
def _lab_progress() -> Iterator[Callable[[int, int], None]]:
    """A progress bar of the events taken in, on stderr (stdout may be --json lines), gone when the run ends."""
    columns = (TextColumn("Trying rules"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("events", total=None)
        yield lambda taken, total: progress.update(task, completed=taken, total=total)


def _print_left_out(left_out: list[str], where: Console) -> None:
    """What was not tried and why, one `path:line: why` a line."""
    if left_out:
        where.print(styled("[yellow]{} event(s) left out:[/]", len(left_out)))
    for note in left_out:
        where.print(styled("  • {}", note), soft_wrap=True)


def _lab_table(found: list[dict[str, Any]], events: int) -> Table:
    """One row per decision, one line per action with its fate and why."""
    table = Table(title=f"Decisions over {events} events (simulated clock, nothing sent)")
    for column in ("time", "rule", "status", "profile", "actions"):
        table.add_column(column)
    for decision in found:
        actions = "\n".join(_action_line(action) for action in decision["actions"])
        cells = (decision["decided_at"].isoformat(), decision["rule_id"], decision["status"], decision["who"], actions)
        table.add_row(*map(plain, cells))
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
    decision_id: str = typer.Argument(..., help="Decision id, as GET /api/decisions lists them."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole explanation as JSON."),
) -> None:
    """Show the chain behind one decision: rule and version, the touchpoints that satisfied it,
    each action's fate, and every delivery with its attempts."""
    import json

    import pydantic_core

    from hub.decision_explain import explain

    settings = load_settings()
    url = settings.database_url
    with config_problems_exit("The decision cannot be explained"):
        _, recipient = delivery_recipients(settings.mappings_dir)
        store = existing_store(settings)
    try:
        with store.read() as connection:
            found = explain(connection, decision_id, recipient, settings.default_phone_region)
    finally:
        store.dispose()
    if found is None:
        fail(styled("[red]No decision {}[/] in {}.", repr(decision_id), shown_url(url)), styled(
            "Decision ids are listed by [bold]GET /api/decisions[/] (filters: rule_id, profile_id), e.g. "
            'curl -H "Authorization: Bearer $HUB_ADMIN_TOKEN" {}',
            f"http://{settings.host}:{settings.port}/api/decisions?rule_id=RULE",
        ))
    if as_json:  # times in ISO 8601, as GET /api/decisions/{id} writes them (str() wrote "2026-12-07 16:36:08+00:00")
        console.print_json(json.dumps(found, default=pydantic_core.to_jsonable_python))
        return
    console.print(_explain_tree(found))


def _explain_tree(found: dict[str, Any]) -> Tree:
    """The explanation as a tree; every value in it (event names, targets, provider errors) printed as it is."""
    from rich.tree import Tree

    tree = Tree(styled(
        "[bold]{}[/] ({}) {} for profile {} at {}",
        found["rule_id"], found["rule_version"], found["status"], found["profile_id"], found["decided_at"],
    ))
    evidence = tree.add("because of")
    for touchpoint in found["touchpoints"]:
        evidence.add(plain(f"{touchpoint['event']} at {touchpoint['occurred_at']} ({touchpoint['touchpoint_id']})"))
    if found["judged_again_after"]:
        evidence.add(plain(_judged_again(found["judged_again_after"], found["merged_by"], found["created_at"])))
    if found["timer"]:
        evidence.add(plain(_timer_line(found["timer"])))
    actions = tree.add("actions")
    for action in found["actions"]:
        delivery = f" (delivery {action['delivery_id']})" if action.get("delivery_id") else ""
        actions.add(plain(_action_line(action) + delivery))
    for channel in found["evidence"].get("only_if_left_out", []):
        actions.add(plain(f"{channel}: left out (its only_if did not hold for this touchpoint)"))
    deliveries = tree.add("deliveries")
    for delivery in found["deliveries"]:
        _add_delivery(deliveries, delivery)
    return tree



def _timer_line(timer: dict[str, Any]) -> str:
    """The wait behind an absence decision. A follow-up within it taken in after the timer fired withdrew what had
    not gone: "no follow-up (timer fired)" above a withdrawn nudge read as a contradiction."""
    waited = f"between {timer['anchor_at']} and {timer['due_at']}"
    late = timer.get("late_follow_up")
    if late is None:
        return f"no follow-up {waited} (timer {timer['status']})"
    return (f"no follow-up {waited} had come in when the timer fired; one came late and withdrew "
            f"{', '.join(late['withdrew'])}: {late['reason']}")

def _judged_again(late: dict[str, Any], merged_by: dict[str, Any] | None, decided: datetime) -> str:
    """A decision `triggers.rejudge` made: its touchpoint was judged without the late event first, and again
    when that event arrived, or a merge brought it in (the decision's `created_at`); the tree's head gives the
    touchpoint's own time."""
    came = "arrived" if merged_by is None else (
        f"came in with a merge ({merged_by['event']} at {merged_by['occurred_at']}, {merged_by['touchpoint_id']})")
    return f"judged again at {decided}, when a late {late['event']} (at {late['occurred_at']}) {came} ({late['touchpoint_id']})"


def _add_delivery(deliveries: Tree, delivery: dict[str, Any]) -> None:
    """One delivery with its attempts, where a replay falls among them, and how it ended where no attempt says."""
    node = deliveries.add(plain(
        f"{delivery['channel']} to {delivery['target']} via {delivery['destination_id']}: {delivery['status']}"
    ))
    replayed = delivery["replayed"]
    for attempt in delivery["attempt_log"]:
        if replayed and attempt["attempt_no"] == replayed["after_attempt"] + 1:
            node.add(plain(f"replayed at {replayed['at']} (it had failed or gone to the dead-letter queue)"))
        outcome = f"{attempt['outcome']} {attempt['error_message'] or ''}".rstrip()
        node.add(plain(f"attempt {attempt['attempt_no']} at {attempt['started_at']}: {outcome}"))
    if replayed and replayed["after_attempt"] >= len(delivery["attempt_log"]):
        yet = " yet" if delivery["status"] in DUE_STATUSES else ""
        node.add(plain(f"replayed at {replayed['at']}; no attempt since{yet}"))
    if why := _not_in_the_attempts(delivery):
        node.add(plain(why))


def _not_in_the_attempts(delivery: dict[str, Any]) -> str | None:
    """What the attempts do not show of how a delivery stands: its provider's later word (a Twilio `undelivered`
    after an attempt that was `sent`) and an error no attempt gave (withdrawn unsent: too old to send, consent
    revoked since); None when there is neither. Both as the API shows them (masked when stored)."""
    attempts = delivery["attempt_log"]
    error = delivery["last_error"]
    if attempts and error == attempts[-1]["error_message"]:
        error = None  # the last attempt's line says it
    reported = delivery["provider_status"]
    if reported:
        return f"provider reported {reported}" + (f" ({error})" if error else "")
    return error
