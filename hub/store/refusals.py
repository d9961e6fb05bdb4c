"""Refused links in the audit trail: one row per pair of profiles, identifier and rule, counting each recurrence.

A second person's every event on a shared device (a store's kiosk, the
family iPad) refuses the device's identifier again; a row per refusal grew
the table with the kiosk's traffic. Both identity graphs (`SqlIdentityGraph`
per event, `CachedIdentityGraph` in bulk) record refusals through here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from hub.model import RefusedLink
from hub.store.schema import identity_events


def refused_events(
    profile_id: str, touchpoint_id: str, refused: Sequence[RefusedLink], at: datetime
) -> list[dict[str, Any]]:
    """The audit rows of links refused to `profile_id`, each keyed (`refusal_key`) so that a recurring one is
    counted on its first row instead of adding a row per event."""
    return [
        {
            "kind": "refused", "profile_id": profile_id, "other_profile_id": link.profile_id, "touchpoint_id": touchpoint_id,
            "identifiers": [[link.identifier.type, link.identifier.value]], "rule": link.rule, "at": at, "last_at": at,
            "times": 1, "refusal_key": refusal_key(profile_id, link),
        }
        for link in refused
    ]


def refusal_key(profile_id: str, link: RefusedLink) -> str:
    """What makes a refusal the same one again: the two profiles, the identifier and the rule. A digest, as the
    forgotten-identifier blocklist keeps, since forgetting a person scrubs the row's identifiers but not this."""
    other = link.profile_id or ""
    text = f"{profile_id}\x1f{other}\x1f{link.identifier.type}\x1f{link.identifier.value}\x1f{link.rule}"
    return hashlib.sha256(text.encode()).hexdigest()


def save_refusals(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert refused-link rows (`refused_events`), counting each one already recorded on its row instead.

    Rows of one key are folded first: one statement may not update a row twice (PostgreSQL's ON CONFLICT).
    """
    folded: dict[str, dict[str, Any]] = {}
    for row in rows:
        kept = folded.get(row["refusal_key"])
        if kept is None:
            folded[row["refusal_key"]] = dict(row)
        else:
            kept.update(times=kept["times"] + row["times"], last_at=row["last_at"], identifiers=row["identifiers"])
    if folded:
        connection.execute(_count_refusals(connection.dialect.name), list(folded.values()))


@lru_cache(maxsize=None)
def _count_refusals(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (refusal_key) DO UPDATE, spelled for the database: one more time, seen last now.
    The identifiers are written again too, as a new row would hold them, since forgetting a person empties them."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(identity_events)
    return statement.on_conflict_do_update(
        index_elements=[identity_events.c.refusal_key],
        set_={"times": identity_events.c.times + statement.excluded.times, "last_at": statement.excluded.last_at,
              "identifiers": statement.excluded.identifiers},
    )
