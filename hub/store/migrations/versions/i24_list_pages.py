"""deliveries and decisions: indexes in the admin API's list order, so each page is one range of an index

Revision ID: i24_list_pages
Revises: i23_refusal_counts
Create Date: 2026-12-07

GET /api/deliveries and /api/decisions page with a cursor: the rows after
the last one of the page before, newest first by (created_at, ..., primary
key). Without an index in that order every page read and sorted the whole
table, so reading a large delivery log through cost the square of its size.
"""

from alembic import op

revision = "i24_list_pages"
down_revision = "i23_refusal_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_created", "deliveries", ["created_at", "delivery_id"])
    op.create_index("ix_decisions_created", "decisions", ["created_at", "decided_at", "decision_id"])


def downgrade() -> None:
    op.drop_index("ix_decisions_created", table_name="decisions")
    op.drop_index("ix_deliveries_created", table_name="deliveries")
