"""Channel consent on a profile, changed by what recipients tell providers.

Consent is a profile trait (`<channel>_opt_out`), the form routing already
honours (`hub.routing._consent_revoked`), so an unsubscribe link, an SMS STOP
or a provider's "unsubscribed" refusal stops the next message at planning
time. The change is stamped with the time it happened: a later identify call
carrying an older `sms_opt_out: false` does not undo it.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import Connection

from hub.model import Identifier
from hub.store.identity_graph import SqlIdentityGraph, find_profile_id, live_profile_id
from hub.store.sql import lock_profiles

log = structlog.get_logger(__name__)


def opt_out_trait(channel: str) -> str:
    return f"{channel}_opt_out"


def set_consent(connection: Connection, profile_id: str, channel: str, granted: bool, at: datetime, reason: str) -> bool:
    """Grant or revoke `channel` for the profile (or the profile it was merged into); False if there is none."""
    lock_profiles(connection)
    live_id = live_profile_id(connection, profile_id)
    if live_id is None:
        return False
    SqlIdentityGraph(connection).update_traits(live_id, {opt_out_trait(channel): not granted}, at)
    log.info("consent changed", profile_id=live_id, channel=channel, granted=granted, reason=reason)
    return True


def set_consent_by_identifier(
    connection: Connection, identifier: Identifier, channel: str, granted: bool, at: datetime, reason: str
) -> bool:
    """The same, for the profile holding `identifier` (an SMS STOP knows only the phone number)."""
    profile_id = find_profile_id(connection, identifier)
    return profile_id is not None and set_consent(connection, profile_id, channel, granted, at, reason)
