"""trigger engine: durable absence timers, decision status (fired | capped)

Revision ID: i5_trigger_timers
Revises: i6b_delivery_reliability
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "i5_trigger_timers"
down_revision = "i6b_delivery_reliability"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "timers",
        sa.Column("timer_id", sa.String(length=36), nullable=False),
        sa.Column("rule_id", sa.String(length=100), nullable=False),
        sa.Column("profile_id", sa.String(length=26), nullable=False),
        sa.Column("touchpoint_id", sa.String(length=36), nullable=False),
        sa.Column("anchor_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_id", sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint("timer_id"),
    )
    with op.batch_alter_table("timers", schema=None) as batch_op:
        batch_op.create_index("ix_timers_status_due", ["status", "due_at"], unique=False)
        batch_op.create_index("ix_timers_profile_rule_status", ["profile_id", "rule_id", "status"], unique=False)
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=20), server_default="fired", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("status")
    with op.batch_alter_table("timers", schema=None) as batch_op:
        batch_op.drop_index("ix_timers_profile_rule_status")
        batch_op.drop_index("ix_timers_status_due")
    op.drop_table("timers")
