"""`touchhub profiles`: one person as the hub knows them, and why it is one person."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from hub.cli_support import config_problems_exit, console, fail, load_settings, plain, styled, utc_text
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
    console.print(_consent_changes_table(graph["consent_changes"]))


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


@app.command("consent")
def profiles_consent(
    profile: str = typer.Argument(help="A profile id, or an identifier as TYPE:VALUE, e.g. email:jane@example.com."),
    channel: str = typer.Option(..., help="The channel, as routes.yaml names it: email, sms, push ..."),
    granted: bool = typer.Option(..., "--grant/--revoke", help="Give the channel back, or revoke it."),
    reason: str = typer.Option(..., help="Why (the person asked support, a ticket number); recorded with your user."),
) -> None:
    """Grant or revoke a channel's consent for a person, as ops are asked to: the same change as the admin API's
    PUT /api/profiles/{id}/consent/{channel}. A revocation holds against any later trait; a grant lets messages
    go again (those already failed as blocked by consent are not resent) until the person opts out again.

    Example: [bold]touchhub profiles consent email:jane@example.com --channel email --grant --reason "asked by phone"[/]
    """
    from hub.clock import utcnow
    from hub.cli_store import existing_store
    from hub.cli_support import writing
    from hub.consent import ops_reason_problem, set_by_ops, unknown_channel
    from hub.identity_config import identity_config_in
    from hub.routes_file import load_routes

    problem = ops_reason_problem(reason)
    if problem:
        raise typer.BadParameter(problem, param_hint="--reason")
    settings = load_settings()
    with config_problems_exit("Consent cannot be changed"):
        config = identity_config_in(settings.mappings_dir)
        problem = unknown_channel(channel, load_routes(settings.mappings_dir / "routes.yaml"))
        if problem:
            raise typer.BadParameter(problem, param_hint="--channel")
        identifier = _identifier_argument(profile, config, settings.default_phone_region)
        store = existing_store(settings)
    with writing(store, "Consent cannot be changed") as connection:
        profile_id = _profile_id_of(connection, profile, identifier)
        who = f"CLI {_user()}"
        state = set_by_ops(connection, profile_id, channel, granted, reason, who, utcnow(), identifier) if profile_id else None
    store.dispose()
    if not state:
        fail(styled("[red]No profile {}[/] (or it was forgotten); see [bold]touchhub profiles show[/].", repr(profile)))
    console.print(_consent_table(state))


def _user() -> str:
    """Who runs the command, as the OS knows them; a container may have no name for its user."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "(unknown user)"


def _consent_table(state: dict[str, Any]) -> Table:
    table = Table(title=f"Consent of profile {state['profile_id']}", show_header=False, title_justify="left")
    table.add_row("channel", plain(state["channel"]))
    table.add_row("consent", "granted" if state["granted"] else "revoked")
    table.add_row("recorded", plain(state["reason"]))
    table.add_row("at (UTC)", utc_text(state["changed_at"]))
    return table


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
    """The view of the profile named by id, or of the one holding `identifier`, with its consent changes."""
    from hub.store.consent_changes import history
    from hub.store.profile_views import profile_view

    profile_id = _profile_id_of(connection, profile, identifier)
    view = profile_view(connection, profile_id) if profile_id else None
    return view and {**view, "consent_changes": history(connection, view["profile_id"])}


def _profile_id_of(connection: Connection, profile: str, identifier: Identifier | None) -> str | None:
    """`profile` itself, a profile id, or the profile holding `identifier` (the TYPE:VALUE it was written as)."""
    from hub.store.profile_views import find_profile_id

    return find_profile_id(connection, identifier) if identifier is not None else profile


def _profile_tables(view: dict[str, Any], *, show_pii: bool, region: str) -> list[Table]:
    """The profile, its traits and its identifiers; emails and phones masked, push tokens cut short, unless
    `show_pii`, as `profiles explain` and the delivery log show them. A trait is masked as the identifier it
    holds, and as a phone if ingest reads it as one in `region` (HUB_DEFAULT_PHONE_REGION)."""
    import json

    from hub.pii import mask_recipient, mask_traits

    summary = Table(title=f"Profile {view['profile_id']}", show_header=False, title_justify="left")
    summary.add_row("created (UTC)", utc_text(view["created_at"]))
    summary.add_row("updated (UTC)", utc_text(view["updated_at"]))
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
    return [summary, traits, identifiers, _consent_changes_table(view["consent_changes"])]


def _consent_changes_table(changes: list[dict[str, Any]]) -> Table:
    """Who changed a channel's consent and why (an unsubscribe link, an SMS STOP, ops), oldest first: what a
    trait alone cannot say."""
    table = Table(title=f"Consent changes ({len(changes)})", title_justify="left")
    for column in ("at (UTC)", "channel", "consent", "why"):
        table.add_column(column, overflow="fold")
    for change in changes:
        table.add_row(
            utc_text(change["at"]), plain(change["channel"]),
            "granted" if change["granted"] else "revoked", plain(change["reason"]),
        )
    return table
