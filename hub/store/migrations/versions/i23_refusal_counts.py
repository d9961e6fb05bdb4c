"""identity_events: a refused link is one row, counted, however often it recurs

Revision ID: i23_refusal_counts
Revises: i22_sent_at
Create Date: 2026-12-07

Every event of a second person on a shared device (a store's kiosk, the
family iPad) refused the device's identifier again, and each refusal was a
new row: the table grew with the kiosk's traffic. A refusal is now keyed by a
digest of the two profiles, the identifier and the rule (`refusal_key`), and
a recurring one counts on its row (`times`, `last_at`). The rows written
before are folded the same way: the first of each key stays, with the count
and the last time of all of them. A row whose identifiers a forget emptied
keeps no key, as it names no identifier to fold by.
"""

import hashlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "i23_refusal_counts"
down_revision = "i22_sent_at"
branch_labels = None
depends_on = None

identity_events = sa.table(
    "identity_events", sa.column("id", sa.Integer), sa.column("kind", sa.String), sa.column("profile_id", sa.String),
    sa.column("other_profile_id", sa.String), sa.column("identifiers", sa.JSON), sa.column("rule", sa.String),
    sa.column("at", sa.DateTime(timezone=True)), sa.column("refusal_key", sa.String), sa.column("times", sa.Integer),
    sa.column("last_at", sa.DateTime(timezone=True)),
)
CHUNK = 500  # ids per DELETE: SQLite's older limit on bound parameters is 999


def upgrade() -> None:
    op.add_column("identity_events", sa.Column("refusal_key", sa.String(64)))
    op.add_column("identity_events", sa.Column("times", sa.Integer, nullable=False, server_default="1"))
    op.add_column("identity_events", sa.Column("last_at", sa.DateTime(timezone=True)))
    _fold_refusals(op.get_bind())
    op.create_index("ix_identity_events_refusal_key", "identity_events", ["refusal_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_identity_events_refusal_key", table_name="identity_events")
    with op.batch_alter_table("identity_events") as batch:
        batch.drop_column("last_at")
        batch.drop_column("times")
        batch.drop_column("refusal_key")


def _fold_refusals(connection: sa.Connection) -> None:
    """Key every refused row, keep the first of each key with the count and last time of all, delete the rest."""
    kept: dict[str, dict[str, Any]] = {}
    repeats: list[int] = []
    rows = connection.execute(
        sa.select(identity_events.c.id, identity_events.c.profile_id, identity_events.c.other_profile_id,
                  identity_events.c.identifiers, identity_events.c.rule, identity_events.c.at)
        .where(identity_events.c.kind == "refused").order_by(identity_events.c.id)
    )
    for row in rows:
        if len(row.identifiers) != 1:  # emptied by a forget
            continue
        key = _refusal_key(row.profile_id, row.other_profile_id, row.identifiers[0], row.rule)
        first = kept.get(key)
        if first is None:
            kept[key] = {"b_id": row.id, "b_key": key, "b_times": 1, "b_last_at": row.at}
        else:
            first["b_times"] += 1
            first["b_last_at"] = max(first["b_last_at"], row.at)
            repeats.append(row.id)
    _delete(connection, repeats)
    if kept:
        connection.execute(
            identity_events.update().where(identity_events.c.id == sa.bindparam("b_id"))
            .values(refusal_key=sa.bindparam("b_key"), times=sa.bindparam("b_times"), last_at=sa.bindparam("b_last_at")),
            list(kept.values()),
        )


def _delete(connection: sa.Connection, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), CHUNK):
        connection.execute(identity_events.delete().where(identity_events.c.id.in_(ids[start:start + CHUNK])))


def _refusal_key(profile_id: str, other_profile_id: str | None, identifier: Sequence[str], rule: str) -> str:
    """`hub.store.refusals.refusal_key` as of this revision (a migration imports nothing of the hub's)."""
    type_, value = identifier
    text = f"{profile_id}\x1f{other_profile_id or ''}\x1f{type_}\x1f{value}\x1f{rule}"
    return hashlib.sha256(text.encode()).hexdigest()
