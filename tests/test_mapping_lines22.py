"""`touchhub mappings check` names the line and the key ops must fix: keys holding dots (vendor event names,
`fields` paths) and each expression of an `identifiers` or `fields` table."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub.cli import app


def check(mappings_dir: Path) -> str:
    """What `touchhub mappings check` prints of the folder, which must fail."""
    result = CliRunner().invoke(app, ["mappings", "check"], env={"HUB_MAPPINGS_DIR": str(mappings_dir), "COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    return result.output


def edit_line(path: Path, old: str, new: str) -> int:
    """Replace the line `old` of the file with `new` (one line or more); the 1-based number of the last new line."""
    lines = path.read_text().splitlines(keepends=True)
    at = lines.index(old)
    lines[at:at + 1] = new.splitlines(keepends=True)
    path.write_text("".join(lines))
    return at + len(new.splitlines())


@pytest.mark.parametrize("event_before", ["", "  invoice:         {stage: decision, moment: purchase}\n"],
                         ids=["alone", "beside-invoice"])
def test_mappings_check_names_the_line_of_a_bad_label_of_an_event_name_with_dots(
    mappings_dir: Path, event_before: str
) -> None:
    """The key `events.invoice.paid.stage` was split on every dot and looked up as events -> invoice -> paid, so
    the typo was put at the line of `events:` (or of an event `invoice`, when the mapping has one too), not at the
    line of the `invoice.paid` entry ops must fix."""
    path = mappings_dir / "standard_webhooks.yaml"
    line = edit_line(path, "  invoice.paid:    {stage: decision, moment: purchase}\n",
                     event_before + "  invoice.paid:    {stage: decison, moment: purchase}\n")
    assert f"{path}:{line}: events.invoice.paid.stage: Input should be " in check(mappings_dir)


@pytest.mark.parametrize(("old", "new", "key"), [
    ("    - context.traits.phone\n", "    - context.traits.[phone\n", "identifiers.phone.1"),
    ("  device_id: context.device.id\n", "  device_id: context.device.[id\n", "identifiers.device_id"),
    ("  context.channel: channel\n", "  context.channel: '[channel'\n", "fields.context.channel"),
], ids=["identifier-list-item", "identifier", "field"])
def test_mappings_check_names_the_identifier_or_field_whose_expression_does_not_compile(
    mappings_dir: Path, old: str, new: str, key: str
) -> None:
    """The `identifiers` and `fields` tables were checked by one validator each, so a bad expression was reported
    as just `identifiers` (or `fields`) at the line of the table, among the nine identifiers of segment.yaml."""
    path = mappings_dir / "segment.yaml"
    line = edit_line(path, old, new)
    output = check(mappings_dir)
    assert f"{path}:{line}: {key}: Value error, invalid JMESPath expression" in output, output
    assert output.count(f"{path}:") == 1, "one problem: the list is not also tried as one expression"
