"""The one place the hub asks what time it is (aware UTC, always)."""

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
