"""Provider text as the store's columns take it on both databases (NUL removed, cut to the column's width)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, overload

from sqlalchemy import Column

from hub.model import ProviderStatus
from hub.store.schema import attempts, deliveries, held_reports


def _width(*columns: Column[Any]) -> int | None:
    """The most characters every one of `columns` takes (None: any number, a TEXT column)."""
    widths = [width for column in columns if (width := getattr(column.type, "length", None))]
    return min(widths) if widths else None


# The attempt's text written from what a provider said, and the width of the columns it goes to (the message id
# to both tables' columns, the error message to `deliveries.last_error` too).
ATTEMPT_WIDTHS = {
    "provider_message_id": _width(attempts.c.provider_message_id, deliveries.c.provider_message_id),
    "error_class": _width(attempts.c.error_class),
    "error_message": _width(attempts.c.error_message, deliveries.c.last_error),
}


# A provider's report goes to a delivery, or is held for one first (`hub.store.held_reports`): each of its texts
# fits both tables' columns, so a report held and then applied is the report applied at once.
REPORT_WIDTHS = {
    "provider_message_id": _width(
        attempts.c.provider_message_id, deliveries.c.provider_message_id, held_reports.c.provider_message_id
    ),
    "provider_status": _width(deliveries.c.provider_status, held_reports.c.provider_status),
    "error": _width(deliveries.c.last_error, held_reports.c.error),
}


def storable_report(report: ProviderStatus) -> ProviderStatus:
    """The report as the deliveries and the held reports store it, its texts `fitted`: held as it came, a status
    longer than its column (a status Twilio adds) or an error with a NUL failed on PostgreSQL, and the
    callback answered 500, where the same report applied to a recorded send was taken."""
    return replace(report, **{name: fitted(getattr(report, name), width) for name, width in REPORT_WIDTHS.items()})


def stored_message_id(provider_message_id: str) -> str:
    """A provider's message id as the deliveries, their attempts and the held reports store it (`fitted`): what
    a report, and the lock on its message, are matched by."""
    return fitted(provider_message_id, REPORT_WIDTHS["provider_message_id"])


@overload
def fitted(text: str, width: int | None) -> str: ...


@overload
def fitted(text: None, width: int | None) -> None: ...


@overload
def fitted(text: str | None, width: int | None) -> str | None: ...


def fitted(text: str | None, width: int | None) -> str | None:
    """Provider text as a column takes it on both databases: without NUL characters, which PostgreSQL's text
    refuses (a provider's error message may end in one), and cut to `width` characters, the VARCHAR's length,
    which PostgreSQL enforces (an email's Message-ID, `<delivery id@sender domain>`, outgrows 100 with a long
    domain; the delivery id comes first, so a cut one stays unique)."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text if width is None else text[:width]
