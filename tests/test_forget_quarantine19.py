"""Forgetting a person wipes the quarantined bodies that name them by an id (userId, anonymousId), not only by an
address; bodies of other people whose ids merely contain theirs stay."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from hub.clock import utcnow
from hub.errors import ItemProblem
from hub.model import Identifier
from hub.store import Store, quarantine
from hub.store.schema import inbox
from tests.conftest import WRITE_KEY, RunningHub, message
from tests.test_dead_letter_replay import AUTH

# ISO-8601, so ingest takes it, but over a century old: the mapping refuses it and the pipeline quarantines the
# event with its inbox row kept (stage `mapping`).
LAST_CENTURY = "1900-01-01T00:00:00Z"


def forget(running_hub: RunningHub, type_: str, value: str) -> None:
    """DELETE /api/profiles/{id} of the profile holding the identifier."""
    [profile_id] = {
        t["profile_id"] for t in running_hub.admin("/api/touchpoints")["touchpoints"]
        if [type_, value] in t["identifiers"]
    }
    assert running_hub.client.delete(f"/api/profiles/{profile_id}", headers=AUTH).status_code == 200


def quarantined(running_hub: RunningHub) -> list[dict[str, Any]]:
    return running_hub.admin("/api/quarantine")["quarantine"]


def post_body(running_hub: RunningHub, body: bytes) -> int:
    answer = running_hub.client.post(
        "/v1/batch", content=body, auth=(WRITE_KEY, ""), headers={"content-type": "application/json"},
    )
    return answer.status_code


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_forget_wipes_a_quarantined_event_naming_the_person_only_by_user_id(running_hub: RunningHub) -> None:
    """u-42's order came with a timestamp of 1900: quarantined, its body naming u-42 by userId alone. Only
    addresses were looked for, so forgetting u-42 left the body in the quarantine and in its inbox row."""
    running_hub.send(message("identify", userId="u-42", traits={"plan": "pro"}),
                     message(event="Order Completed", userId="u-42", timestamp=LAST_CENTURY, properties={"total": 42}),
                     message(event="Order Completed", userId="ana", timestamp=LAST_CENTURY))
    running_hub.settle()
    forget(running_hub, "user_id", "u-42")
    [wiped] = [entry for entry in quarantined(running_hub) if entry["reason"] == quarantine.ERASED_REASON]
    assert (wiped["raw_body"], wiped["problems"]) == ("", [])
    with running_hub.hub.store.read() as connection:
        payload, error = connection.execute(select(inbox.c.payload, inbox.c.error).where(inbox.c.id == wiped["inbox_id"])).one()
    assert (payload, error) == ({}, quarantine.ERASED_REASON)
    assert "u-42" not in json.dumps(quarantined(running_hub))
    assert any('"ana"' in entry["raw_body"] for entry in quarantined(running_hub))


def test_forget_keeps_the_quarantined_event_of_someone_whose_id_contains_the_persons(running_hub: RunningHub) -> None:
    """Forgetting u-4 must not wipe u-42's refused order: "u-4" is in its text, but no value of it is "u-4"."""
    running_hub.send(message("identify", userId="u-4"),
                     message(event="Order Completed", userId="u-42", timestamp=LAST_CENTURY,
                             context={"traits": {"referrer": "u-4 invited me"}}))
    running_hub.settle()
    forget(running_hub, "user_id", "u-4")
    [kept] = quarantined(running_hub)
    assert kept["reason"] != quarantine.ERASED_REASON and '"u-42"' in kept["raw_body"]


def test_forget_wipes_a_refused_batch_naming_the_persons_anonymous_id_in_one_item(running_hub: RunningHub) -> None:
    """A whole batch was refused (no valid message in it); one item names the person by anonymousId only, the
    other is Bo's. Nothing in it is an address, so forgetting her kept the batch."""
    running_hub.send(message("identify", anonymousId="anon-7f3a", traits={"plan": "pro"}))
    running_hub.settle()
    batch = {"batch": [
        message(event="Cart Viewed", userId="bo", timestamp="yesterday"),
        message(event="Cart Viewed", anonymousId="anon-7f3a", timestamp="yesterday",
                context={"traits": {"plan": "pro"}}),
    ]}
    assert post_body(running_hub, json.dumps(batch).encode()) == 400
    forget(running_hub, "anonymous_id", "anon-7f3a")
    [wiped] = quarantined(running_hub)
    assert (wiped["reason"], wiped["raw_body"], wiped["problems"]) == (quarantine.ERASED_REASON, "", [])


