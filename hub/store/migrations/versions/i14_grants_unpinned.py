"""consent: a grant said through a provider no longer outranks every later opt-out

Revision ID: i14_grants_unpinned
Revises: i13_timer_outcomes
Create Date: 2026-12-06

An SMS START was stored like a STOP, as a trait stamped at the end of time
(`sms_opt_out: false`, pinned), so no opt-out the person made afterwards, in
an app's settings or a CRM form, could win, and they were texted. A grant
now carries the time it was said (`hub.store.consent_changes.said`). Grants
pinned before this migration lose the pin: the trait goes, which reads as
consent given (as it did), until the person's next word on the channel.
Withdrawals stay pinned.
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "i14_grants_unpinned"
down_revision = "i13_timer_outcomes"
branch_labels = None
depends_on = None

PINNED_STAMP = datetime.max.replace(tzinfo=timezone.utc).isoformat()  # hub.store.consent_changes.PINNED
OPT_OUT = "_opt_out"


def upgrade() -> None:
    profiles = sa.table(
        "profiles", sa.column("profile_id", sa.String), sa.column("traits", sa.JSON), sa.column("trait_times", sa.JSON),
    )
    connection = op.get_bind()
    pinned = connection.execute(
        sa.select(profiles.c.profile_id, profiles.c.traits, profiles.c.trait_times)
        .where(sa.cast(profiles.c.trait_times, sa.Text).like(f"%{PINNED_STAMP[:19]}%"))
    ).all()
    for profile_id, traits, times in pinned:
        grants = [key for key, stamp in times.items() if key.endswith(OPT_OUT) and stamp == PINNED_STAMP and traits.get(key) is False]
        if grants:
            connection.execute(
                profiles.update().where(profiles.c.profile_id == profile_id).values(
                    traits={key: value for key, value in traits.items() if key not in grants},
                    trait_times={key: stamp for key, stamp in times.items() if key not in grants},
                )
            )


def downgrade() -> None:
    """Nothing to put back: a grant's trait read as consent given, and its absence reads the same."""
