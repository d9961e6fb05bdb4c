"""An unmerge gives the merged person back their own events, and forgetting them afterwards finds every event of
theirs the survivor kept."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

from hub.clock import utcnow
from hub.model import Identifier
from hub.runtime import Hub
from hub.store import touchpoints
from hub.store.forget import forget
from hub.store.identity_repair import unmerge
from hub.store.profile_views import find_profile_id, profile_view
from hub.store.schema import decisions
from tests.conftest import message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_forget21 import tables_holding

NOW = datetime.now(timezone.utc)


def ago(minutes: float) -> str:
    return (NOW - timedelta(minutes=minutes)).isoformat()


def owner(hub: Hub, type_: str, value: str) -> str:
    with hub.store.read() as connection:
        found = find_profile_id(connection, Identifier(type_, value))
    assert found is not None
    return found


def timeline(hub: Hub, profile_id: str) -> list[str]:
    """The profile's events, oldest first, as the console's timeline lists them."""
    with hub.store.read() as connection:
        return [row["event"] for row in reversed(touchpoints.search(connection, limit=50, profile_id=profile_id, order="occurred"))]


def profile_view_of(hub: Hub, profile_id: str) -> dict:
    with hub.store.read() as connection:
        view = profile_view(connection, profile_id)
    assert view is not None
    return view


def bo_merged_into_ana_and_unmerged(hub: Hub, *after_the_merge: dict) -> tuple[str, str]:
    """Xavier's family tablet, Ana's phone; Bo orders on the tablet (its anonymousId is Xavier's, so that link is
    refused) and aliases his old cookie, then his typo of Ana's email merges him into her; `after_the_merge` come
    next, and an operator undoes the merge. Returns (ana, bo)."""
    accept(hub, message("identify", userId="xavier", anonymousId="shared-tablet", timestamp=ago(70)))
    accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "ana@x.io"}, timestamp=ago(60)))
    accept(hub, message(userId="bo-7731", anonymousId="shared-tablet", event="Order Completed", timestamp=ago(50)))
    accept(hub, message("alias", userId="bo-7731", previousId="bo-old-cookie", timestamp=ago(45)))
    accept(hub, message("identify", userId="bo-7731", traits={"email": "ana@x.io"}, timestamp=ago(40)))
    ana = owner(hub, "email", "ana@x.io")
    [bo] = profile_view_of(hub, ana)["merged_profile_ids"]
    for event in after_the_merge:
        accept(hub, event)
    with hub.store.write() as connection:
        unmerge(connection, ana, bo, utcnow())
    return ana, bo


def test_an_unmerge_gives_back_the_merged_persons_order_from_a_shared_tablet_and_his_alias_call(tmp_path: Path) -> None:
    """Both stayed on Ana's timeline: an event went back only if every identifier it carried did, and the order's
    refused tablet anonymousId (Xavier's) never does, nor does the alias's ("previous_id", cookie), handed back as
    an anonymous_id."""
    hub = hub_on(tmp_path)
    try:
        ana, bo = bo_merged_into_ana_and_unmerged(hub)
        assert timeline(hub, bo) == ["Order Completed", "alias"]
        assert timeline(hub, ana) == ["identify", "identify"]  # her own, and the bad link, which carried both
    finally:
        hub.store.dispose()


def test_after_an_unmerge_a_support_ticket_is_answered_by_the_openers_own_purchases(tmp_path: Path) -> None:
    """Bo's order stayed with Ana, so her ticket set off post_purchase_support ("a customer who bought in the last
    30 days") though she never bought, and Bo's did not."""
    hub = hub_on(tmp_path)
    try:
        ana, bo = bo_merged_into_ana_and_unmerged(hub)
        accept(hub, message(anonymousId="ana-phone", event="Ticket Submitted", timestamp=ago(5)),
               message(userId="bo-7731", event="Ticket Submitted", timestamp=ago(4)))
        with hub.store.read() as connection:
            fired = connection.execute(
                select(decisions.c.profile_id).where(decisions.c.rule_id == "post_purchase_support")
            ).scalars().all()
        assert fired == [bo]
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_forgetting_a_person_after_an_unmerge_takes_him_out_of_every_event_the_other_profile_kept(
    tmp_path: Path, database_url: str
) -> None:
    """Forget scrubbed only the events an audit row named (the one that merged them, refused links), so Bo's
    later identify with Ana's email, left with her as it carried both, kept his userId and its raw body."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        ana, bo = bo_merged_into_ana_and_unmerged(
            hub, message("identify", userId="bo-7731", traits={"email": "ana@x.io", "plan": "pro"}, timestamp=ago(30)),
        )
        with hub.store.write() as connection:
            forget(connection, bo, utcnow(), True)
        assert tables_holding(hub, "bo-7731") == []
        assert tables_holding(hub, "bo-old-cookie") == []
        assert timeline(hub, ana) == ["identify", "identify", "identify"]  # Ana keeps her events, without Bo
        assert owner(hub, "email", "ana@x.io") == ana
    finally:
        hub.store.dispose()
