"""consent_changes.origin_profile_id, and no refusal key left on a forgotten person's refused links

Revision ID: i27_consent_origin
Revises: i26_consent_link
Create Date: 2026-12-08

An ops change is kept with no identifier, and an unmerge left every such row
with the survivor: Bo's revocation, asked of support before a bad merge,
blocked Ana and Bo could be emailed again. A change now keeps the profile it
was asked of, which a merge does not move. Rows kept before take the profile
holding them now: right for a profile not merged since, and for one that was,
the survivor keeps them, as before.

A refused link's `refusal_key` is a plain digest of the two profile ids, the
identifier and the rule, and forgetting a person emptied the row's
identifiers but kept the key: with the ids and the rule beside it, hashing
guesses gave the phone or email back, HUB_FORGET_KEY or not. Forgetting now
drops the key too; the rows forgotten before lose theirs here (an emptied
row holds no identifier, as migration i23 left them keyless).
"""

import sqlalchemy as sa
from alembic import op

revision = "i27_consent_origin"
down_revision = "i26_consent_link"
branch_labels = None
depends_on = None

consent_changes = sa.table("consent_changes", sa.column("profile_id", sa.String), sa.column("origin_profile_id", sa.String))
identity_events = sa.table(
    "identity_events", sa.column("kind", sa.String), sa.column("identifiers", sa.JSON), sa.column("refusal_key", sa.String)
)


def upgrade() -> None:
    op.add_column("consent_changes", sa.Column("origin_profile_id", sa.String(26)))
    op.execute(consent_changes.update().values(origin_profile_id=consent_changes.c.profile_id))
    op.execute(
        identity_events.update()
        .where(
            identity_events.c.kind == "refused", identity_events.c.refusal_key.is_not(None),
            sa.func.json_array_length(identity_events.c.identifiers) == 0,  # emptied by a forget (SQLite and PostgreSQL)
        )
        .values(refusal_key=None)
    )


def downgrade() -> None:
    with op.batch_alter_table("consent_changes") as batch:
        batch.drop_column("origin_profile_id")
