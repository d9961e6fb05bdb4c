"""Refused links in the audit trail: one row per pair of profiles, identifier and rule, counting each recurrence.

A second person's every event on a shared device (a store's kiosk, the
family iPad) refuses the device's identifier again; a row per refusal grew
the table with the kiosk's traffic. Both identity graphs (`SqlIdentityGraph`
per event, `CachedIdentityGraph` in bulk) record refusals through here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from hub.model import Identifier, RefusedLink
from hub.store.schema import identity_events

_CHUNK = 500  # keys or ids per IN list: SQLite's older limit on bound parameters is 999
_RENAME = (
    update(identity_events).where(identity_events.c.id == bindparam("b_id"))
    .values(identifiers=bindparam("b_identifiers"), refusal_key=bindparam("b_key"), times=bindparam("b_times"),
            last_at=bindparam("b_last_at"))
)


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
    """What makes a refusal the same one again: the two profiles, the identifier and the rule. A digest, not the
    values; forgetting a person drops it with the row's identifiers (`hub.store.forget.EMPTIED_AUDIT_ROW`), as
    the profile ids and the rule beside it would give the value back to anyone hashing guesses."""
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


def rename_refused_identifiers(connection: Connection, rule: str, rename: Callable[[Identifier], Identifier | None]) -> None:
    """Name the identifier of each refusal of `rule` as `rename` gives it (None: kept as it is), re-keyed so that
    a later refusal of it counts on its row.

    A renamed row may now share its key with one recorded under the new name: the two are folded as
    migration i23 folded duplicates, the first (lowest id) kept with the count and last time of both.
    """
    kept: dict[str, dict[str, Any]] = {}
    for row in _renamed_rows(connection, rule, rename):
        first = kept.setdefault(row["b_key"], row)
        if first is not row:
            _fold(first, row["b_id"], row["b_times"], row["b_last_at"])
    keys = list(kept)
    for start in range(0, len(keys), _CHUNK):
        recorded = connection.execute(
            select(identity_events.c.id, identity_events.c.refusal_key, identity_events.c.times, identity_events.c.last_at)
            .where(identity_events.c.refusal_key.in_(keys[start:start + _CHUNK]))
        )
        for row in recorded:
            _fold(kept[row.refusal_key], row.id, row.times, row.last_at)
    folded = [id_ for row in kept.values() for id_ in row.pop("folded")]
    for start in range(0, len(folded), _CHUNK):  # first, so that the kept rows may take the keys they held
        connection.execute(delete(identity_events).where(identity_events.c.id.in_(folded[start:start + _CHUNK])))
    if kept:
        connection.execute(_RENAME, list(kept.values()))


def _renamed_rows(connection: Connection, rule: str, rename: Callable[[Identifier], Identifier | None]) -> list[dict[str, Any]]:
    """The refused rows of `rule` that `rename` names anew, as `_RENAME`'s parameters. A row whose identifiers a
    forget emptied names none, and is left alone."""
    rows = connection.execute(
        select(identity_events.c.id, identity_events.c.profile_id, identity_events.c.other_profile_id,
               identity_events.c.identifiers, identity_events.c.times, identity_events.c.at, identity_events.c.last_at)
        .where(identity_events.c.kind == "refused", identity_events.c.rule == rule)
    )
    renamed = []
    for row in rows:
        if len(row.identifiers) != 1:
            continue
        new = rename(Identifier(*row.identifiers[0]))
        if new is None:
            continue
        link = RefusedLink(new, row.other_profile_id, rule)
        renamed.append({"b_id": row.id, "b_key": refusal_key(row.profile_id, link), "b_identifiers": [[new.type, new.value]],
                        "b_times": row.times, "b_last_at": row.last_at or row.at, "folded": []})
    return renamed


def _fold(renamed: dict[str, Any], id_: int, times: int, last_at: datetime | None) -> None:
    """Fold the row `id_`, under the renamed row's new key too, and the renamed row into the first of them."""
    if last_at is not None:
        renamed["b_last_at"] = max(renamed["b_last_at"], last_at)
    renamed["b_times"] += times
    renamed["folded"].append(max(id_, renamed["b_id"]))
    renamed["b_id"] = min(id_, renamed["b_id"])
