"""A provider's later word on messages it took: delivery statuses, and the consent a refusal withdraws.

Two places apply them, in their own transactions: the callback route when
the report comes (`hub.api.callbacks`), and the delivery worker when it
records a send whose report came first (`hub.store.held_reports`). Both
take the locks in one order: the message ids', the profiles', then the
delivery rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection

from hub.consent import lock_before_deliveries, set_consent
from hub.model import FALLBACK, Delivery, Identifier, ProviderStatus
from hub.store import consent_changes, held_reports, outbox
from hub.store.profile_views import find_profile_id
from hub.store.withdrawals import FallBack

log = structlog.get_logger(__name__)

Recipient = Callable[[str, str], Identifier | None]  # `Router.recipient`: the identifier a channel's target names
CannotReach = Callable[[ProviderStatus], bool]  # the destination's `CallbackReceiver.cannot_reach`


def changes_people(report: ProviderStatus, cannot_reach: CannotReach | None, fall_back: FallBack | None) -> bool:
    """Whether applying `report` may change its person, so the profiles lock comes first: it revokes consent, or
    says they cannot be reached there and a fallback may be planned."""
    return report.revokes_consent or _falls_back(report, cannot_reach, fall_back)


def _falls_back(report: ProviderStatus, cannot_reach: CannotReach | None, fall_back: FallBack | None) -> bool:
    return fall_back is not None and cannot_reach is not None and cannot_reach(report)


def apply(
    connection: Connection, destination_id: str, reports: Sequence[ProviderStatus], now: datetime,
    recipient: Recipient, *, consent_changes_too: bool = False, cannot_reach: CannotReach | None = None,
    fall_back: FallBack | None = None,
) -> int:
    """Apply reports in order; one that matches no recorded send yet is held for it. Returns how many
    deliveries the fallbacks planned.

    A report that settles its delivery as failed for a reason of its person
    (`cannot_reach`: Twilio's 30005, a number that no longer exists) has the
    rule's next channel planned (`fall_back`), as a refusal at send has: the
    provider took the message, so only its report tells that it reached
    nobody. Only the report that settles the delivery does, so a repeat, or
    a late `sent` after it, plans nothing more.

    A status revokes consent (Twilio's 21610) only in the report that
    settles its delivery. The refusal is Twilio's answer when it handled the
    message, which the first final report brings; a repeat of it (Twilio
    retrying the callback, or a captured one posted again: its signature
    carries no time) finds the delivery settled and is old news. Revoking
    on it would undo whatever the person said since, such as a START, with a
    refusal older than that word; so a first report that comes after the
    person's START (Twilio reports a failure minutes later) revokes nothing
    either. `consent_changes_too`: the caller changes consent in this
    transaction as well, so the profiles lock is taken here, in its place,
    as it is for a report that may plan a fallback.
    """
    held_reports.lock_messages(connection, [(destination_id, report.provider_message_id) for report in reports])
    lock_before_deliveries(connection, consent_changes_too or any(
        changes_people(report, cannot_reach, fall_back) for report in reports
    ))
    planned = 0
    for report in reports:
        delivery = outbox.apply_provider_status(connection, destination_id, report, now)
        if delivery is None:
            log.info("status held until its send is recorded", destination=destination_id,
                     provider_message_id=report.provider_message_id)
            held_reports.hold(connection, destination_id, report, now)
            continue
        if report.revokes_consent and delivery["settled_now"]:
            through = recipient(delivery["channel"], delivery["target"])
            if not _granted_after_it(connection, delivery, through):
                set_consent(connection, delivery["profile_id"], delivery["channel"], False, now, "refused by provider", through)
        if delivery["settled_now"] and FALLBACK in delivery["content"] and _falls_back(report, cannot_reach, fall_back):
            assert fall_back is not None  # `_falls_back` said so
            why = report.error or report.provider_status
            planned += fall_back(connection, _as_delivery(delivery), why, now, unreachable=True)
    return planned


def _as_delivery(row: dict[str, Any]) -> Delivery:
    """The delivery a report settled (`outbox.apply_provider_status`), as fallback planning takes it."""
    return Delivery(row["delivery_id"], *(row[column.name] for column in outbox.DELIVERY_COLUMNS))


def _granted_after_it(connection: Connection, delivery: dict[str, Any], through: Identifier | None) -> bool:
    """Whether the person gave the channel consent back after the message the refusal is about was sent: the
    one holding the address now (`set_consent`'s rule: an unmerge may have given it back to another profile)."""
    sent_at = outbox.last_attempt_at(connection, delivery["delivery_id"])
    if sent_at is None:
        return False
    holder = (find_profile_id(connection, through) if through else None) or delivery["profile_id"]
    return consent_changes.granted_since(connection, holder, delivery["channel"], sent_at)
