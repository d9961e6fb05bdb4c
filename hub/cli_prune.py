"""`touchhub prune`: delete now what the retention lets go of (a running hub does it hourly)."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.cli_store import existing_store
from hub.cli_support import config_problems_exit, console, fail, load_settings, store_busy_exit


def prune_command(
    older_than_days: int = typer.Option(
        None, "--older-than-days", min=1, help="Delete what is older than this many days (default HUB_RETENTION_DAYS)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be deleted."),
) -> None:
    """Delete raw events, quarantined bodies, delivery attempts, settled timers, held provider reports and applied consent replies past the retention.

    Touchpoints, profiles, decisions, deliveries and consent are kept. A hub running the timers worker does this hourly; run it after lowering HUB_RETENTION_DAYS, or with [bold]--dry-run[/] to see what would go. `touchhub replay` cannot go back further than what is kept.

    Example: [bold]touchhub prune --older-than-days 30 --dry-run[/].
    """
    from hub.retention import prune, retention_cutoff
    from hub.store.retention import expired_counts

    settings = load_settings()
    days = older_than_days or settings.retention_days
    if not days:
        fail("[yellow]HUB_RETENTION_DAYS=0 keeps everything; give --older-than-days to prune anyway.[/]", code=2)
    with config_problems_exit("The store cannot be pruned"):
        store = existing_store(settings)
    try:
        cutoff = retention_cutoff(days)
        counts = expired_counts(store, cutoff)
        if not dry_run and any(counts.values()):
            columns = (TextColumn("Deleting rows older than {task.fields[days]} days"), BarColumn(),
                       MofNCompleteColumn(), TimeElapsedColumn())
            with store_busy_exit(store, "The store cannot be pruned"), Progress(*columns, console=console) as progress:
                task = progress.add_task("prune", total=sum(counts.values()), days=days)
                # The table shows what went: the hub's own hourly prune may have taken some since the count.
                counts = {**dict.fromkeys(counts, 0), **prune(store, cutoff, lambda deleted: progress.advance(task, deleted))}
    finally:
        store.dispose()
    before = cutoff.isoformat(" ", "minutes")[:16]  # not strftime, which writes the year 1 (a cutoff kept for ever) as 1
    table = Table(title=f"{'Would delete' if dry_run else 'Deleted'}: rows from before {before} UTC")
    table.add_column("rows")
    table.add_column("count", justify="right")
    for label, count in counts.items():
        table.add_row(label, str(count))
    console.print(table)
