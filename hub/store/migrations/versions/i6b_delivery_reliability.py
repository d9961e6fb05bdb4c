"""delivery reliability: provider status from callbacks, retry budget reset by replay

Revision ID: i6b_delivery_reliability
Revises: i4_identity_rules
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "i6b_delivery_reliability"
down_revision = "i4_identity_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_status", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("retry_from_attempt", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("retry_from", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_deliveries_provider_message_id"), ["provider_message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_provider_message_id"))
        batch_op.drop_column("retry_from")
        batch_op.drop_column("retry_from_attempt")
        batch_op.drop_column("provider_status")
