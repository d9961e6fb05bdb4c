"""Forgetting a person wipes the quarantined bodies that name them by an id (userId, anonymousId), not only by an
address; bodies of other people whose ids merely contain theirs stay."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from hub.store import quarantine
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
