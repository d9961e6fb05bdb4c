"""consent changes: what a person told a provider, and through which identifier

Revision ID: i10_consent_changes
Revises: i9_trait_epoch
Create Date: 2026-12-06

Consent said through a provider (an SMS STOP, an unsubscribe link, a
provider's refusal) was only a pinned profile trait, so an unmerge could not
tell which side had said it: the opt-out stayed with the survivor and the
restored profile, which holds the phone that texted STOP, could be texted.
Each change now keeps the digest of the identifier it came through. The
opt-outs pinned before this migration get a row with no identifier, so an
unmerge keeps them with the survivor rather than dropping them.
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "i10_consent_changes"
down_revision = "i9_trait_epoch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("profile_id", sa.String(26), nullable=False, index=True),
        sa.Column("channel", sa.String(40), nullable=False),
        sa.Column("granted", sa.Boolean, nullable=False),
        sa.Column("identifier_digest", sa.String(64)),
        sa.Column("reason", sa.String(100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    rows = _said_before()
    if rows:
        op.bulk_insert(sa.table(
            "consent_changes", sa.column("profile_id", sa.String), sa.column("channel", sa.String),
            sa.column("granted", sa.Boolean), sa.column("identifier_digest", sa.String), sa.column("reason", sa.String),
            sa.column("at", sa.DateTime(timezone=True)),
        ), rows)


PINNED_STAMP = datetime.max.replace(tzinfo=timezone.utc).isoformat()  # hub.store.consent_changes.PINNED
OPT_OUT = "_opt_out"


def _said_before() -> list[dict]:
    """A row for each opt-out a provider pinned on a live profile before changes were recorded."""
    profiles = sa.table(
        "profiles", sa.column("profile_id", sa.String), sa.column("merged_into", sa.String),
        sa.column("traits", sa.JSON), sa.column("trait_times", sa.JSON), sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    found = op.get_bind().execute(
        sa.select(profiles.c.profile_id, profiles.c.traits, profiles.c.trait_times, profiles.c.updated_at).where(
            profiles.c.merged_into.is_(None), sa.cast(profiles.c.trait_times, sa.Text).like(f"%{PINNED_STAMP[:19]}%")
        )
    )
    return [
        {"profile_id": profile_id, "channel": key.removesuffix(OPT_OUT), "granted": not traits[key],
         "identifier_digest": None, "reason": "said before changes were recorded", "at": updated_at}
        for profile_id, traits, times, updated_at in found
        for key, stamp in times.items()
        if key.endswith(OPT_OUT) and stamp == PINNED_STAMP and isinstance(traits.get(key), bool)
    ]


def downgrade() -> None:
    op.drop_table("consent_changes")
