"""timers: why each ended without firing, and how many firings raised

Revision ID: i13_timer_outcomes
Revises: i12_first_due_at
Create Date: 2026-12-06

A timer that lapsed (its rule disabled, its conditions false when it came
due), was cancelled or superseded left no word of why: ops could not tell
"rule off" from "she ordered". Its reason is now kept (`reason`). A timer
whose firing raised every time was claimed again after each lease, forever;
its failed firings are now counted (`attempts`) and, at the limit, it is
settled `failed` with the error as its reason. Both columns are added
without rewriting the table (SQLite's ADD COLUMN, PostgreSQL's constant
default), so the upgrade takes no time however many timers are stored.
"""

import sqlalchemy as sa
from alembic import op

revision = "i13_timer_outcomes"
down_revision = "i12_first_due_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("timers") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("reason", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("timers") as batch:
        batch.drop_column("reason")
        batch.drop_column("attempts")
