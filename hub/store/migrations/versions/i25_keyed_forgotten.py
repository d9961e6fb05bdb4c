"""forgotten_identifiers: which digests are keyed (HMAC under HUB_FORGET_KEY) and which plain sha256

Revision ID: i25_keyed_forgotten
Revises: i24_list_pages
Create Date: 2026-12-08

The blocklist of forgotten identifiers kept an unkeyed sha256 of each, which
anyone reading the database reverses by hashing every phone number of a
country or a list of emails. A hub with HUB_FORGET_KEY keeps an HMAC under
the key instead, and keys the unkeyed rows in place when it starts
(`hub.store.forget_digest`); this column tells them apart. Every row stored
before is unkeyed. The column is added without rewriting the table (SQLite's
ADD COLUMN, PostgreSQL's constant default), so the graph-epoch triggers on it
stay.
"""

import sqlalchemy as sa
from alembic import op

revision = "i25_keyed_forgotten"
down_revision = "i24_list_pages"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("forgotten_identifiers", sa.Column("keyed", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    # Keyed rows stay, refusing nothing to an older hub, which looks up plain sha256 digests only.
    with op.batch_alter_table("forgotten_identifiers", recreate="never") as batch:
        batch.drop_column("keyed")
