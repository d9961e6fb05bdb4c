"""identifiers: which anonymous ids an alias's previousId stored, so a later userId of that value finds them

Revision ID: i18_alias_previous_ids
Revises: i17_nfc_emails
Create Date: 2026-12-07

alias(previousId=X, userId=Y) says X and Y are one person, and X may be an
earlier userId or an anonymousId. When no event had named X yet, resolution
stored it as an anonymous_id (its likelier meaning), and a later event with
userId=X found no profile by user_id and made a second one beside Y's. Such
rows are now marked (`from_alias`), and a userId seen for the first time is
looked up among them (`hub.identity`).

The column is added without rewriting the table (SQLite's ADD COLUMN,
PostgreSQL's constant default), so the graph-epoch triggers on it stay. The
rows stored before are marked too: an anonymous_id an alias touchpoint
brought in whose value it carried as `previous_id` (had the value been known
as an anonymous id already, an earlier touchpoint would have brought the
row). A second profile the defect already made for X is not merged here
(merging is the pipeline's, with its rules and audit trail): X's events keep
going to it until an alias naming X again links the two.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "i18_alias_previous_ids"
down_revision = "i17_nfc_emails"
branch_labels = None
depends_on = None

identifiers = sa.table(
    "identifiers", sa.column("type", sa.String), sa.column("value", sa.String), sa.column("touchpoint_id", sa.String),
    sa.column("from_alias", sa.Boolean),
)
touchpoints = sa.table(
    "touchpoints", sa.column("touchpoint_id", sa.String), sa.column("kind", sa.String), sa.column("identifiers", sa.JSON),
)
ALIAS_KIND, PREVIOUS_ID, STORED_AS = "alias", "previous_id", "anonymous_id"  # as `hub.identity` names them


def upgrade() -> None:
    op.add_column("identifiers", sa.Column("from_alias", sa.Boolean, nullable=False, server_default=sa.false()))
    _mark_stored_previous_ids(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("identifiers", recreate="never") as batch:
        batch.drop_column("from_alias")


def _mark_stored_previous_ids(connection: sa.Connection) -> None:
    """Mark each anonymous_id an alias touchpoint brought in as its previousId, in one statement.

    It runs under the ADD COLUMN's lock on identifiers (on PostgreSQL, every
    node's resolution waits), so it walks the anonymous ids by primary key
    and reads only the touchpoint that brought each in, by its primary key:
    never touchpoints by `kind`, which no index has (the largest table read
    through). The touchpoint is a scalar subquery, not an EXISTS, which
    PostgreSQL may turn into a join that scans touchpoints. PostgreSQL's
    graph-epoch trigger is per statement, so the epoch goes up once even
    when nothing is marked: each node's identity cache reloads once.
    """
    alias_that_brought_it = (
        sa.select(touchpoints.c.touchpoint_id)
        .where(touchpoints.c.touchpoint_id == identifiers.c.touchpoint_id, touchpoints.c.kind == ALIAS_KIND,
               _carries_as_previous_id(connection.dialect.name))
        .scalar_subquery()
    )
    connection.execute(
        identifiers.update().where(identifiers.c.type == STORED_AS, alias_that_brought_it.is_not(None)).values(from_alias=True)
    )


def _carries_as_previous_id(dialect: str) -> sa.ColumnElement[bool]:
    """Whether the touchpoint's identifiers (a JSON array of [type, value] pairs) hold [previous_id, the
    identifier's value]: by JSON containment on PostgreSQL; SQLite, which has none, walks the short array."""
    if dialect == "postgresql":
        pair = sa.func.jsonb_build_array(sa.literal(PREVIOUS_ID), identifiers.c.value)
        return sa.cast(touchpoints.c.identifiers, JSONB).contains(sa.func.jsonb_build_array(pair))
    pair = sa.func.json_each(touchpoints.c.identifiers).table_valued("value").alias("pair")
    return sa.exists().where(
        sa.func.json_extract(pair.c.value, "$[0]") == PREVIOUS_ID, sa.func.json_extract(pair.c.value, "$[1]") == identifiers.c.value
    ).correlate(touchpoints, identifiers)
