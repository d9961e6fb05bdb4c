"""What a sample payload becomes under a mapping, without storing anything: for ops, before they save.

The same path as real ingest minus signature and storage: the source parses
the sample, the mapping normalizes each event. Every event gets an outcome,
so a preview also shows which items the source would refuse, which a drop
rule would discard and which the mapping cannot map (and why). A touchpoint
shows every identifier the pipeline would link, as type -> list of values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any

from connectors.base import InboundRequest, Registry, RejectedItem, Source
from hub.errors import ConfigError, EventDropped, MappingError
from hub.identity_config import IdentityConfig
from hub.mapping import Mapping
from hub.model import RawEvent, Touchpoint
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
    source: Source, mapping: Mapping, sample: bytes, received_at: datetime, region: str, identity: IdentityConfig,
    headers: dict[str, str] | None = None,
) -> list[PreviewOutcome]:
    """One outcome per item of the sample, in its order, `index` being the item's place in it; raises
    IngestError when the source refuses the whole sample.

    `headers` are those the platform sends with the sample: a source that takes the message id from a header
    (Standard Webhooks' `webhook-id`) falls back to a hash of the payload without it, so only with it does the
    preview show the touchpoint id the real event gets. They may replace the JSON content type.
    """
    sent = {"content-type": "application/json", **(headers or {})}
    parsed = source.parse(InboundRequest("POST", PREVIEW_URL, sent, sample))
    refused = [_refused(item) for item in parsed.rejected]
    kept = [
        _outcome(index, event, mapping, received_at, region, identity)
        for index, event in zip(_places_of_events(refused), parsed.events)
    ]
    return sorted(refused + kept, key=lambda outcome: outcome.index)


def _refused(item: RejectedItem) -> PreviewOutcome:
    reason = "; ".join(f"{problem.field}: {problem.reason}" for problem in item.problems)
    index = next((problem.index for problem in item.problems if problem.index is not None), 0)
    return PreviewOutcome(index=index, outcome="refused", message_id=None, reason=reason)


def _places_of_events(refused: list[PreviewOutcome]) -> Iterator[int]:
    """Where each event the source kept was in the sample: sources take a request's items in order, each
    becoming one event or one refused item (whose problems give its place), so the events fill the rest."""
    taken = {outcome.index for outcome in refused}
    return (index for index in count() if index not in taken)


def _outcome(
    index: int, event: RawEvent, mapping: Mapping, received_at: datetime, region: str, identity: IdentityConfig
) -> PreviewOutcome:
    try:
        touchpoint = normalize(event, mapping, received_at, region, identity)
    except EventDropped as exc:
        return PreviewOutcome(index, "dropped", event.message_id, reason=str(exc))
    except MappingError as exc:
        return PreviewOutcome(index, "unmappable", event.message_id, reason=str(exc))
    return PreviewOutcome(index, "touchpoint", event.message_id, touchpoint=_document(touchpoint))


def _document(touchpoint: Touchpoint) -> dict[str, Any]:
    """The touchpoint as rules see it and its provenance, with every identifier the pipeline links as
    type -> values (the rules' document keeps one value per type)."""
    identifiers: dict[str, list[str]] = {}
    for identifier in touchpoint.identifiers:
        identifiers.setdefault(identifier.type, []).append(identifier.value)
    return {**touchpoint.as_document(), "identifiers": identifiers, "message_id": touchpoint.message_id,
            "mapping_version": touchpoint.mapping_version}


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