def test_forget_still_wipes_a_body_that_is_no_json_holding_the_persons_email(running_hub: RunningHub) -> None:
    """A cut-off body cannot be read for its ids; the person's email in it must still be found as text, and
    Ana's cut-off body stays."""
    running_hub.send(message("identify", userId="sam", traits={"email": "sam@example.com"}))
    running_hub.settle()
    sams = b'{"batch": [{"type": "track", "userId": "sam", "context": {"traits": {"email": "Sam@Example.com"}}'
    anas = b'{"batch": [{"type": "track", "userId": "ana", "event": "Cart Viewed"'
    assert post_body(running_hub, sams) == post_body(running_hub, anas) == 400
    forget(running_hub, "user_id", "sam")
    reasons = {entry["raw_body"]: entry["reason"] for entry in quarantined(running_hub)}
    assert reasons == {"": quarantine.ERASED_REASON, anas.decode(): reasons[anas.decode()]}
    assert reasons[anas.decode()] != quarantine.ERASED_REASON


def test_forget_wipes_a_quarantined_event_naming_the_person_by_a_numeric_user_id(running_hub: RunningHub) -> None:
    """Ingest takes `"userId": 4242` as the user_id "4242" (`normalize_identifier` reads any scalar as text), but
    the quarantine is searched for ids among the bodies' JSON *strings* only: the forgotten person's refused order,
    naming them by the number, stayed in the quarantine and in its inbox row."""
    running_hub.send(message("identify", userId=4242, traits={"plan": "pro"}),
                     message(event="Order Completed", userId=4242, timestamp=LAST_CENTURY, properties={"total": 42}))
    running_hub.settle()
    forget(running_hub, "user_id", "4242")
    [entry] = quarantined(running_hub)
    assert (entry["reason"], entry["raw_body"]) == (quarantine.ERASED_REASON, "")


def test_forget_keeps_anothers_quarantined_event_whose_price_is_the_persons_id(running_hub: RunningHub) -> None:
    """Ids are matched as whole JSON string values under any key, so forgetting user "42" wiped Bo's refused order
    because its total was the string "42": the docstring's own example ("42" would be found in a price) still
    happens, and Bo's event can no longer be inspected or replayed."""
    running_hub.send(message("identify", userId="42", traits={"plan": "pro"}),
                     message(event="Order Completed", userId="bo", timestamp=LAST_CENTURY, properties={"total": "42"}))
    running_hub.settle()
    forget(running_hub, "user_id", "42")
    [kept] = quarantined(running_hub)
    assert kept["reason"] != quarantine.ERASED_REASON and '"bo"' in kept["raw_body"]


def test_forget_wipes_a_quarantined_body_naming_a_lowercased_custom_id_as_it_was_sent(store: Store) -> None:
    """identity.yaml's `loyalty_id` is normalized to lowercase at ingest (mapped by a source mapping from
    context.traits), so the person holds "loy-9"; their refused body says "LOY-9", as their system sends it. Ids are compared with the body's strings only trimmed, never
    normalized as ingest normalizes them, so the body stayed."""
    body = json.dumps({"type": "track", "event": "Order Completed", "context": {"traits": {"loyalty_id": "LOY-9"}}})
    with store.write() as connection:
        quarantine.add(
            connection, stage="mapping", source_id="default", reason="occurred_at: bad",
            problems=[ItemProblem(None, "occurred_at", "bad")], raw_body=body.encode(), content_type="application/json",
            received_at=utcnow(), inbox_id=None,
        )
        quarantine.forget_holding(connection, [Identifier("loyalty_id", "loy-9")])
    with store.read() as connection:
        [entry] = quarantine.recent(connection, 10)
    assert entry["reason"] == quarantine.ERASED_REASON
