"""Time (audit 24): a time zone name that is no zone, events dated far ahead, a first send held at its claim for
quiet hours, and a retention longer than the calendar."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from connectors.sandbox.providers import SandboxProviders
from connectors.sources.segment import SegmentSource
from hub.claim_checks import ClaimChecks
from hub.cli import app
from hub.clock import utcnow
from hub.mapping import load_mapping
from hub.model import RawEvent
from hub.normalize import normalize
from hub.quiet_hours import QuietHours
from hub.retry import RetryPolicy
from hub.settings import PROJECT_MAPPINGS
from hub.store import Store, outbox, schema
from tests.conftest import RunningHub, make_settings, message, serve_hub, wait_for
from tests.test_absence_timers import copied_mappings, hub_on
from tests.test_cap_timing22 import email_nudge_mappings
from tests.test_quiet_zones22 import EIGHT_IN_PARIS, FOLLOW_UP_IN_10H, START, identify, take
from tests.test_future_event_times import moved_back_whole
from tests.test_sources import build, sdk_batch

# A path-like `timezone` of a few hundred parts: no zone, so it must give way to the device's or the default, as
# `GMT+2` does. zoneinfo turns each `/` into a package to import and overflowed the stack instead.
DEEP_ZONE = "a/" * 400 + "b"
TWO_YEARS = timedelta(days=2 * 365)

DELAYED_CART_EMAIL = """
rules:
  - id: cart_nudge
    urgency: delayed
    when: {event: Cart Viewed}
    respond:
      - {channel: email, template: cart_nudge.email.j2%s}
"""


def quiet_hours_not_now() -> str:
    """A quiet-hours window in UTC that does not hold now, so a message planned now is not held by it."""
    hour = (utcnow().hour + 3) % 24
    return f"{hour:02d}:00-{(hour + 2) % 24:02d}:00"


def cart_email_mappings(tmp_path: Path, delay: str = "") -> Path:
    """Mappings whose one rule answers a Cart Viewed with a non-urgent email (after `delay`, if given)."""
    mappings = email_nudge_mappings(tmp_path)
    (mappings / "triggers.yaml").write_text(DELAYED_CART_EMAIL % (f", delay: {delay}" if delay else ""))
    return mappings


# --- 1. a time zone name that is no zone --------------------------------------------------------------------------

@pytest.mark.parametrize("name", [DEEP_ZONE, "Europe/Paris\n", "a/b/c/d/e", "x" * 65, "../../etc/passwd"])
def test_a_name_that_cannot_be_an_iana_key_gives_way_to_the_default_zone(name: str) -> None:
    """A path-like name of hundreds of parts made zoneinfo recurse until RecursionError, which escaped
    `quiet_hours.zone` (it caught only a missing zone and ValueError) instead of giving way to the default."""
    quiet = QuietHours.parse("22:00-08:00", "Asia/Tokyo")
    assert quiet.zone_of({"timezone": name}, {"context": {"timezone": name}}).key == "Asia/Tokyo"
    assert quiet.zone_at_claim({"timezone": name}, name).key == "Asia/Tokyo"


@pytest.mark.parametrize("whose", ["trait", "device"])
def test_a_path_like_timezone_gives_way_to_the_default_zone_instead_of_failing_the_event(
    tmp_path: Path, sandbox: SandboxProviders, whose: str
) -> None:
    """A `timezone` trait such as `a/a/.../b` (anyone with the public write key can set it), or the same text as
    the event's `context.timezone`, made routing raise RecursionError for each non-urgent message of the person:
    the event was quarantined instead of sending the email."""
    settings = make_settings(tmp_path, mappings_dir=cart_email_mappings(tmp_path), quiet_hours=quiet_hours_not_now(),
                             pipeline_max_attempts=1, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        zone_trait = {"timezone": DEEP_ZONE} if whose == "trait" else {}
        device = {"context": {"timezone": DEEP_ZONE}} if whose == "device" else {}
        hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "first_name": "Ana", **zone_trait}),
                 message(userId="u-ana", event="Cart Viewed", **device))
        hub.settle()
    assert len(sandbox.smtp.received) == 1


def test_one_persons_path_like_timezone_trait_does_not_stop_everyone_elses_deliveries(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Ana's cart email waits 3 s; meanwhile an identify sets her `timezone` trait to a long path-like text. Every
    claim of the delivery worker then took her due email first, read her zone again for quiet hours, raised
    RecursionError and rolled back, so the next claim took the same batch: Bob's email was never sent, nor anyone's."""
    settings = make_settings(tmp_path, mappings_dir=cart_email_mappings(tmp_path, "3s"),
                             quiet_hours=quiet_hours_not_now(), **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "first_name": "Ana"}),
                 message(userId="u-ana", event="Cart Viewed"))
        hub.settle()
        hub.send(message("identify", userId="u-ana", traits={"timezone": DEEP_ZONE}),
                 message("identify", userId="u-bob", traits={"email": "bob@example.com", "first_name": "Bob"}),
                 message(userId="u-bob", event="Cart Viewed"))
        hub.settle()
        wait_for(lambda: len(sandbox.smtp.received) == 2, timeout=12)
    assert {address for mail in sandbox.smtp.received for address in mail.rcpt_tos} == {"ana@example.com", "bob@example.com"}


