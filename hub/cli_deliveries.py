"""`touchhub deliveries`: read the delivery log and work the dead-letter queue.

These commands talk to the store directly (HUB_DATABASE_URL), so they work
whether or not a hub is running; a running hub's delivery workers pick up
replayed deliveries at their next poll.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Mapping
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any

import pydantic_core
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.cli_store import delivery_recipients, existing_store
from hub.cli_support import (
    config_problems_exit, console, fail, id_column, load_settings, plain, styled, utc_text, writing,
)
from hub.clock import utcnow
from hub.routes_file import addressee_of, load_routes
from hub.store import Store, delivery_log, delivery_replay, outbox
from hub.store.keyset import Key
from hub.store.profile_views import for_live_profile

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from hub.routes_file import ChannelRoute

app = typer.Typer(
    help="The delivery log and the dead-letter queue: list deliveries, replay dead ones.", no_args_is_help=True
)
Status = Enum("Status", {name: name for name in outbox.STATUSES}, type=str)  # type: ignore[misc]  # typer refuses others
REPLAY_CHUNK = 100  # deliveries replayed per transaction: short write locks, a live progress bar
REFUSED_REPLAY = {  # why `replay --all` left a dead delivery, by what `delivery_replay.replay` returned
    delivery_replay.FORGOTTEN: "its person was forgotten (erased on request)",
    delivery_replay.MISADDRESSED: "an unmerge withdrew it (it would reach or carry the wrong person)",
    delivery_replay.HANDED_ON: "its devices are another person's now",
    delivery_replay.ADDRESS_GONE: "its address is no longer the person's (bounced, unregistered)",
    delivery_replay.CONSENT_WITHDRAWN: "its person revoked consent to its channel (replayable once they consent again)",
    delivery_replay.FOLLOWED_UP: "its person did what the nudge waited for (a late follow-up)",
    delivery_replay.FELL_BACK: "its rule's fallback channel went in its place (it would message the person twice)",
    delivery_replay.UNROUTED_CHANNEL: "its channel is no longer routed in routes.yaml (add the route back to replay it)",
}


def _store() -> Store:
    """The hub's store, only if it is there (`hub.cli_store`): an empty log read from the wrong folder would
    say the hub sent nothing."""
    with config_problems_exit("The delivery log cannot be read"):
        return existing_store(load_settings())


@app.command("list")
def list_deliveries(
    status: Status = typer.Option(None, help="Only deliveries with this status; dead is the dead-letter queue."),  # type: ignore[valid-type]
    destination: str = typer.Option(None, help="Only this destination id, e.g. twilio_sms."),
    channel: str = typer.Option(None, help="Only this channel: sms, email, push, chat, webhook, crm."),
    profile: str = typer.Option(None, help="Only deliveries to this profile id (or, merged since, its survivor's)."),
    limit: int = typer.Option(50, min=1, max=1000, help="Show at most this many, newest first: a page."),
    cursor: str = typer.Option(
        None, help="Show the page after the one that printed this cursor (its last line, or its --json next_cursor)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help='Print the page as JSON: {"deliveries": [...], "next_cursor": ...}, as GET /api/deliveries answers.'
    ),
) -> None:
    """Show deliveries, newest first, with their attempts and last error (recipients masked), a page at a time.

    Example: [bold]touchhub deliveries list --status dead[/] shows the dead-letter queue; the line under the table
    gives the command for the page after it.
    """
    if profile is not None and not profile.strip():  # it was read as no filter, and listed everyone's deliveries
        raise typer.BadParameter("needs a value: a profile id, e.g. from `touchhub profiles show TYPE:VALUE`", param_hint="--profile")
    after = _after(cursor)
    with config_problems_exit("The delivery log cannot be read"):
        settings = load_settings()
        routes, recipient = delivery_recipients(settings.mappings_dir)
    search = partial(delivery_log.search, limit=limit + 1, status=status and status.value, channel=channel, destination_id=destination,
                     recipient=recipient, region=settings.default_phone_region, after=after)
    with _store().read() as connection:  # a profile id merged away since shows its survivor's, as the admin API does
        _refuse_unknown(connection, routes, destination=destination, channel=channel)
        rows = for_live_profile(connection, profile, lambda c, live: search(c, profile_id=live))
    found, next_cursor = delivery_log.PAGES.page(rows, limit)
    if as_json:
        console.print_json(json.dumps({"deliveries": found, "next_cursor": next_cursor}, default=pydantic_core.to_jsonable_python))
        return
    _delivery_table(found)
    if next_cursor is not None:
        options = {"--status": status and status.value, "--destination": destination, "--channel": channel,
                   "--profile": profile, "--limit": limit}
        console.print(styled("Older deliveries: {}", _next_page(options, next_cursor)), soft_wrap=True)


def _after(cursor: str | None) -> Key | None:
    """The key of `--cursor` (`delivery_log.PAGES`, as the admin API reads its `cursor`), or exit 2 saying what to
    pass: an altered cursor must not page from a wrong place, nor reach the store as a wrong value."""
    try:
        return delivery_log.PAGES.after(cursor)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{exc}. Copy it whole from the line under a page's table, or from its --json next_cursor", param_hint="--cursor"
        ) from None


def _next_page(options: Mapping[str, object | None], cursor: str) -> str:
    """The command that prints the page after this one: the same filters and limit (a cursor pages only the list it
    came from), then --cursor; quoted for a shell, so a filter value with a space pastes back whole."""
    words = ["touchhub", "deliveries", "list"]
    for option, value in options.items():
        if value is not None:
            words += [option, str(value)]
    return shlex.join([*words, "--cursor", cursor])


def _delivery_table(found: list[dict[str, Any]]) -> None:
    """One page of the log as a table; ids whole on a line (`id_column`), to be copied into `deliveries replay`."""
    table = Table(title=f"Deliveries ({len(found)} shown)")
    id_column(table, "delivery id", (item["delivery_id"] for item in found))
    for column in ("planned (UTC)", "channel", "destination", "to", "status", "attempts", "last error"):
        table.add_column(column, overflow="fold")
    for item in found:
        table.add_row(*map(plain, (
            item["delivery_id"], utc_text(item["created_at"]), item["channel"],
            item["destination_id"], item["target"], item["status"], item["attempts"], item["last_error"] or "",
        )))
    console.print(table)


@app.command("replay")
def replay(
    delivery_id: str = typer.Argument(None, help="The delivery to send again (dead or failed)."),
    all_dead: bool = typer.Option(False, "--all", help="Replay every dead delivery (optionally of one --destination)."),
    destination: str = typer.Option(None, help="With --all: only dead deliveries of this destination id."),
) -> None:
    """Queue dead (or failed) deliveries again, each with a fresh retry budget.

    Examples: [bold]touchhub deliveries replay 6f1c...[/], or after fixing Twilio credentials
    [bold]touchhub deliveries replay --all --destination twilio_sms[/].
    """
    if (delivery_id is None) == (not all_dead) or (destination and not all_dead):
        fail("[red]Give one delivery id, or --all (optionally with --destination).[/]", code=2)
    with config_problems_exit("The dead-letter queue cannot be replayed"):
        routes = load_routes(load_settings().mappings_dir / "routes.yaml")
    recipient = partial(addressee_of, routes)  # a replay goes only to addresses still held
    store = _store()
    if delivery_id is not None:
        with writing(store, "The delivery cannot be replayed") as connection:
            previous = delivery_replay.replay(connection, delivery_id, utcnow(), recipient)
        if previous is None:
            fail(styled("[red]No delivery {!r}.[/]", delivery_id))
        if previous not in delivery_replay.REPLAYABLE_STATUSES:
            why = delivery_replay.why_not_replayed(delivery_id, previous)
            fail(styled("[yellow]{}{}.[/]", why[0].upper(), why[1:]))
        console.print(styled("Delivery {} ({}) queued again.", delivery_id, previous))
        return
    with store.read() as connection:
        _refuse_unknown(connection, routes, destination=destination)
        ids = delivery_replay.ids_with_status(connection, "dead", destination)
    columns = (TextColumn("Replaying dead deliveries"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    outcomes: Counter[str | None] = Counter()  # what `replay` returned: the status before, or why not
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("replay", total=len(ids))
        for start in range(0, len(ids), REPLAY_CHUNK):
            chunk = ids[start : start + REPLAY_CHUNK]
            with writing(store, "The dead-letter queue cannot be replayed") as connection:
                outcomes.update(delivery_replay.replay(connection, each, utcnow(), recipient) for each in chunk)
            progress.advance(task, len(chunk))
    _replay_summary(outcomes)


def _refuse_unknown(
    connection: Connection, routes: Mapping[str, ChannelRoute], *, destination: str | None = None,
    channel: str | None = None,
) -> None:
    """Exit 2 naming the ids there are when `destination` or `channel` is none this hub has, nor its delivery log
    (`delivery_log.unmatched_filters`), as GET /api/deliveries answers 400."""
    if destination is None and channel is None:  # nothing to check: no registry to load, inside the read
        return
    from connectors.base import load_registry

    refused = delivery_log.unmatched_filters(
        connection, load_registry().destinations, routes, destination=destination, channel=channel
    )
    if refused:
        raise typer.BadParameter("; ".join(refused.values()), param_hint=[f"--{name}" for name in refused])


def _replay_summary(outcomes: Counter[str | None]) -> None:
    """How many went back to the queue and, by reason, how many may never go again (an address that bounced,
    a forgotten person): a count of all of them as queued was untrue."""
    queued = sum(count for outcome, count in outcomes.items() if outcome in delivery_replay.REPLAYABLE_STATUSES)
    console.print(f"{queued} dead deliveries queued again.")
    refused = {outcome: count for outcome, count in outcomes.items() if outcome not in delivery_replay.REPLAYABLE_STATUSES}
    if refused:
        table = Table(title="Not replayed")
        table.add_column("why")
        table.add_column("deliveries", justify="right")
        for outcome, count in sorted(refused.items(), key=lambda item: str(item[0])):
            table.add_row(REFUSED_REPLAY.get(outcome, str(outcome)), str(count))
        console.print(table)
