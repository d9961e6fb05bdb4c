"""deliveries: when a provider took each, for the daily cap

Revision ID: i22_sent_at
Revises: i21_consent_messages
Create Date: 2026-12-07

The daily cap counts each message when it goes, but it counted a retried or
replayed message when it was first due: one first due 25 h ago that went 14 h
ago after hours of retries fell outside the day, and a second message went
beside it. The time a provider took it is now kept. Rows sent before this
keep being counted when they were first due (the column is left empty).
"""

import sqlalchemy as sa
from alembic import op

revision = "i22_sent_at"
down_revision = "i21_consent_messages"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("sent_at")
