"""identity graph epoch: a counter every write to identity state bumps, by trigger

Revision ID: i7_graph_epoch
Revises: i5_trigger_timers
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "i7_graph_epoch"
down_revision = "i5_trigger_timers"
branch_labels = None
depends_on = None

# (trigger name suffix, event, table): every write a cached owner or alias could go stale by.
# Creating a profile is not one: a new profile id is unknown to every cache until identifiers join it.
WATCHED = [
    (f"{table}_{kind.split()[0].lower()}", kind, table)
    for table in ("identifiers", "forgotten_identifiers", "kept_apart")
    for kind in ("INSERT", "UPDATE", "DELETE")
] + [("profiles_merged", "UPDATE OF merged_into", "profiles"), ("profiles_delete", "DELETE", "profiles")]


def upgrade() -> None:
    op.create_table("graph_epoch", sa.Column("value", sa.BigInteger(), nullable=False))
    op.execute("INSERT INTO graph_epoch (value) VALUES (0)")
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute(
            "CREATE FUNCTION bump_graph_epoch() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN UPDATE graph_epoch SET value = value + 1; RETURN NULL; END $$"
        )
    for suffix, kind, table in WATCHED:
        # SQLite has row-level triggers only; PostgreSQL bumps once per statement.
        body = (
            "FOR EACH STATEMENT EXECUTE FUNCTION bump_graph_epoch()" if postgresql
            else "BEGIN UPDATE graph_epoch SET value = value + 1; END"
        )
        op.execute(f"CREATE TRIGGER graph_epoch_{suffix} AFTER {kind} ON {table} {body}")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for suffix, _kind, table in WATCHED:
        op.execute(f"DROP TRIGGER graph_epoch_{suffix}" + (f" ON {table}" if postgresql else ""))
    if postgresql:
        op.execute("DROP FUNCTION bump_graph_epoch()")
    op.drop_table("graph_epoch")
