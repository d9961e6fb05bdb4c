"""identity rules: audit of refused links and unmerges, kept-apart pairs, forgotten identifiers, alias index

Revision ID: i4_identity_rules
Revises: i3_replay
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "i4_identity_rules"
down_revision = "i3_replay"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identifiers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin_profile_id", sa.String(length=26), nullable=True))
    # Before this revision an identifier's profile is the best record of where it first joined.
    op.execute("UPDATE identifiers SET origin_profile_id = profile_id")

    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profiles_merged_into"), ["merged_into"], unique=False)

    op.create_table(
        "identity_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("profile_id", sa.String(length=26), nullable=False),
        sa.Column("other_profile_id", sa.String(length=26), nullable=True),
        sa.Column("touchpoint_id", sa.String(length=36), nullable=True),
        sa.Column("identifiers", sa.JSON(), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("identity_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_events_profile_id"), ["profile_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_identity_events_other_profile_id"), ["other_profile_id"], unique=False)

    op.create_table(
        "kept_apart",
        sa.Column("profile_a", sa.String(length=26), nullable=False),
        sa.Column("profile_b", sa.String(length=26), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("profile_a", "profile_b"),
    )
    op.create_table(
        "forgotten_identifiers",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )


def downgrade() -> None:
    op.drop_table("forgotten_identifiers")
    op.drop_table("kept_apart")
    with op.batch_alter_table("identity_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_events_other_profile_id"))
        batch_op.drop_index(batch_op.f("ix_identity_events_profile_id"))
    op.drop_table("identity_events")
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profiles_merged_into"))
    with op.batch_alter_table("identifiers", schema=None) as batch_op:
        batch_op.drop_column("origin_profile_id")
