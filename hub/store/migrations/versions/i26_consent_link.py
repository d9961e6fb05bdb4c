"""consent_changes.delivery_id: the message whose unsubscribe link made the change

Revision ID: i26_consent_link
Revises: i25_keyed_forgotten
Create Date: 2026-12-08

"Subscribe again" on the unsubscribe page gave consent back to whoever held
any past email's link, even after a newer unsubscribe, an ops revocation or
an opt-out the person set since. A change made through a link now keeps the
link's message, so the page undoes only the unsubscribe its own link made,
while that is still the latest word on the channel. Rows kept before have
none: those unsubscribes are not undone from the page (ops can grant).
"""

import sqlalchemy as sa
from alembic import op

revision = "i26_consent_link"
down_revision = "i25_keyed_forgotten"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consent_changes", sa.Column("delivery_id", sa.String(36)))


def downgrade() -> None:
    with op.batch_alter_table("consent_changes") as batch:
        batch.drop_column("delivery_id")
