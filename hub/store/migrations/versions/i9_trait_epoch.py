"""graph epoch: trait writes bump it too, so the pipeline may keep profiles' traits between transactions

Revision ID: i9_trait_epoch
Revises: i8_timers_profile_due
Create Date: 2026-12-02
"""

from alembic import op

revision = "i9_trait_epoch"
down_revision = "i8_timers_profile_due"
branch_labels = None
depends_on = None

WATCHED = "UPDATE OF traits, trait_times"


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    # As in i7_graph_epoch: row-level on SQLite, once per statement on PostgreSQL.
    body = "FOR EACH STATEMENT EXECUTE FUNCTION bump_graph_epoch()" if postgresql else "BEGIN UPDATE graph_epoch SET value = value + 1; END"
    op.execute(f"CREATE TRIGGER graph_epoch_profiles_traits AFTER {WATCHED} ON profiles {body}")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.execute("DROP TRIGGER graph_epoch_profiles_traits" + (" ON profiles" if postgresql else ""))