# --- 3. an event dated far ahead ------------------------------------------------------------------------------------

def test_an_event_dated_two_years_ahead_is_taken_as_happening_when_received_not_quarantined(running_hub: RunningHub) -> None:
    """README: any time after receipt "becomes the time received". A device whose clock was reset two years ahead
    (no `sentAt`) got its 200, and then the event was quarantined ("over a century before or a year after the
    hub received it"): acknowledged, and lost to every rule. Only a year ahead was moved back."""
    ahead = (utcnow() + TWO_YEARS).isoformat()
    answer = running_hub.send(message("identify", userId="u-kim", traits={"email": "kim@example.com"}, timestamp=ahead))
    assert answer.status_code == 200
    running_hub.settle()
    with running_hub.hub.store.read() as connection:
        stored = connection.execute(select(schema.touchpoints.c.occurred_at, schema.touchpoints.c.received_at)).all()
        quarantined = connection.execute(select(schema.quarantine.c.reason)).scalars().all()
    assert quarantined == []
    assert len(stored) == 1 and stored[0].occurred_at <= stored[0].received_at


def test_a_batch_from_a_clock_two_years_fast_is_moved_back_whole_keeping_its_spacing() -> None:
    """A batch without `sentAt` from a clock two years fast: only one up to a year ahead was moved back as a whole;
    this one was left for `normalize` to refuse, each message after its 200."""
    moved_back_whole(TWO_YEARS)


def test_a_batch_whose_times_lie_over_a_century_apart_keeps_its_messages_dated_in_the_past() -> None:
    """A message dated in the year 9999 beside one of yesterday is no one clock's error: moved back as far as the
    first, yesterday's would fall thousands of years back and be refused after the 200. Each keeps its own time;
    `normalize` takes the one dated ahead at its receipt."""
    yesterday = (utcnow() - timedelta(days=1)).isoformat()
    parsed = build(SegmentSource, write_key="wk").parse(sdk_batch(
        message(userId="amy", event="Cart Viewed", timestamp=yesterday),
        message(userId="amy", event="Cart Viewed", timestamp="9999-12-31T23:59:00+00:00"),
    )).events
    assert [event.payload["timestamp"] for event in parsed] == [yesterday, "9999-12-31T23:59:00+00:00"]


def senders_message(mapping_file: str, at: datetime) -> dict[str, Any]:
    """One message of the source `mapping_file` maps, dated `at` by its sender."""
    if mapping_file == "hubspot.yaml":
        return {"subscriptionType": "contact.creation", "objectId": 7, "portalId": 1,
                "occurredAt": int(at.timestamp() * 1000)}
    if mapping_file == "standard_webhooks.yaml":
        return {"type": "contact.created", "timestamp": at.isoformat(), "data": {"email": "amy@example.com"}}
    return message(userId="amy", event="Cart Viewed", timestamp=at.isoformat())


@pytest.mark.parametrize("mapping_file", ["segment.yaml", "rudderstack.yaml", "hubspot.yaml", "generic_hmac.yaml",
                                          "standard_webhooks.yaml"])
