"""When a Segment message happened: its times read as Segment reads them, and corrected for the device's clock.

The Segment source (and `touchhub triggers test`, through `time_of`) reads
times here: ISO-8601 and RFC 3339 (`hub.iso_times`), naive as UTC; a
request's `sentAt` (the batch's, or its latest message's when it is dated
ahead) moves each message's `timestamp` by the device clock's error, as
Segment's API does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from hub.errors import BadPayloadError, ItemProblem
from hub.iso_times import iso_time
from hub.normalize import EVENT_TIME_SPAN


def time_of(value: Any) -> datetime | None:
    """An ISO-8601 text as a UTC datetime (naive is UTC), parsed once; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return _utc(iso_time(value))
    except ValueError:
        return None


def _client_time(item: dict[str, Any]) -> Any:
    """The message's time by the sending device's clock, as sent (not yet checked to be a time)."""
    return item.get("originalTimestamp") or item.get("timestamp")


def latest_if_ahead(items: list[Any], received_at: datetime) -> str | None:
    """For a request without `sentAt`: its latest message time if that is after the hub received it, as the
    time it was sent, or None.

    A sender cannot send a message before it happened, so a request dated
    ahead came from a clock running fast by at least that much. Taken as
    `sentAt`, it moves every message of the request back by the same amount
    (`skew_corrected`), keeping their order and spacing. Each message pulled
    back to the time received on its own (`normalize`) would meet the others
    at one instant, where a checkout sent with its cart no longer ends the
    cart's wait. Messages with a `sentAt` of their own keep it.

    A request whose times lie further apart than `EVENT_TIME_SPAN` is not
    one clock's error (a message dated in the year 9999 beside today's): moved
    back as far, its earliest message would be refused as older than the hub
    takes, after its 2xx. Then None: `normalize` takes each message dated
    ahead at the time received.
    """
    unstamped = [item for item in items if isinstance(item, dict) and "receivedAt" not in item and "sentAt" not in item]
    times = [moment for moment in (time_of(_client_time(item)) for item in unstamped) if moment is not None]
    latest = max(times, default=None)
    if latest is None or latest <= received_at or latest - min(times) > EVENT_TIME_SPAN:
        return None
    return latest.isoformat()


def skew_corrected(
    item: dict[str, Any], sent_at: Any, received_at: datetime, index: int | None
) -> dict[str, Any] | ItemProblem:
    """The message with `timestamp` corrected for the sending device's clock, as Segment's API does:
    `receivedAt - (sentAt - originalTimestamp)`, the device's own time kept as `originalTimestamp`.

    A phone whose clock is three minutes slow otherwise sends a cart event that
    is already three minutes old: its two-minute wait is over on arrival, and
    the nudge goes out while the person is still shopping. The correction
    keeps the gap between the event and its sending (an offline queue, a
    historical import), so it moves a time only by the clock's error and the
    network's delay. Messages that already passed through Segment or
    RudderStack (a Webhooks destination) carry their `receivedAt` and a
    corrected `timestamp`: they are left as they are.

    A message sent thousands of years after its event (sentAt 9999, timestamp
    0001) has no time to correct to: no clock is that wrong, and the result
    would fall before the year 1. It is refused, naming sentAt, rather than
    kept with a time the sender never meant.
    """
    device_time = _client_time(item)
    sent, happened = time_of(sent_at), time_of(device_time)
    if "receivedAt" in item or sent is None or happened is None:
        return item
    offset = sent - happened
    try:
        corrected = received_at - offset
    except OverflowError:
        return ItemProblem(index, "sentAt", f"{sent_at!r} is too far from the event's time {device_time!r} "
                                            "to correct it for the device's clock")
    return {**item, "originalTimestamp": device_time, "timestamp": corrected.isoformat()}


def _utc(moment: datetime) -> datetime:
    """Naive times, which the spec's ISO-8601 allows, are UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment




def batch_sent_at(document: dict[str, Any]) -> Any:
    """The batch's `sentAt` (where analytics-python, analytics-java and RudderStack's SDKs put it), refused when it
    is no time: ignored, its messages would go uncorrected for the device's clock with no word of why. Null is
    absent, as SDKs that write every unset field send it."""
    sent_at = document.get("sentAt")
    if sent_at is not None and not is_timestamp(sent_at):
        raise BadPayloadError(f"sentAt: the batch's {sent_at!r} is not an ISO-8601 timestamp; send the time the "
                              "batch was sent, or no sentAt")
    return sent_at


def is_timestamp(value: Any) -> bool:
    return time_of(value) is not None
