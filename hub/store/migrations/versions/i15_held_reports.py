"""provider reports held until the send they are about is recorded

Revision ID: i15_held_reports
Revises: i14_grants_unpinned
Create Date: 2026-12-07

A Twilio status callback that came before the delivery worker committed the
send (the message id) found no delivery and was dropped: the delivery stayed
`sent` for good, and a refusal (21610) revoked nothing. Such reports are now
held (`hub.store.held_reports`) and applied when the send is recorded.
"""

import sqlalchemy as sa
from alembic import op

revision = "i15_held_reports"
down_revision = "i14_grants_unpinned"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "held_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("destination_id", sa.String(100), nullable=False),
        sa.Column("provider_message_id", sa.String(100), nullable=False),
        sa.Column("provider_status", sa.String(20), nullable=False),
        sa.Column("final_status", sa.String(20)),
        sa.Column("error", sa.Text),
        sa.Column("revokes_consent", sa.Boolean, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_held_reports_received_at", "held_reports", ["received_at"])
    op.create_index("ix_held_reports_message", "held_reports", ["destination_id", "provider_message_id"])


def downgrade() -> None:
    op.drop_table("held_reports")
