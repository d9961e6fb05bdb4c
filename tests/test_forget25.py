"""Forgetting a person spares what is someone else's: another person's event queued with their address in it, and
the live people a refusal of their address names after an unmerge."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hub.clock import utcnow
from hub.model import RawEvent
from hub.runtime import Hub
from hub.store import inbox, touchpoints
from hub.store.identity_explain import explain
from hub.store.identity_repair import unmerge
from tests.conftest import message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_forget21 import tables_holding
from tests.test_forget_messages import forget, profile

NOW = datetime.now(timezone.utc)


def ago(minutes: float) -> str:
    return (NOW - timedelta(minutes=minutes)).isoformat()


def queue_forget_then_process(hub: Hub, queued: dict[str, Any], forgotten_user_id: str) -> None:
    """The event is taken in (a 2xx) and waits in the inbox; the person is forgotten before the pipeline reaches it."""
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", queued["messageId"], queued)], utcnow())
    forget(hub, profile(hub, "user_id", forgotten_user_id))
    while hub.pipeline.run_once():
        pass


def stored_events(hub: Hub, profile_id: str) -> list[dict[str, Any]]:
    with hub.store.read() as connection:
        return touchpoints.search(connection, limit=10, profile_id=profile_id)


@BOTH_DATABASES
@pytest.mark.parametrize("user_id", ["u-ana", "u-cy"], ids=["known-user", "first-sign-in"])
def test_another_persons_event_queued_before_a_forget_is_kept_without_the_forgotten_address(
    tmp_path: Path, database_url: str, user_id: str
) -> None:
    """Ana's order (or Cy's first sign-in), sent from the family laptop whose SDK still had Bo's address in
    `context.traits`, waited in the inbox while Bo was forgotten: any event received before the forget that carried
    one of his identifiers was dropped whole as his, though its userId was another person's, and the acknowledged
    order was lost."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", userId="u-ana", traits={"email": "ana@x.io"}, timestamp=ago(60)),
               message("identify", userId="u-bo", traits={"email": "bo@x.io"}, timestamp=ago(59)))
        order = message(userId=user_id, event="Order Completed", properties={"total": 42, "billed_to": "bo@x.io"},
                        context={"traits": {"email": "bo@x.io"}}, timestamp=ago(5))
        queue_forget_then_process(hub, order, "u-bo")
        [stored] = [event for event in stored_events(hub, profile(hub, "user_id", user_id)) if event["event"] == "Order Completed"]
        assert stored["properties"] == {"total": 42}
        assert tables_holding(hub, "bo@x.io") == []
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_the_forgotten_persons_own_event_queued_from_a_shared_device_is_still_dropped_whole(
    tmp_path: Path, database_url: str
) -> None:
    """The bound of the fix above: Bo's order from the family tablet carries his userId and the tablet's
    anonymousId, which is Ana's, so with his userId blocked resolution links it to Ana. Keeping every event that
    another identifier links to a live profile would store Bo's order on Ana's, for her post-purchase messages to
    answer; his userId outranks the tablet's id, so it was his and is dropped whole."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", userId="u-ana", anonymousId="family-tablet", traits={"email": "ana@x.io"},
                            timestamp=ago(60)),
               message("identify", userId="u-bo", traits={"email": "bo@x.io"}, timestamp=ago(59)))
        order = message(userId="u-bo", anonymousId="family-tablet", event="Order Completed",
                        properties={"product": "Bo's racing skis"}, timestamp=ago(5))
        queue_forget_then_process(hub, order, "u-bo")
        assert "Order Completed" not in [event["event"] for event in stored_events(hub, profile(hub, "user_id", "u-ana"))]
        assert tables_holding(hub, "racing skis") == []
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_forgetting_a_person_after_an_unmerge_erases_his_address_from_a_refusal_made_while_he_was_merged(
    tmp_path: Path, database_url: str
) -> None:
    """Bo's typo merged him into Ana; while they were one, Xavier's identify carrying Bo's address was refused the
    link, recorded on Xavier's profile against Ana's. After an unmerge Bo was forgotten: forget read only refusals
    with no profile on the other side, so Bo's address stayed in that refusal (shown by Ana's and Xavier's
    explain), Xavier's touchpoint and its raw body. Xavier keeps what is his: his userId, his name, the refusal."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "ana@x.io"}, timestamp=ago(70)),
               message("identify", userId="bo-1", traits={"email": "bo@x.io"}, timestamp=ago(60)))
        ana, bo = profile(hub, "email", "ana@x.io"), profile(hub, "email", "bo@x.io")
        accept(hub, message("identify", userId="bo-1", traits={"email": "ana@x.io"}, timestamp=ago(50)))
        accept(hub, message("identify", userId="xavier", traits={"email": "bo@x.io", "first_name": "Xavier"},
                            timestamp=ago(40)))
        xavier = profile(hub, "user_id", "xavier")
        with hub.store.write() as connection:
            unmerge(connection, ana, bo, utcnow())
        forget(hub, profile(hub, "email", "bo@x.io"))
        with hub.store.read() as connection:
            shown = {who: explain(connection, who) for who in (ana, xavier)}
        assert "bo@x.io" not in str(shown)
        assert tables_holding(hub, "bo@x.io") == []
        [refusal] = shown[xavier]["refused"]
        assert refusal["profile_id"] == xavier and refusal["other_profile_id"] == ana
        [identify] = stored_events(hub, xavier)
        assert identify["identifiers"] == [["user_id", "xavier"]]
        assert identify["traits"] == {"first_name": "Xavier"}
    finally:
        hub.store.dispose()
