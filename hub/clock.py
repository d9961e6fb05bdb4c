"""The one place the hub asks what time it is (aware UTC, always)."""

from datetime import datetime, timezone


# Later than any event's time: an open end of a time range, and what a pinned trait is stamped with.
END_OF_TIME = datetime.max.replace(tzinfo=timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
