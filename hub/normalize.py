"""Stage 1 of the pipeline: raw event + mapping -> canonical Touchpoint."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from hub.errors import MappingError
from hub.identifiers import normalize_identifier
from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.mapping import Mapping
from hub.model import Identifier, RawEvent, Touchpoint, derived_id


def normalize(
    raw: RawEvent, mapping: Mapping, received_at: datetime, default_region: str, identity: IdentityConfig = DEFAULT_IDENTITY
) -> Touchpoint:
    """Map one raw event; raises MappingError naming the field that could not be mapped."""
    payload = raw.payload
    event = mapping.pick(mapping.event, payload)
    if not isinstance(event, str) or not event.strip():
        raise MappingError(f"event: mapping '{mapping.spec.event}' gave {event!r}, expected a non-empty string")
    event = event.strip()
    identifiers = _identifiers(mapping, payload, default_region, identity)
    if not identifiers:
        raise MappingError("identifiers: no usable identifier (all missing or junk values such as 'null')")
    label = mapping.label(event)
    return Touchpoint(
        touchpoint_id=derived_id(raw.source_id, raw.message_id),
        source_id=raw.source_id,
        message_id=raw.message_id,
        kind=str(mapping.pick(mapping.kind, payload) or "track"),
        event=event,
        stage=label.stage,
        moment=label.moment,
        occurred_at=_occurred_at(mapping.pick(mapping.occurred_at, payload), received_at),
        received_at=received_at,
        identifiers=identifiers,
        properties=_object(mapping, mapping.properties, payload),
        traits=_object(mapping, mapping.traits, payload),
        context=_object(mapping, mapping.context, payload),
        mapping_version=mapping.version,
    )


def _identifiers(
    mapping: Mapping, payload: dict[str, Any], region: str, identity: IdentityConfig
) -> tuple[Identifier, ...]:
    found: dict[Identifier, None] = {}  # ordered set: first expression wins the order
    for type_, expression in mapping.identifiers:
        identifier = normalize_identifier(type_, expression.search(payload), region, identity)
        if identifier is not None:
            found[identifier] = None
    return tuple(found)


def _occurred_at(value: Any, received_at: datetime) -> datetime:
    if value is None:
        return received_at
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise MappingError(f"occurred_at: {value!r} is not an ISO-8601 timestamp") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def _object(mapping: Mapping, expression: Any, payload: dict[str, Any]) -> dict[str, Any]:
    value = mapping.pick(expression, payload)
    return value if isinstance(value, dict) else {}
