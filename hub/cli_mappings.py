"""`touchhub mappings`: validate the mapping files and preview what a sample payload becomes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from hub.cli_support import config_problems_exit, console, fail, load_settings, plain, styled

if TYPE_CHECKING:
    from hub.identity_config import IdentityConfig
    from hub.mapping import Mapping
    from hub.preview import PreviewOutcome

app = typer.Typer(help="Validate mapping files and preview what a sample payload becomes.", no_args_is_help=True)


@app.command("check")
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


@app.command("preview")
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
    from hub.preview import offline_source, preview

    headers = _preview_headers(header or [])
    settings = load_settings()
    with config_problems_exit("The preview cannot run"):
        instance, mapping_file = offline_source(load_registry(), settings.mappings_dir, source)
        identity = identity_config_in(settings.mappings_dir)
    with config_problems_exit("The mapping is not valid"):  # a draft's problems are the draft's, not the hub's
        mapping = _checked_mapping(draft or settings.mappings_dir / mapping_file, identity)
    try:
        outcomes = preview(
            instance, mapping, sample.read_bytes(), utcnow(), settings.default_phone_region, identity, headers,
        )
    except IngestError as exc:
        fail(
            styled("[red]The source refuses this sample:[/] {}", exc.message),
            *(plain(f"  • {problem.field}: {problem.reason}") for problem in exc.problems),
        )
    if as_json:
        console.print_json(json.dumps([outcome.as_dict() for outcome in outcomes], default=str))
        return
    for outcome in outcomes:
        console.print(_outcome_table(outcome, mapping.version))


def _checked_mapping(path: Path, identity: IdentityConfig) -> Mapping:
    """The mapping in `path` as the hub would take it at start-up or reload, so a preview never shows a draft the
    hub would refuse; ConfigError with each problem at its line, as `mappings check` prints it."""
    from hub.config_files import with_line
    from hub.errors import ConfigError
    from hub.mappings_folder import checked_mapping

    try:
        mapping = checked_mapping(identity, path)
    except ConfigError as exc:
        raise ConfigError([with_line(problem, path) for problem in exc.problems]) from None
    return mapping


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
