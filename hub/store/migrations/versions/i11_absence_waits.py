"""absence waits: each absence rule's wait as the timer workers last saw it

Revision ID: i11_absence_waits
Revises: i10_consent_changes
Create Date: 2026-12-06

A timer is claimed by its stored due time. When an edit shortens a rule's
wait, the timer worker brings the rule's pending timers forward; it knew an
edit was a shortening only by the waits it had seen since it started, so an
edit made while no timer worker ran was met at the old due times. The waits
seen are now kept in the store, and a worker starting after such an edit
finds it.
"""

import sqlalchemy as sa
from alembic import op

revision = "i11_absence_waits"
down_revision = "i10_consent_changes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "absence_waits",
        sa.Column("rule_id", sa.String(100), primary_key=True),
        sa.Column("wait_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("absence_waits")
