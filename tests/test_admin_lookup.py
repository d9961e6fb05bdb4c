"""GET /api/profiles/lookup normalizes a value as the pipeline stored it, custom identifier types included."""

from __future__ import annotations

from pathlib import Path

from connectors.sandbox.providers import SandboxProviders
from tests.conftest import make_settings, message, serve_hub


def test_a_custom_identifier_is_looked_up_as_identity_yaml_normalizes_it(
    mappings_dir: Path, tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """identity.yaml declares `loyalty_id` lower-cased, so the pipeline stores "GOLD-42" as "gold-42"; the
    lookup normalized with the built-in defaults only, and found nobody for "GOLD-42"."""
    segment = mappings_dir / "segment.yaml"
    segment.write_text(segment.read_text().replace("identifiers:\n", "identifiers:\n  loyalty_id: properties.loyalty\n", 1))
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        running.send(message(userId="u-1", event="Order Completed", properties={"loyalty": "GOLD-42"}))
        running.settle()
        found = running.admin("/api/profiles/lookup", type="loyalty_id", value="GOLD-42")
        assert found["identifiers"]["loyalty_id"] == ["gold-42"]
