"""Forgetting a person reaches what no touchpoint of theirs links to: events a mapping dropped, events still queued,
another person's event whose link to their address a limit refused, quarantined bodies in other encodings."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from hub.clock import utcnow
from hub.model import Identifier, RawEvent
from hub.runtime import Hub
from hub.store import Store, inbox, quarantine
from hub.store.schema import metadata, profiles
from hub.store.schema import quarantine as quarantine_rows
from tests.conftest import message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_forget_messages import forget, profile


def tables_holding(hub: Hub, text: str) -> list[str]:
    """The tables with a row whose text holds `text`, on either database."""
    with hub.store.read() as connection:
        return sorted({
            table.name for table in metadata.sorted_tables
            for row in connection.execute(select(table)) if text in str(tuple(row))
        })


@BOTH_DATABASES
def test_forget_wipes_the_raw_body_of_the_persons_event_a_mapping_dropped(
    tmp_path: Path, mappings_dir: Path, database_url: str
) -> None:
    """A `drop` rule marks an event done with its raw body kept in the inbox and no touchpoint: forget wiped only
    the bodies behind the person's touchpoints, so the dropped one kept their email and phone."""
    segment = mappings_dir / "segment.yaml"
    segment.write_text(segment.read_text() + "drop:\n  - when: \"event == 'Application Backgrounded'\"\n    reason: noise\n")
    hub = hub_on(tmp_path, mappings_dir=mappings_dir, database_url=database_url)
    try:
        accept(hub, message("identify", userId="sam", traits={"email": "sam@example.com"}),
               message(userId="sam", event="Application Backgrounded", context={"traits": {"phone": "+14155550123"}}),
               message(userId="ana", event="Application Backgrounded", context={"traits": {"email": "ana@example.com"}}))
        forget(hub, profile(hub, "user_id", "sam"))
        assert tables_holding(hub, "sam@example.com") == []
        assert tables_holding(hub, "+14155550123") == []
        assert tables_holding(hub, "ana@example.com") == ["inbox"]  # someone else's dropped event stays
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_an_event_received_before_the_forget_and_still_queued_is_dropped_whole(tmp_path: Path, database_url: str) -> None:
    """Sam's sign-in on a new phone was accepted, then he was forgotten before the pipeline got to it: only his
    blocked userId was left out, and his IP, name and new device id were stored under a new profile."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", userId="sam", anonymousId="sam-laptop", traits={"email": "sam@example.com"}))
        queued = message("identify", userId="sam", anonymousId="sam-new-phone", traits={"first_name": "Samuelito"},
                         context={"ip": "203.0.113.77"})
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent("default", queued["messageId"], queued)], utcnow())
        forget(hub, profile(hub, "user_id", "sam"))
        while hub.pipeline.run_once():
            pass
        for text in ("203.0.113.77", "Samuelito", "sam-new-phone"):
            assert tables_holding(hub, text) == [], text
        with hub.store.read() as connection:
            assert inbox.count_by_status(connection) == {"done": 2}
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_forget_takes_the_address_out_of_anothers_event_a_limit_refused_before_it_had_an_owner(
    tmp_path: Path, database_url: str
) -> None:
    """Ana's account held its five emails, so her identify carrying bo@x.io was refused the link with no profile
    on the other side; Bo then signed up with it and was forgotten. No audit row named his profile, so Ana's
    touchpoint, its raw body, the refusal and her `email` trait kept his address."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        for n in range(5):
            accept(hub, message("identify", userId="ana", traits={"email": f"ana{n}@x.io"}, timestamp=f"2026-01-01T10:0{n}:00Z"))
        accept(hub, message("identify", userId="ana", traits={"email": "bo@x.io", "plan": "pro"}, timestamp="2026-01-01T11:00:00Z"))
        accept(hub, message("identify", userId="bo", traits={"email": "bo@x.io"}, timestamp="2026-01-01T12:00:00Z"))
        ana = profile(hub, "user_id", "ana")
        forget(hub, profile(hub, "user_id", "bo"))
        assert tables_holding(hub, "bo@x.io") == []
        assert profile(hub, "email", "ana4@x.io") == ana
        with hub.store.read() as connection:
            traits = connection.execute(select(profiles.c.traits).where(profiles.c.profile_id == ana)).scalar_one()
        assert traits["plan"] == "pro"  # Ana keeps what is hers
    finally:
        hub.store.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("body", [
    # JSON in UTF-16, which the hub's parser takes (RFC 8259's detection), kept as sent when refused.
    '{"batch": [{"userId": "sam", "context": {"traits": {"email": "Sam@Example.com"}}}'.encode("utf-16"),
    # A form, whose @ is %40.
    urlencode({"userId": "sam", "email": "sam@example.com"}).encode(),
], ids=["utf-16-json", "form-encoded"])
def test_forget_wipes_a_quarantined_body_holding_the_email_in_another_encoding(store: Store, body: bytes) -> None:
    """Quarantined bodies were read as UTF-8 only: one holding the email in UTF-16, or percent-encoded in a form,
    outlived the erasure."""
    with store.write() as connection:
        quarantine.add(connection, stage="ingest", reason="bad batch", raw_body=body, received_at=utcnow())
        quarantine.add(connection, stage="ingest", reason="bad batch", raw_body="ana@example.com".encode("utf-16"),
                       received_at=utcnow())
        quarantine.forget_holding(connection, [Identifier("email", "sam@example.com")])
        kept = connection.execute(select(quarantine_rows.c.raw_body).order_by(quarantine_rows.c.id)).scalars().all()
    assert [bytes(raw) for raw in kept] == [b"", "ana@example.com".encode("utf-16")]
