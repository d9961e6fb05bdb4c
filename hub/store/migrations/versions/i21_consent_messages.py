"""consent messages: the provider messages whose consent keyword was applied

Revision ID: i21_consent_messages
Revises: i20_timer_rule_version
Create Date: 2026-12-07

An inbound message's signature carries no time, and Twilio retries a webhook
it could not deliver with the same MessageSid, signed the same. A START
posted again after the person's later STOP turned SMS back on. The id of
each message whose keyword was applied is now kept, and a repeat of it
changes nothing.
"""

import sqlalchemy as sa
from alembic import op

revision = "i21_consent_messages"
down_revision = "i20_timer_rule_version"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_messages",
        sa.Column("destination_id", sa.String(100), primary_key=True),
        sa.Column("message_id", sa.String(100), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("consent_messages")