@pytest.mark.parametrize("ahead", [TWO_YEARS, None], ids=["two-years", "year-9999"])
def test_a_webhook_event_dated_years_ahead_happens_when_received_its_time_kept(mapping_file: str, ahead: timedelta | None) -> None:
    """Every source's time reaches `normalize`, which refused a time over a year after receipt (a MappingError:
    the event quarantined after its 2xx) instead of taking it as the time received."""
    received_at = utcnow()
    sent_time = received_at + ahead if ahead else datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc)
    raw = RawEvent("src", "m-1", senders_message(mapping_file, sent_time))
    touchpoint = normalize(raw, load_mapping(PROJECT_MAPPINGS / mapping_file), received_at, "US")
    assert touchpoint.occurred_at == received_at
    assert abs(datetime.fromisoformat(touchpoint.context["originalTimestamp"]) - sent_time) < timedelta(milliseconds=1)


# --- 4. a first send held at its claim for quiet hours --------------------------------------------------------------

def test_a_message_held_again_at_its_claim_for_quiet_hours_starts_its_retry_budget_when_they_end(tmp_path: Path) -> None:
    """docs/architecture.md: a delivery's maximum age counts "from when the delivery was first due: the end of its
    delay or quiet hours". bo's follow-up was due at 08:00 in Paris (07:00 UTC); he had moved to Los Angeles, so
    its claim held it until 08:00 there (16:00 UTC), leaving `first_due_at` at 07:00: at 16:00 a one-hour
    `max_age` was spent, and its first transient error dead-lettered it. The daily cap counted it at 07:00."""
    hub = hub_on(tmp_path, quiet_hours="21:00-08:00", mappings_dir=str(copied_mappings(tmp_path, FOLLOW_UP_IN_10H)))
    eight_in_los_angeles = datetime(2026, 1, 6, 16, 0, tzinfo=timezone.utc)
    try:
        take(hub, START - timedelta(minutes=5),
             identify(START - timedelta(minutes=5), {"email": "bo@example.com", "timezone": "Europe/Paris"}))
        take(hub, START, message(userId="bo", event="Trial Started", timestamp=START.isoformat()))
        take(hub, START + timedelta(hours=2), identify(START + timedelta(hours=2), {"timezone": "America/Los_Angeles"}))
        checks = ClaimChecks(hub.router.policy.quiet_hours)
        with hub.store.write() as connection:
            claimed = outbox.claim_due(connection, 10, EIGHT_IN_PARIS, timedelta(seconds=30))
            assert checks.may_go(connection, claimed, EIGHT_IN_PARIS) == []  # held until 08:00 in Los Angeles
        with hub.store.read() as connection:
            goes_at = outbox.going_since(connection, [claimed[0].profile_id], ["email"], START)
        assert goes_at == {claimed[0].profile_id: [eight_in_los_angeles]}
        with hub.store.write() as connection:
            claimed = outbox.claim_due(connection, 10, eight_in_los_angeles, timedelta(seconds=30))
            [going] = checks.may_go(connection, claimed, eight_in_los_angeles)
        one_hour_budget = RetryPolicy(max_attempts=5, max_age=timedelta(hours=1), base_delay=1.0, max_delay=60.0)
        assert going.retry_age(eight_in_los_angeles) == timedelta(0), going.first_due_at
        assert one_hour_budget.next_delay(1, going.retry_age(eight_in_los_angeles), None) is not None
    finally:
        hub.delivery.close()
        hub.store.dispose()


# --- 6. a retention longer than the calendar ------------------------------------------------------------------------

@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_touchhub_prune_with_a_retention_of_a_million_days_prunes_nothing_instead_of_a_traceback(
    store: Store, database_url: str
) -> None:
    """Ops keep data "for ever" with a large retention (1000000 days) as often as with 0: `retention_cutoff`
    (now - days) raised OverflowError, and `touchhub prune` died with a traceback (as the hub's hourly prune).
    HUB_RETENTION_DAYS itself is bounded at 36,500 days (tests/test_settings24.py): refused at start, naming it."""
    env = {"HUB_DATABASE_URL": database_url, "COLUMNS": "200"}
    refused = CliRunner().invoke(app, ["prune", "--dry-run"], env={**env, "HUB_RETENTION_DAYS": "1000000"})
    assert refused.exit_code == 2 and "HUB_RETENTION_DAYS" in refused.output, refused.output
    result = CliRunner().invoke(app, ["prune", "--dry-run", "--older-than-days", "1000000"], env=env)
    assert result.exit_code == 0, result.output
    assert "Would delete: rows from before 0001-01-01 00:00 UTC" in " ".join(result.output.split())  # the title wraps
