"""API keys with scopes for the admin API

Revision ID: i16_api_keys
Revises: i15_held_reports
Create Date: 2026-12-07

One HUB_ADMIN_TOKEN could do everything, the irreversible forget included.
Keys are now made per person or tool with only the scopes it needs
(`touchhub keys create`); a row keeps a key's digest, never the key.
"""

import sqlalchemy as sa
from alembic import op

revision = "i16_api_keys"
down_revision = "i15_held_reports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(26), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("secret_digest", sa.LargeBinary, nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
