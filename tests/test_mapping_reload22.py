"""A mapping edit checked the same way at start-up, at hot reload and in `touchhub mappings check|preview`: an
identifier type identity.yaml does not declare (the typo `emial`) is refused everywhere, at the mapping's line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hub import mapping_catalog
from hub.cli import app
from hub.errors import ConfigError
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import ADMIN_TOKEN, RunningHub, logs_of, make_settings
from tests.test_mapping_edges import touch_later

UNDECLARED = "identifiers.emial: not declared in identity.yaml; fix the type or declare it under identifier_types"


def cli(mappings_dir: Path, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"HUB_MAPPINGS_DIR": str(mappings_dir), "COLUMNS": "300"})


def add_typo(path: Path) -> int:
    """`emial: traits.email` added as the first identifier of the mapping in `path`; returns its line."""
    lines = path.read_text().splitlines(keepends=True)
    at = lines.index("identifiers:\n") + 1
    lines.insert(at, "  emial: traits.email\n")
    path.write_text("".join(lines))
    return at + 1


def test_hot_reload_refuses_a_mapping_with_an_identifier_type_identity_yaml_does_not_declare(
    tmp_path: Path, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload ran only the loader: the typo was taken live (addresses stored unnormalized under `emial`, where no
    route reads them) and the next restart refused to start. Now the save is refused as start-up refuses it, the
    last good mapping stays and the log says why, once."""
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, mappings_reload_seconds=60)
    hub = Hub(settings)
    try:
        good = hub.mappings["default"].version
        path = mappings_dir / "segment.yaml"
        line = add_typo(path)
        touch_later(path)
        with pytest.raises(ConfigError, match="identifiers.emial"):  # what a restart meets
            Hub(settings)
        with logs_of(monkeypatch, mapping_catalog) as logs:
            assert hub.mappings.refresh() == ["segment.yaml"]
            assert hub.mappings.refresh() == []  # the same save is not refused (nor logged) again
        assert hub.mappings["default"].version == good
        [refused] = logs
        assert refused["event"] == "mapping change refused; the last good version stays active"
        assert refused["problems"] == [f"{path}:{line}: {UNDECLARED}"]
    finally:
        hub.stop()


def test_mappings_check_names_the_mapping_line_of_an_undeclared_identifier_type(mappings_dir: Path) -> None:
    """The problem was put on identity.yaml, with no line or key of the mapping where the typo is, and without the
    two ways out (fix the mapping, or declare the type)."""
    path = mappings_dir / "segment.yaml"
    line = add_typo(path)
    result = cli(mappings_dir, "mappings", "check")
    assert result.exit_code == 1
    assert f"{path}:{line}: {UNDECLARED}" in result.output, result.output


def test_preview_of_a_draft_that_does_not_validate_names_its_line_and_does_not_say_the_hub_cannot_start(
    mappings_dir: Path, tmp_path: Path
) -> None:
    """An invalid draft was reported as "The hub cannot start" (the running hub is fine: only the unsaved draft is
    wrong), its problems without their line; a draft with an undeclared identifier type was previewed as if the
    hub would take it."""
    draft = tmp_path / "draft.yaml"
    lines = (mappings_dir / "segment.yaml").read_text().splitlines(keepends=True)
    at = next(number for number, line in enumerate(lines, 1) if line.startswith("  Product Viewed:"))
    lines[at - 1] = lines[at - 1].replace("stage: consideration", "stage: considration")
    draft.write_text("".join(lines))
    sample = tmp_path / "event.json"
    sample.write_text(json.dumps({"type": "track", "event": "Product Viewed", "userId": "u1", "messageId": "m-1"}))
    invalid = cli(mappings_dir, "mappings", "preview", "default", str(sample), "--mapping", str(draft))
    assert invalid.exit_code == 2
    assert f"{draft}:{at}: events.Product Viewed.stage" in invalid.output, invalid.output
    assert "The hub cannot start" not in invalid.output and "The mapping is not valid" in invalid.output
    draft.write_text((mappings_dir / "segment.yaml").read_text())
    line = add_typo(draft)
    undeclared = cli(mappings_dir, "mappings", "preview", "default", str(sample), "--mapping", str(draft))
    assert undeclared.exit_code == 2
    assert f"{draft}:{line}: {UNDECLARED}" in undeclared.output, undeclared.output


def test_preview_api_refuses_a_draft_with_an_identifier_type_identity_yaml_does_not_declare(
    running_hub: RunningHub,
) -> None:
    """The console previewed such a draft as the hub would map it, though saving it is refused."""
    draft = yaml.safe_load((PROJECT_MAPPINGS / "segment.yaml").read_text())
    draft["identifiers"]["emial"] = "traits.email"
    answer = running_hub.client.post(
        "/api/mappings/default/preview", json={"sample": {"type": "identify", "userId": "u1"}, "mapping": draft},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == [f"mapping.{UNDECLARED}"]
