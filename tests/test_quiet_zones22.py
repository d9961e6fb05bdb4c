"""Quiet hours' time zones (the person's, as it is when a message comes due; a trait that names no zone gives way to
the device's) and durations the rules schema and the loader judge alike."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import select

from hub.claim_checks import ClaimChecks
from hub.errors import ConfigError
from hub.model import RawEvent
from hub.quiet_hours import QuietHours
from hub.rules import load_rules
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.store import inbox, outbox, schema
from tests.conftest import message
from tests.test_absence_timers import BOTH_DATABASES, copied_mappings, hub_on

# --- the zone a trait that names none gives way to ------------------------------------------------------------------

@pytest.mark.parametrize("junk", [
    "GMT+2", "+02:00", "Europe/Londn", 2, "localtime", "posixrules", "Factory", "right/UTC", "posix/Europe/Paris",
])
def test_a_timezone_trait_that_is_no_zone_gives_way_to_the_zone_the_device_sent(junk: object) -> None:
    """A `timezone` trait that names no zone (`GMT+2` typed in a form, a typo) was taken as the person's zone all
    the same and, unknown, fell back to the hub's default (UTC) over the zone the event's device sent: a person
    in Tokyo got a non-urgent message at 23:00 there. So were names zoneinfo loads that are no place's zone
    (`localtime`, the server's own: quiet hours followed the server; twenty-fifth session)."""
    quiet = QuietHours.parse("22:00-08:00", "UTC")
    from_tokyo = {"context": {"timezone": "Asia/Tokyo"}}
    tokyo = quiet.zone_of({"timezone": junk}, from_tokyo)
    assert tokyo.key == "Asia/Tokyo"
    assert quiet.why_held({"timezone": junk}, from_tokyo, tokyo) == (
        f"quiet hours 22:00-08:00 in Asia/Tokyo (the profile's timezone {junk!r} is not a known zone; "
        "the device's context.timezone was used)"
    )
    nowhere = {"context": {"timezone": "Mars/Olympus"}}
    assert quiet.why_held({"timezone": junk}, nowhere, quiet.zone_of({"timezone": junk}, nowhere)) == (
        f"quiet hours 22:00-08:00 in UTC (the profile's timezone {junk!r} is not a known zone; "
        "the device's context.timezone 'Mars/Olympus' is not a known zone; the default was used)"
    )
    assert quiet.zone_at_claim({"timezone": junk}, "Asia/Tokyo").key == "Asia/Tokyo"


# --- a held message, after its person's zone changed ------------------------------------------------------------------

FOLLOW_UP_IN_10H = """
rules:
  - id: trial_follow_up
    urgency: delayed
    when: {event: Trial Started}
    respond:
      - channel: email
        template: cart_abandonment.email.j2
        delay: 10h
    vars: {discount_code: X, discount_percent: 1, cart_url: https://shop.example.com/cart}
"""
START = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)  # bo starts a trial; 10 h later, 21:00 in Paris, is quiet
EIGHT_IN_PARIS = datetime(2026, 1, 6, 7, 0, tzinfo=timezone.utc)


def take(hub: Hub, at: datetime, *messages: dict[str, Any]) -> None:
    """`messages` received and taken in by the pipeline `at`."""
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], at)
    while hub.pipeline.run_once(at):
        pass


def identify(at: datetime, traits: dict[str, Any]) -> dict[str, Any]:
    return message("identify", userId="bo", traits=traits, timestamp=at.isoformat())


@BOTH_DATABASES
@pytest.mark.parametrize(("moved_to", "sent", "held_until"), [
    ("America/Los_Angeles", False, datetime(2026, 1, 6, 16, 0, tzinfo=timezone.utc)),  # 08:00 in Los Angeles
    ("Pacific Standard Time", True, None),  # names no zone: the zone routing judged in stands
])
def test_a_held_message_is_judged_in_the_zone_the_person_has_when_it_is_due(
    tmp_path: Path, database_url: str, moved_to: str, sent: bool, held_until: datetime | None
) -> None:
    """bo's follow-up email was held until 08:00 in Paris; meanwhile his `timezone` became America/Los_Angeles.
    The claim judged quiet hours in the zone stamped when it was planned, and the email went at 23:00 his time."""
    hub = hub_on(tmp_path, database_url=database_url, quiet_hours="21:00-08:00",
                 mappings_dir=str(copied_mappings(tmp_path, FOLLOW_UP_IN_10H)))
    try:
        take(hub, START - timedelta(minutes=5), identify(START - timedelta(minutes=5), {"email": "bo@example.com", "timezone": "Europe/Paris"}))
        take(hub, START, message(userId="bo", event="Trial Started", timestamp=START.isoformat()))
        take(hub, START + timedelta(hours=2), identify(START + timedelta(hours=2), {"timezone": moved_to}))
        with hub.store.write() as connection:
            claimed = outbox.claim_due(connection, 10, EIGHT_IN_PARIS, timedelta(seconds=30))
            going = ClaimChecks(hub.router.policy.quiet_hours).may_go(connection, claimed, EIGHT_IN_PARIS)
        with hub.store.read() as connection:
            due = connection.execute(select(schema.deliveries.c.next_attempt_at)).scalar_one()
        assert [d.channel for d in claimed] == ["email"]
        assert (bool(going), None if going else due.astimezone(timezone.utc)) == (sent, held_until)
    finally:
        hub.delivery.close()
        hub.store.dispose()


# --- durations under a microsecond ----------------------------------------------------------------------------------

@pytest.mark.parametrize("within", ["0.0000001s", "0.0000004s", "0.0000000000001w"])
def test_the_schema_and_the_loader_agree_on_a_duration_shorter_than_a_microsecond(tmp_path: Path, within: str) -> None:
    """The schema takes any duration with a digit other than 0 as "more than 0s", so the editor showed the file as
    valid; the loader rounded it to 0 microseconds and refused it ("must be more than 0s")."""
    document = {"rules": [{"id": "r", "when": {"count": {"event": "Product Viewed", "at_least": 2, "within": within}},
                           "respond": [{"channel": "sms", "template": "t.j2"}]}]}
    rules_file = tmp_path / "triggers.yaml"
    rules_file.write_text(json.dumps(document))
    triggers_schema = json.loads((PROJECT_MAPPINGS / "schema" / "triggers.schema.json").read_text())
    assert Draft202012Validator(triggers_schema).is_valid(document)
    try:
        [rule] = load_rules(rules_file)
    except ConfigError as exc:
        pytest.fail(f"the schema takes within: {within} and the loader refuses it: {exc}")
    assert rule.when.count.within == timedelta(microseconds=1)
