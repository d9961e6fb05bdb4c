"""What a sample payload becomes under a mapping, without storing anything: for ops, before they save.

The same path as real ingest minus signature and storage: the source parses
the sample, the mapping normalizes each event. Every event gets an outcome,
so a preview also shows which items the source would refuse, which a drop
rule would discard and which the mapping cannot map (and why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from connectors.base import InboundRequest, Registry, Source
from hub.errors import ConfigError, EventDropped, MappingError
from hub.identity_config import IdentityConfig
from hub.mapping import Mapping
from hub.normalize import normalize
from hub.sources import PLACEHOLDER_SECRET, build_source, environment, is_secret, load_entries

PREVIEW_URL = "http://preview.invalid/v1/webhooks/preview"


@dataclass(frozen=True)
class PreviewOutcome:
    index: int
    outcome: str  # touchpoint | dropped | unmappable | refused
    message_id: str | None
    touchpoint: dict[str, Any] | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def preview(
    source: Source, mapping: Mapping, sample: bytes, received_at: datetime, region: str, identity: IdentityConfig
) -> list[PreviewOutcome]:
    """Outcomes, refused items first; raises IngestError when the source refuses the whole sample."""
    parsed = source.parse(InboundRequest("POST", PREVIEW_URL, {"content-type": "application/json"}, sample))
    outcomes = [
        PreviewOutcome(index=problem.index or 0, outcome="refused", message_id=None, reason=f"{problem.field}: {problem.reason}")
        for problem in parsed.problems
    ]
    for index, event in enumerate(parsed.events):
        try:
            touchpoint = normalize(event, mapping, received_at, region, identity)
        except EventDropped as exc:
            outcomes.append(PreviewOutcome(index, "dropped", event.message_id, reason=str(exc)))
        except MappingError as exc:
            outcomes.append(PreviewOutcome(index, "unmappable", event.message_id, reason=str(exc)))
        else:
            document = {**touchpoint.as_document(), "message_id": touchpoint.message_id,
                        "mapping_version": touchpoint.mapping_version}
            outcomes.append(PreviewOutcome(index, "touchpoint", event.message_id, touchpoint=document))
    return outcomes


def offline_source(registry: Registry, folder: Path, name: str) -> tuple[Source, str]:
    """A source for previews outside a running hub: a configured source id, `default`, or a connector slug.

    Missing secrets are replaced by a placeholder: a preview never checks a signature.
    """
    entries = load_entries(folder)
    for where, entry in entries:
        if entry.id == name:
            source = build_source(registry, entry, where, environment(), folder, need_secrets=False)
            return source, entry.mapping or source.default_mapping
    slug = "segment" if name == "default" else name
    connector = registry.sources.get(slug)
    if connector is None:
        known = ", ".join(sorted({"default", *registry.sources, *(entry.id for _, entry in entries)}))
        raise ConfigError(f"source: {name!r} is neither a configured source nor a connector (known: {known})")
    secrets = {
        key: PLACEHOLDER_SECRET for key, field in connector.Config.model_fields.items()
        if is_secret(field.annotation)
    }
    return connector(name, connector.validate_config(f"connector {slug}", secrets), folder), connector.default_mapping

