"""Routing: recipients, consent, template blocks and params become delivery content."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub.consent import consent_revoked
from hub.daily_cap import has_room
from hub.model import Action, Decision
from hub.quiet_hours import QuietHours
from hub.routes_file import ChannelRoute
from hub.routing import ContactPolicy, Router
from hub.templates import TemplateRenderer


def router(tmp_path: Path) -> Router:
    (tmp_path / "sms.j2").write_text("Hi {{ profile.first_name }}: {{ vars.link }}")
    (tmp_path / "email.j2").write_text(
        "{% block subject %}Your order, {{ profile.first_name }}{% endblock %}\n"
        "{% block text %}See {{ vars.link }}{% endblock %}\n{% block html %}<a href='{{ vars.link }}'>See</a>{% endblock %}"
    )
    routes = {
        "sms": ChannelRoute(destination="twilio_sms", target="phone"),
        "email": ChannelRoute(destination="email_smtp", target="email"),
        "crm": ChannelRoute(destination="salesforce", target="profile_id"),
    }
    return Router(routes, TemplateRenderer(tmp_path))


def decision(*actions: Action) -> Decision:
    return Decision("d-1", "rule", "rule@1", "P1", "tp-1", datetime(2026, 1, 1, tzinfo=timezone.utc), actions,
                    variables={"link": "https://help.example.com"})


PROFILE = {"traits": {"first_name": "Ana"}, "identifiers": {"phone": ["+14155550101", "+14155550199"], "email": ["ana@example.com"]}}


def test_newest_identifier_is_the_recipient_and_blocks_become_content_parts(tmp_path: Path) -> None:
    plan = router(tmp_path).plan(
        decision(Action("sms", "sms.j2"), Action("email", "email.j2"), Action("crm", "sms.j2", {"fields": {"Intent__c": "support"}})),
        PROFILE, {},
    )
    sms, email, crm = plan.deliveries
    assert (sms.target, sms.content["body"]) == ("+14155550101", "Hi Ana: https://help.example.com")
    assert (email.content["subject"], email.content["text"]) == ("Your order, Ana", "See https://help.example.com")
    assert email.content["html"] == "<a href='https://help.example.com'>See</a>"
    assert (crm.target, crm.destination_id, crm.content["params"]) == ("P1", "salesforce", {"fields": {"Intent__c": "support"}})
    assert len({d.delivery_id for d in plan.deliveries}) == 3


def test_unroutable_actions_are_skipped_with_a_reason(tmp_path: Path) -> None:
    opted_out = {"traits": {"consent": {"sms": False}}, "identifiers": {}}
    plan = router(tmp_path).plan(decision(Action("sms", "sms.j2"), Action("email", "email.j2"), Action("fax", "sms.j2")), opted_out, {})
    assert plan.deliveries == []
    assert plan.fates() == [
        {"channel": "sms", "fate": "blocked_by_consent", "reason": "sms consent revoked by the profile"},
        {"channel": "email", "fate": "skipped", "reason": "profile has no email"},
        {"channel": "fax", "fate": "skipped", "reason": "no route for channel 'fax' in routes.yaml"},
    ]


def test_multicast_route_hands_over_every_recipient(tmp_path: Path) -> None:
    (tmp_path / "push.j2").write_text("{% block title %}Hi {{ profile.first_name }}{% endblock %}{% block body %}Back?{% endblock %}")
    routes = {"push": ChannelRoute(destination="fcm_push", target="push_token", multicast=True)}
    profile = {"traits": {"first_name": "Ana"}, "identifiers": {"push_token": ["tok-new", "tok-old"]}}
    [push] = Router(routes, TemplateRenderer(tmp_path)).plan(decision(Action("push", "push.j2")), profile, {}).deliveries
    assert (push.target, push.content["recipients"]) == ("tok-new", ["tok-new", "tok-old"])
    assert (push.content["title"], push.content["body"]) == ("Hi Ana", "Back?")


def urgent(*actions: Action, urgency: str = "immediate", status: str = "fired") -> Decision:
    return Decision("d-2", "rule", "rule@1", "P1", "tp-1", NIGHT, actions, {"link": "x"}, {"cap": {"max": 1, "within_seconds": 60}},
                    status=status, urgency=urgency)


NIGHT = datetime(2026, 1, 1, 23, 30, tzinfo=timezone.utc)  # 23:30 UTC, 18:30 in New York


def policy_router(tmp_path: Path, **policy: object) -> Router:
    base = router(tmp_path)
    routes = {**base.routes, "push": ChannelRoute(destination="fcm_push", target="push_token"),
              "crm": ChannelRoute(destination="salesforce", target="profile_id", reaches_person=False)}
    return Router(routes, base.templates, ContactPolicy(**policy))


def test_no_push_token_falls_back_to_email_and_says_so(tmp_path: Path) -> None:
    plan = policy_router(tmp_path).plan(urgent(Action("push", "sms.j2", fallback=(("email", "email.j2"),))), PROFILE, {}, now=NIGHT)
    [email] = plan.deliveries
    assert (email.channel, email.target) == ("email", "ana@example.com")
    assert plan.fates() == [
        {"channel": "push", "fate": "fell_back", "because": "skipped", "reason": "profile has no push_token", "to": "email"},
        {"channel": "email", "fate": "planned", "delivery_id": email.delivery_id, "destination": "email_smtp", "fallback_for": "push"},
    ]


def test_consent_blocks_and_records_why_even_when_no_fallback_helps(tmp_path: Path) -> None:
    profile = {**PROFILE, "traits": {"first_name": "Ana", "sms_opt_out": True, "email_opt_out": True}}
    plan = policy_router(tmp_path).plan(urgent(Action("sms", "sms.j2", fallback=(("email", "email.j2"),))), profile, {}, now=NIGHT)
    assert plan.deliveries == []
    assert [(f["channel"], f["fate"]) for f in plan.fates()] == [("sms", "fell_back"), ("email", "blocked_by_consent")]
    assert plan.fates()[1]["reason"] == "email consent revoked by the profile"


def test_daily_cap_counts_messages_to_the_person_but_not_crm_updates(tmp_path: Path) -> None:
    actions = (Action("sms", "sms.j2"), Action("email", "email.j2"), Action("crm", "sms.j2", fields={"Intent__c": "{{ vars.link }}"}))
    earlier = [NIGHT - timedelta(hours=20), NIGHT - timedelta(hours=1)]
    plan = policy_router(tmp_path, daily_cap=3).plan(urgent(*actions), PROFILE, {}, now=NIGHT, messages_going=earlier)
    assert [f["fate"] for f in plan.fates()] == ["planned", "capped", "planned"]
    assert plan.fates()[1]["reason"] == "daily cap per profile reached (3 messages in 24 h)"
    assert plan.deliveries[1].content["params"] == {"fields": {"Intent__c": "x"}}


def test_the_daily_cap_counts_each_message_when_it_goes_not_when_it_was_planned(tmp_path: Path) -> None:
    """A follow-up planned yesterday to go tomorrow leaves today's one message free, and tomorrow's taken: a
    second message delayed to then is capped, where planning-time counting sent both together."""
    routing = policy_router(tmp_path, daily_cap=1)
    follow_up_tomorrow = [NIGHT + timedelta(days=1)]
    now_and_tomorrow = urgent(Action("sms", "sms.j2"), Action("email", "email.j2", delay=timedelta(days=1, hours=2)))
    plan = routing.plan(now_and_tomorrow, PROFILE, {}, now=NIGHT, messages_going=follow_up_tomorrow)
    assert [f["fate"] for f in plan.fates()] == ["planned", "capped"]
    two_days_on = urgent(Action("sms", "sms.j2", delay=timedelta(days=2)))
    assert [f["fate"] for f in routing.plan(two_days_on, PROFILE, {}, now=NIGHT, messages_going=follow_up_tomorrow).fates()] == ["planned"]


@pytest.mark.parametrize(
    ("going", "cap", "room"),
    [
        ([], 1, True),
        ([NIGHT - timedelta(hours=23)], 1, False),  # within the 24 h before
        ([NIGHT - timedelta(hours=24)], 1, True),  # a day ago exactly: out of every 24 h holding now
        ([NIGHT + timedelta(hours=23)], 1, False),  # planned to go later, within 24 h
        ([NIGHT - timedelta(hours=20), NIGHT + timedelta(hours=20)], 2, True),  # 40 h apart: no 24 h holds all three
        ([NIGHT - timedelta(hours=10), NIGHT + timedelta(hours=10)], 2, False),
    ],
)
def test_the_daily_cap_holds_in_every_24_hours(going: list[datetime], cap: int, room: bool) -> None:
    assert has_room(going, NIGHT, cap) is room


def test_messages_about_what_happened_too_long_ago_are_skipped_but_crm_updates_still_go(tmp_path: Path) -> None:
    """A backfill, a replay of yesterday's data or a timer worker down all night would otherwise message people
    about the past; the CRM still learns what happened."""
    actions = (Action("sms", "sms.j2"), Action("crm", "sms.j2"))
    stale = policy_router(tmp_path, max_age=timedelta(hours=12))
    plan = stale.plan(urgent(*actions), PROFILE, {}, now=NIGHT + timedelta(hours=13))
    assert [(f["channel"], f["fate"]) for f in plan.fates()] == [("sms", "skipped"), ("crm", "planned")]
    assert plan.fates()[0]["reason"] == (
        "too old to send: its cause was at 2026-01-01 23:30 UTC, over 12 h before it was routed (HUB_MESSAGE_MAX_AGE_HOURS)"
    )
    assert [d.channel for d in plan.deliveries] == ["crm"]
    fresh = stale.plan(urgent(*actions), PROFILE, {}, now=NIGHT + timedelta(hours=11))
    assert [f["fate"] for f in fresh.fates()] == ["planned", "planned"]
    sms, crm = fresh.deliveries  # the SMS carries the time it may still go by, for its retries and replays
    assert (sms.content["send_by"], "send_by" in crm.content) == ((NIGHT + timedelta(hours=23)).isoformat(), False)


def test_a_capped_decision_plans_nothing_and_every_action_says_capped(tmp_path: Path) -> None:
    plan = policy_router(tmp_path).plan(urgent(Action("sms", "sms.j2"), status="capped"), PROFILE, {}, now=NIGHT)
    assert plan.deliveries == []
    assert plan.fates()[0]["fate"] == "capped" and "rule cap reached" in plan.fates()[0]["reason"]


def test_quiet_hours_hold_non_urgent_messages_until_morning_in_the_profiles_zone(tmp_path: Path) -> None:
    quiet = QuietHours.parse("21:00-08:00", "UTC")
    routing = policy_router(tmp_path, quiet_hours=quiet)
    actions = (Action("sms", "sms.j2"), Action("crm", "sms.j2"))
    [sms, crm] = routing.plan(urgent(*actions, urgency="delayed"), PROFILE, {}, now=NIGHT).deliveries
    assert sms.not_before == datetime(2026, 1, 2, 8, tzinfo=timezone.utc)
    assert crm.not_before is None  # a CRM update disturbs nobody
    assert (sms.content["quiet_zone"], "quiet_zone" in crm.content) == ("UTC", False)  # for its retries
    assert "quiet_zone" not in routing.plan(urgent(*actions), PROFILE, {}, now=NIGHT).deliveries[0].content
    in_new_york = {**PROFILE, "traits": {"first_name": "Ana", "timezone": "America/New_York"}}
    assert routing.plan(urgent(*actions, urgency="delayed"), in_new_york, {}, now=NIGHT).deliveries[0].not_before is None
    assert routing.plan(urgent(*actions), PROFILE, {}, now=NIGHT).deliveries[0].not_before is None  # urgent: at once
    fate = routing.plan(urgent(*actions, urgency="delayed"), PROFILE, {}, now=NIGHT).fates()[0]
    assert (fate["fate"], fate["not_before"]) == ("delayed_quiet_hours", "2026-01-02T08:00:00+00:00")
    assert fate["reason"] == "quiet hours 21:00-08:00 in UTC"
    on_mars = {**PROFILE, "traits": {"first_name": "Ana", "timezone": "Mars/Olympus"}}
    fate = routing.plan(urgent(*actions, urgency="delayed"), on_mars, {}, now=NIGHT).fates()[0]
    assert fate["reason"] == "quiet hours 21:00-08:00 in UTC (the profile's timezone 'Mars/Olympus' is not a known zone; the default was used)"


def test_a_channel_whose_destination_is_not_configured_falls_back_if_the_action_says_where(tmp_path: Path) -> None:
    """Push with no FCM settings (`touchhub serve`'s default) was planned, went dead, and the email the rule
    named as its fallback was never tried. The last channel of an action is still planned: its dead letter
    can be replayed once the destination is configured."""
    (tmp_path / "push.j2").write_text("{% block title %}Hi{% endblock %}{% block body %}Back?{% endblock %}")
    routes = {"push": ChannelRoute(destination="fcm_push", target="push_token"), **router(tmp_path).routes}
    served_elsewhere = Router(routes, TemplateRenderer(tmp_path), configured={"twilio_sms", "email_smtp", "salesforce"})
    assert served_elsewhere.unserved == {"push": "fcm_push"}
    with_push = {**PROFILE, "identifiers": {**PROFILE["identifiers"], "push_token": ["tok-1"]}}
    push_or_email = Action("push", "push.j2", fallback=(("email", "email.j2"),))
    plan = served_elsewhere.plan(decision(push_or_email, Action("push", "push.j2")), with_push, {}, now=NIGHT)
    assert [(d.channel, d.destination_id) for d in plan.deliveries] == [("email", "email_smtp"), ("push", "fcm_push")]
    assert plan.fates()[0] == {"channel": "push", "fate": "fell_back", "because": "skipped", "to": "email",
                               "reason": "destination 'fcm_push' is not configured on this hub"}


def test_quiet_hours_run_in_the_persons_own_zone_else_the_zone_their_device_sent_with_the_event(tmp_path: Path) -> None:
    """SDKs send the zone with every event (`context.timezone`). Before, only a `timezone` trait counted, so a
    New York cart abandoned at 22:30 was nudged at 03:00; kept as a trait from every event, the device's zone
    outranked the person's own by recency (and rewrote the profile each time)."""
    routing = policy_router(tmp_path, quiet_hours=QuietHours.parse("21:00-08:00", "UTC"))
    night_in_new_york = datetime(2026, 1, 2, 3, 30, tzinfo=timezone.utc)  # 22:30 in New York, 03:30 UTC
    from_a_phone_in_new_york = {"context": {"timezone": "America/New_York"}}
    nudge = urgent(Action("sms", "sms.j2"), urgency="delayed")
    [sms] = routing.plan(nudge, PROFILE, from_a_phone_in_new_york, now=night_in_new_york).deliveries
    assert (sms.not_before, sms.content["quiet_zone"]) == (datetime(2026, 1, 2, 13, tzinfo=timezone.utc), "America/New_York")
    in_paris = {**PROFILE, "traits": {"first_name": "Ana", "timezone": "Europe/Paris"}}
    [sms] = routing.plan(nudge, in_paris, from_a_phone_in_new_york, now=night_in_new_york).deliveries
    assert sms.content["quiet_zone"] == "Europe/Paris"
    fate = routing.plan(nudge, PROFILE, {"context": {"timezone": "Mars/Olympus"}}, now=night_in_new_york).fates()[0]
    assert fate["reason"] == "quiet hours 21:00-08:00 in UTC (the device's context.timezone 'Mars/Olympus' is not a known zone; the default was used)"


def test_an_action_delay_sets_the_not_before_time(tmp_path: Path) -> None:
    [sms] = policy_router(tmp_path).plan(urgent(Action("sms", "sms.j2", delay=timedelta(minutes=10))), PROFILE, {}, now=NIGHT).deliveries
    assert sms.not_before == NIGHT + timedelta(minutes=10)


def test_an_urgent_rules_delayed_action_still_waits_out_quiet_hours(tmp_path: Path) -> None:
    """`immediate` is for the person on the site now; a follow-up ten hours after noon would land at 22:00, in the
    night's quiet hours, so it waits for the morning, and its retries do too."""
    routing = policy_router(tmp_path, quiet_hours=QuietHours.parse("21:00-08:00", "UTC"))
    noon = NIGHT.replace(hour=12, minute=0)
    now_and_tonight = replace(urgent(Action("sms", "sms.j2"), Action("sms", "sms.j2", delay=timedelta(hours=10))), decided_at=noon)
    at_once, tonight = routing.plan(now_and_tonight, PROFILE, {}, now=noon).deliveries
    assert (at_once.not_before, "quiet_zone" in at_once.content) == (None, False)
    assert (tonight.not_before, tonight.content["quiet_zone"]) == (datetime(2026, 1, 2, 8, tzinfo=timezone.utc), "UTC")


def test_two_actions_reaching_one_target_on_one_channel_are_two_deliveries(tmp_path: Path) -> None:
    """An SMS now and a follow-up SMS in two days: with one id for both, the outbox kept only the first while the
    decision said both were planned."""
    now_and_later = urgent(Action("sms", "sms.j2"), Action("sms", "sms.j2", delay=timedelta(days=2)))
    first, follow_up = policy_router(tmp_path).plan(now_and_later, PROFILE, {}, now=NIGHT).deliveries
    assert first.delivery_id != follow_up.delivery_id and first.target == follow_up.target
    assert follow_up.not_before == NIGHT + timedelta(days=2)


@pytest.mark.parametrize(
    ("local", "released"),
    [("20:59", None), ("21:00", "2026-01-02T08:00"), ("03:00", "2026-01-01T08:00"), ("08:00", None)],
)
def test_quiet_hours_window_wraps_past_midnight(local: str, released: str | None) -> None:
    quiet = QuietHours.parse("21:00-08:00", "Europe/Paris")
    hour, minute = map(int, local.split(":"))
    at = datetime(2026, 1, 1, hour, minute, tzinfo=quiet.default_zone)
    release = quiet.release_time(at, quiet.default_zone)
    assert (release.astimezone(quiet.default_zone).strftime("%Y-%m-%dT%H:%M") if release else None) == released


@pytest.mark.parametrize(
    ("window", "at", "released"),
    [
        # clocks go back at 02:00 EDT: 01:10 comes twice; each is released by the 01:30 after it
        ("22:00-01:30", datetime(2026, 11, 1, 5, 10, tzinfo=timezone.utc), datetime(2026, 11, 1, 5, 30, tzinfo=timezone.utc)),
        ("22:00-01:30", datetime(2026, 11, 1, 6, 10, tzinfo=timezone.utc), datetime(2026, 11, 1, 6, 30, tzinfo=timezone.utc)),
        # clocks go forward from 02:00 EST to 03:00 EDT: 02:30 never comes, the jump releases
        ("00:30-02:30", datetime(2026, 3, 8, 5, 30, tzinfo=timezone.utc), datetime(2026, 3, 8, 7, 0, tzinfo=timezone.utc)),
        ("21:00-08:00", datetime(2026, 3, 8, 5, 30, tzinfo=timezone.utc), datetime(2026, 3, 8, 12, 0, tzinfo=timezone.utc)),
    ],
)
def test_quiet_hours_end_on_the_nights_clocks_change(window: str, at: datetime, released: datetime) -> None:
    """Before, a message in the repeated hour got a release before its own time (routing then recorded it
    held, with no time, and sent it at once), and a window ending in the skipped hour released an hour late."""
    quiet = QuietHours.parse(window, "America/New_York")
    assert quiet.release_time(at, quiet.default_zone) == released


def test_quiet_hours_settings_are_validated() -> None:
    assert QuietHours.parse("", "UTC") is None
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        QuietHours.parse("9pm-8am", "UTC")
    with pytest.raises(ValueError, match="not a known time zone"):
        QuietHours.parse("21:00-08:00", "Mars/Olympus")


@pytest.mark.parametrize(
    ("traits", "revoked"),
    [({"sms_opt_out": True}, True), ({"sms_opt_out": "true"}, True), ({"sms_opt_out": "Yes"}, True),
     ({"sms_opt_out": 1}, True), ({"sms_opt_out": False}, False), ({"sms_opt_out": "false"}, False),
     ({"sms_opt_out": None}, False), ({"consent": {"sms": False}}, True), ({"consent": {"sms": "false"}}, True),
     ({"consent": {"sms": "no"}}, True), ({"consent": {"sms": True}}, False), ({"consent": {"email": False}}, False),
     ({"consent": "no"}, False), ({}, False)],
)
def test_consent_traits_read_as_crms_and_forms_send_them(traits: dict, revoked: bool) -> None:
    """`bool("false")` is True: a CRM's string "false" opted people out, and consent {sms: "false"} did not."""
    assert consent_revoked(traits, "sms") is revoked


def test_a_null_trait_counts_as_missing_for_default_and_its_alias_d(tmp_path: Path) -> None:
    """Segment identify calls carry null for a blank field: "Hi {{ name | d('there') }}," must not read "Hi ,"."""
    renderer = TemplateRenderer(tmp_path)
    assert renderer.render_value("Hi {{ name | default('there') }},", {"name": None}) == "Hi there,"
    assert renderer.render_value("Hi {{ name | d('there') }},", {"name": None}) == "Hi there,"
    assert renderer.render_value("Hi {{ name }},", {"name": None}) == "Hi ,"
