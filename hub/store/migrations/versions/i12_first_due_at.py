"""deliveries: when each was first due, for the retry policy's age

Revision ID: i12_first_due_at
Revises: i11_absence_waits
Create Date: 2026-12-06

The retry policy gives up on a delivery past its maximum age (24 h unless a
destination says otherwise). The age ran from when the delivery was planned,
so a `delay: 2d` follow-up started out of budget and went to the dead-letter
queue on its first transient error. It now runs from when the delivery was
first due. Rows planned before this keep their planning time (the column is
left empty).
"""

import sqlalchemy as sa
from alembic import op

revision = "i12_first_due_at"
down_revision = "i11_absence_waits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("first_due_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("first_due_at")
