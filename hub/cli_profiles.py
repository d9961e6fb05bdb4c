"""`touchhub profiles`: one person as the hub knows them, and why it is one person."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from hub.cli_support import config_problems_exit, console, fail, load_settings, plain, styled
from hub.model import Identifier

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from hub.identity_config import IdentityConfig

app = typer.Typer(help="Inspect profiles and identity resolution: who a profile is, and why it is one person.",
                  no_args_is_help=True)


@app.command("explain")
def profiles_explain(
    profile_id: str = typer.Argument(help="A profile id; an id merged away since is followed to its survivor."),
    show_pii: bool = typer.Option(False, help="Show emails, phones and push tokens in full instead of masked."),
) -> None:
    """Show a profile's identity graph: every identifier, the touchpoint that linked it, merges and refused links.

    Example: [bold]touchhub profiles explain 01J9Z3...[/]; undo a bad merge with
    POST /api/profiles/{id}/unmerge.
    """
    from hub.cli_store import existing_store
    from hub.identity_report import explain_tree
    from hub.store.identity_explain import explain

    with config_problems_exit("The profile cannot be explained"):
        store = existing_store(load_settings())
    with store.read() as connection:
        graph = explain(connection, profile_id)
    store.dispose()
    if graph is None:
        fail(styled("[red]No profile {!r}.[/]", profile_id))
    console.print(explain_tree(graph, show_pii=show_pii))


@app.command("show")
def profiles_show(
    profile: str = typer.Argument(
        help="A profile id (one merged away since shows its survivor), or an identifier as TYPE:VALUE, "
        "e.g. email:jane@example.com or user_id:42.",
    ),
    show_pii: bool = typer.Option(False, help="Show emails, phones and push tokens in full instead of masked."),
) -> None:
    """Show a profile: its traits, its identifiers (newest first) and the ids merged into it.

    Example: [bold]touchhub profiles show email:jane@example.com[/]; why it is one person:
    [bold]touchhub profiles explain ID[/].
    """
    from hub.cli_store import existing_store
    from hub.identity_config import identity_config_in

    settings = load_settings()
    with config_problems_exit("The profile cannot be shown"):
        config = identity_config_in(settings.mappings_dir)
        identifier = _identifier_argument(profile, config, settings.default_phone_region)
        store = existing_store(settings)
    with store.read() as connection:
        view = _profile_of(connection, profile, identifier)
    store.dispose()
    if view is None:
        fail(styled(
            "[red]No profile {}.[/] Give a profile id (the admin API, `touchhub deliveries list`) or an identifier as "
            "TYPE:VALUE, e.g. email:jane@example.com; types: {}.", repr(profile), ", ".join(config.types),
        ))
    for table in _profile_tables(view, show_pii=show_pii, region=settings.default_phone_region):
        console.print(table)


def _identifier_argument(text: str, config: IdentityConfig, region: str) -> Identifier | None:
    """`text` as an identifier, normalized as the pipeline stores it, when it is written TYPE:VALUE; else None (a
    profile id, which never holds a colon). A type mappings/identity.yaml does not declare, or a value no
    identifier can have, is a bad parameter."""
    from hub.identifiers import normalize_identifier

    type_, colon, value = text.partition(":")
    if not colon:
        return None
    undeclared = config.undeclared(type_)
    if undeclared is not None:
        raise typer.BadParameter(undeclared, param_hint="PROFILE")
    identifier = normalize_identifier(type_, value, region, config)
    if identifier is None:
        raise typer.BadParameter(f"{value!r} is not a usable {type_} (missing, junk or malformed)", param_hint="PROFILE")
    return identifier


def _profile_of(connection: Connection, profile: str, identifier: Identifier | None) -> dict[str, Any] | None:
    """The view of the profile named by id, or of the one holding `identifier`."""
    from hub.store.profile_views import find_profile_id, profile_view

    profile_id = find_profile_id(connection, identifier) if identifier is not None else profile
    return profile_view(connection, profile_id) if profile_id else None


def _profile_tables(view: dict[str, Any], *, show_pii: bool, region: str) -> list[Table]:
    """The profile, its traits and its identifiers; emails and phones masked, push tokens cut short, unless
    `show_pii`, as `profiles explain` and the delivery log show them. A trait is masked as the identifier it
    holds, and as a phone if ingest reads it as one in `region` (HUB_DEFAULT_PHONE_REGION)."""
    import json

    from hub.pii import mask_recipient, mask_traits

    summary = Table(title=f"Profile {view['profile_id']}", show_header=False, title_justify="left")
    summary.add_row("created (UTC)", view["created_at"].strftime("%Y-%m-%d %H:%M:%S"))
    summary.add_row("updated (UTC)", view["updated_at"].strftime("%Y-%m-%d %H:%M:%S"))
    summary.add_row("merged ids", plain(", ".join(view["merged_profile_ids"]) or "none"))
    traits = Table(title=f"Traits ({len(view['traits'])})", title_justify="left")
    traits.add_column("trait", no_wrap=True)
    traits.add_column("value", overflow="fold")
    held = [Identifier(type_, value) for type_, values in view["identifiers"].items() for value in values]
    shown_traits = view["traits"] if show_pii else mask_traits(view["traits"], held, region)
    for name, shown in sorted(shown_traits.items()):
        traits.add_row(plain(name), plain(shown if isinstance(shown, str) else json.dumps(shown, default=str, ensure_ascii=False)))
    identifiers = Table(title="Identifiers (newest first)", title_justify="left")
    identifiers.add_column("type", no_wrap=True)
    identifiers.add_column("value", overflow="fold")
    for type_, values in sorted(view["identifiers"].items()):
        for value in values:
            identifiers.add_row(plain(type_), plain(value if show_pii else mask_recipient(value, Identifier(type_, value))))
    return [summary, traits, identifiers]
