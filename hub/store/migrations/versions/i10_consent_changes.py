"""consent changes: what a person told a provider, and through which identifier

Revision ID: i10_consent_changes
Revises: i9_trait_epoch
Create Date: 2026-12-06

Consent said through a provider (an SMS STOP, an unsubscribe link, a
provider's refusal) was only a pinned profile trait, so an unmerge could not
tell which side had said it: the opt-out stayed with the survivor and the
restored profile, which holds the phone that texted STOP, could be texted.
Each change now keeps the digest of the identifier it came through.
"""

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


def downgrade() -> None:
    op.drop_table("consent_changes")
