"""timers: the version of the rule that armed each (`RuleSpec.version`)

Revision ID: i20_timer_rule_version
Revises: i19_inbox_received_index
Create Date: 2026-12-07

When a timer comes due, the timer worker asks whether the rule was edited
since it armed the timer (a rollout: the edited rule may no longer wait after
that event). With no version to compare, it judged the rule's `after` again
with the person's traits of now, so a trait changed since the cart (a plan a
CRM sync upgraded) read as an edit: the nudge was held as for a rollout and
lapsed. Timers armed before this migration keep no version and are judged
again as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "i20_timer_rule_version"
down_revision = "i19_inbox_received_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("timers") as batch:
        batch.add_column(sa.Column("rule_version", sa.String(120)))


def downgrade() -> None:
    with op.batch_alter_table("timers") as batch:
        batch.drop_column("rule_version")
