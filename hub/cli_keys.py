"""`touchhub keys`: API keys for the admin API, one per person or tool, each with only the scopes it needs.

These commands talk to the store directly (HUB_DATABASE_URL), so a key made
or revoked here counts at once on every hub process sharing that store.
"""

from __future__ import annotations

from enum import Enum

import typer
from rich.table import Table

from hub.cli_store import existing_store
from hub.cli_support import (
    config_problems_exit, console, err_console, fail, id_column, load_settings, plain, styled, utc_text, writing,
)
from hub.clock import utcnow
from hub.store import Store, api_keys
from hub.store.api_keys import SCOPES

app = typer.Typer(
    help="API keys for the admin API (/api/): create one per person or tool with only the scopes it needs, "
    "list them, revoke one.",
    no_args_is_help=True,
)
Scope = Enum("Scope", {name: name for name in SCOPES}, type=str)  # type: ignore[misc]  # typer shows the choices
NAME_LENGTH = 100  # the api_keys.name column


def _store() -> Store:
    with config_problems_exit("The API keys cannot be read"):
        return existing_store(load_settings())


@app.command("create")
def create(
    name: str = typer.Argument(..., help="Who or what the key is for, e.g. grafana or ana; 403 answers name it."),
    scope: list[Scope] = typer.Option(  # type: ignore[valid-type]
        ..., "--scope", "-s",
        help="A scope the key holds (repeat for several): " + ", ".join(f"{n} ({what})" for n, what in SCOPES.items()),
    ),
) -> None:
    """Create an API key and print it; it is shown this once (only its digest is stored).

    Example: [bold]touchhub keys create grafana --scope read[/], then send
    [bold]Authorization: Bearer thk_...[/] to /api/.
    """
    if not name.strip() or len(name) > NAME_LENGTH:
        fail(styled("[red]NAME: {!r} must be 1 to {} characters.[/]", name, NAME_LENGTH), code=2)
    scopes = [chosen.value for chosen in scope]
    with writing(_store(), "The API key cannot be created") as connection:
        key_id, key = api_keys.create(connection, name, scopes, utcnow())
    typer.echo(key)  # alone on stdout, unwrapped, so `KEY=$(touchhub keys create ...)` takes it
    err_console.print(styled(
        "[yellow]This is the only time the key is shown: keep it in a secret manager now. Only its digest is "
        "stored; if it is lost, revoke it ([bold]touchhub keys revoke {}[/]) and create another.[/]",
        key_id,
    ))
    err_console.print(styled("Key {!r} holds: {}", name, ", ".join(sorted(set(scopes)))))


@app.command("list")
def list_keys() -> None:
    """Every API key, revoked ones included, oldest first: id, name, scopes, created, last used, revoked.

    Last used is updated at most once a minute per key.
    """
    with _store().read() as connection:
        keys = api_keys.listed(connection)
    table = Table(title=f"API keys ({len(keys)})")
    id_column(table, "id", (key.key_id for key in keys))
    for column in ("name", "scopes", "created (UTC)", "last used (UTC)", "revoked (UTC)"):
        table.add_column(column, overflow="fold")
    for key in keys:
        table.add_row(
            key.key_id, plain(key.name), ", ".join(key.scopes), utc_text(key.created_at), utc_text(key.last_used_at),
            utc_text(key.revoked_at),
        )
    console.print(table)


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id, as `touchhub keys list` shows it, or the whole key (a leaked one)."),
) -> None:
    """Revoke an API key: requests with it get 401 from now on, on every hub sharing the store."""
    key_id = api_keys.named_id(key_id)
    with writing(_store(), "The API key cannot be revoked") as connection:
        key = api_keys.revoke(connection, key_id, utcnow())
    if key is None:
        fail(styled("[red]No API key has the id {}; `touchhub keys list` shows them.[/]", api_keys.shown_id(key_id)))
    console.print(styled("Key {} ({!r}) revoked at {} UTC.", key.key_id, key.name, utc_text(key.revoked_at)))


