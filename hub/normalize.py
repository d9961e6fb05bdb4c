"""Stage 1 of the pipeline: raw event + mapping -> canonical Touchpoint."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hub.errors import EventDropped, MappingError
from hub.identifiers import normalize_identifier
from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.iso_times import iso_time
from hub.mapping import MAX_LENGTH, OBJECT_FIELDS, STAGES, Mapping
from hub.model import Identifier, RawEvent, Touchpoint, derived_id

# Epoch numbers above this are milliseconds (as HubSpot sends): in seconds it would be the year 5138.
EPOCH_MILLISECONDS_FROM = 100_000_000_000
# How far before its receipt an event's time may lie: further back it is a clock's mistake, not an event, and
# rules looking back a century from it would leave datetime's range. A century leaves room for imported history.
# There is no such span ahead: a time after receipt is taken as the time received (`_sent_time`).
EVENT_TIME_SPAN = timedelta(days=36_525)
# Where a touchpoint whose sender dated it after the hub received it keeps the sender's time (`_with_sender_time`).
SENDER_TIME_KEY = "originalTimestamp"
IDENTIFIER_VALUE_MAX = MAX_LENGTH["identifier value"]


def normalize(
    raw: RawEvent, mapping: Mapping, received_at: datetime, default_region: str, identity: IdentityConfig = DEFAULT_IDENTITY
) -> Touchpoint:
    """Map one raw event; raises MappingError naming the field that could not be mapped, EventDropped on a drop rule."""
    payload = raw.payload
    reason = mapping.drop_reason(payload)
    if reason is not None:
        raise EventDropped(f"dropped by mapping {mapping.version}: {reason}")
    event = mapping.field("event", _trimmed(mapping.pick(mapping.event, payload)))
    if not isinstance(event, str) or not event.strip():
        raise MappingError(f"event: mapping '{mapping.spec.event}' gave {event!r}, expected a non-empty string")
    event = _fitting("event", event.strip())
    identifiers = _identifiers(mapping, payload, default_region, identity)
    if not identifiers:
        raise MappingError("identifiers: no usable identifier (all missing or junk values such as 'null')")
    label = mapping.label(event)
    stage = mapping.field("stage", mapping.pick(mapping.stage, payload)) or label.stage
    if stage not in STAGES:
        raise MappingError(f"stage: {stage!r} is not one of {', '.join(STAGES)}")
    objects = {
        name: mapping.object_field(name, _object(mapping.pick(getattr(mapping, name), payload)), payload) for name in OBJECT_FIELDS
    }
    sent_time = _sent_time(mapping.field("occurred_at", mapping.pick(mapping.occurred_at, payload)), received_at)
    return Touchpoint(
        touchpoint_id=derived_id(raw.source_id, raw.message_id),
        source_id=raw.source_id,
        message_id=raw.message_id,
        kind=label.kind or _fitting("kind", str(mapping.field("kind", mapping.pick(mapping.kind, payload)) or "track")),
        event=event,
        stage=stage,
        moment=_fitting("moment", str(mapping.field("moment", mapping.pick(mapping.moment, payload)) or label.moment)),
        occurred_at=min(sent_time, received_at),
        received_at=received_at,
        identifiers=identifiers,
        properties=objects["properties"],
        traits=objects["traits"],
        context=_with_sender_time(objects["context"], sent_time, received_at),
        mapping_version=mapping.version,
    )


def _identifiers(
    mapping: Mapping, payload: dict[str, Any], region: str, identity: IdentityConfig
) -> tuple[Identifier, ...]:
    """Each usable identifier once. A value longer than the hub stores is left out as a malformed one is: no
    email or phone is that long, and cutting an id instead would link strangers whose ids begin alike."""
    found: dict[Identifier, None] = {}  # ordered set: first expression wins the order
    for type_, expression in mapping.identifiers:
        identifier = normalize_identifier(type_, expression.search(payload), region, identity)
        if identifier is not None and len(identifier.value) <= IDENTIFIER_VALUE_MAX:
            found[identifier] = None
    return tuple(found)


def _trimmed(found: Any) -> Any:
    """A found event name without the spaces around it, before its value map is looked up: the name is stored
    and labelled trimmed, so `"deal.creation "` must be renamed as `"deal.creation"` is."""
    return found.strip() if isinstance(found, str) else found


def _fitting(name: str, value: str) -> str:
    """The value of text field `name` when the hub can store it; a MappingError naming the field otherwise."""
    limit = MAX_LENGTH[name]
    if len(value) > limit:
        raise MappingError(
            f"{name}: {value[:40]!r}... is {len(value)} characters long; the hub keeps at most {limit}: "
            f"map a shorter {name} (a value map, or the long text as a property)"
        )
    return value


def _sent_time(value: Any, received_at: datetime) -> datetime:
    """The time the sender gave the event: ISO-8601 text, or a Unix epoch number in seconds or milliseconds,
    at most `EVENT_TIME_SPAN` before it was received; missing means 'when received'.

    The touchpoint's `occurred_at` is this time, but no later than `received_at`: an event cannot have
    happened after the hub received it, so a later time is the sender's clock running fast (a webhook
    platform's, or an SDK message without `sentAt`, which `segment_times.skew_corrected` cannot correct). Kept,
    it would anchor a cart's two-minute wait ten minutes ahead, and the checkout sent a minute later by a
    source with a correct clock would fall before the cart and not end the wait: a buyer nudged to come
    back. No tolerance for clocks a few seconds apart is safe: the checkout would then have to come more
    than that tolerance after the cart to count. Recent/count windows, caps and quiet hours are likewise
    judged by times that have happened. `received_at` is the inbox row's, so a reprocessed event gets the
    same time again (its id does not depend on it: `derived_id`). However far ahead a time lies (a device's
    clock reset years ahead), it becomes the time received: refused, the event was lost after its 2xx.
    """
    if value is None:
        return received_at
    sent_time = _parsed_time(value)
    if sent_time < received_at - EVENT_TIME_SPAN:
        raise MappingError(
            f"occurred_at: {value!r} is over a century before the hub received it; check the sender's clock"
        )
    return sent_time


def _with_sender_time(context: dict[str, Any], sent_time: datetime, received_at: datetime) -> dict[str, Any]:
    """The touchpoint's context with the sender's own time under `SENDER_TIME_KEY` when `occurred_at` was moved
    back from it, as `segment_times.skew_corrected` keeps a device's time: ops can see whose clock is wrong. A
    value the mapping already put there is the sender's and is left alone."""
    if sent_time <= received_at or SENDER_TIME_KEY in context:
        return context
    return {**context, SENDER_TIME_KEY: sent_time.isoformat()}


def _parsed_time(value: Any) -> datetime:
    """A well-formed time outside the years 1-9999 once in UTC (year 1 at +01:00, an epoch of 1e20) is the
    sender's mistake as a malformed one is: a MappingError, quarantined at once, not an exception to retry."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000 if value >= EPOCH_MILLISECONDS_FROM else value, timezone.utc)
        except (OverflowError, OSError, ValueError):  # which one depends on the platform and the value
            raise _out_of_range(value) from None
    try:
        parsed = iso_time(str(value))
    except ValueError:
        raise MappingError(f"occurred_at: {value!r} is not an ISO-8601 timestamp or Unix epoch number") from None
    try:
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except OverflowError:
        raise _out_of_range(value) from None


def _out_of_range(value: Any) -> MappingError:
    return MappingError(f"occurred_at: {value!r} is not a time within the years 1 to 9999 (UTC)")


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
