"""inbox: an index on (status, received_at), so the timer worker finds the oldest event waiting in one probe

Revision ID: i19_inbox_received_index
Revises: i18_alias_previous_ids
Create Date: 2026-12-07

The timer worker holds back timers armed after the oldest event still
pending in the inbox was received (`inbox.oldest_waiting`, `timers.claim_due`).
It read that row's `available_at` instead, which a failed attempt's backoff
or a replay moves ahead, and fired a cart's timer while its checkout waited
to be tried again. Reading `received_at` in (status, received_at) order keeps
the read the first entry of an index, as (status, available_at) gave before.
"""

from alembic import op

revision = "i19_inbox_received_index"
down_revision = "i18_alias_previous_ids"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_inbox_status_received", "inbox", ["status", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_inbox_status_received", table_name="inbox")
