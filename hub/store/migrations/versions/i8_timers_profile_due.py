"""timers: the profile's index ends in due_at, so a cancelling event searches its own timers

Revision ID: i8_timers_profile_due
Revises: i7_graph_epoch
Create Date: 2026-12-02

An event that only cancels waits updates the profile's pending timers of
those rules due after it. Without statistics SQLite preferred
(status, due_at) for that UPDATE, a walk over every pending timer due
later, whoever's: 165 us per event at 2,000 pending timers and growing with
them. With due_at in the profile's index that index serves every term.
"""

from alembic import op

revision = "i8_timers_profile_due"
down_revision = "i7_graph_epoch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_timers_profile_rule_status_due", "timers", ["profile_id", "rule_id", "status", "due_at"])
    op.drop_index("ix_timers_profile_rule_status", table_name="timers")


def downgrade() -> None:
    op.create_index("ix_timers_profile_rule_status", "timers", ["profile_id", "rule_id", "status"])
    op.drop_index("ix_timers_profile_rule_status_due", table_name="timers")
