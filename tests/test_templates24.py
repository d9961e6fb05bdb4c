"""A template saved twice within one mtime tick is read with its last save; a rule's `delay` runs from the decision
(its event's time), not from when the hub took the event in."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hub.model import SEND_BY
from hub.runtime import Hub
from hub.store import schema
from hub.templates import TemplateRenderer
from tests.conftest import message
from tests.test_absence_timers import BOTH_DATABASES, copied_mappings, hub_on
from tests.test_quiet_zones22 import FOLLOW_UP_IN_10H, START, identify, take


def save_in_the_same_tick(path: Path, text: str) -> None:
    """Write `text` leaving the file's mtime as it was: two saves a coarse-grained file system stamps alike (an
    editor's and its formatter's, a deploy writing the file twice)."""
    stamp = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))
    time.sleep(0.01)


# --- a second save within one mtime tick ----------------------------------------------------------------------------

def test_a_template_saved_twice_within_one_mtime_tick_is_reloaded_with_its_last_save(tmp_path: Path) -> None:
    """Templates were judged by mtime alone (Jinja's `uptodate`), where mappings and triggers.yaml compare a digest
    of the content too: the second save was never loaded, and the first version (a half-written one, say) was sent
    for as long as the process ran."""
    path = tmp_path / "greeting.j2"
    path.write_text("Hello v1")
    renderer = TemplateRenderer(tmp_path, recheck_seconds=0)
    assert renderer.render("greeting.j2", {}) == {"body": "Hello v1"}
    save_in_the_same_tick(path, "Hello v2")
    assert renderer.render("greeting.j2", {}) == {"body": "Hello v2"}


def test_a_fix_saved_within_the_tick_of_a_refused_edit_takes_effect(tmp_path: Path) -> None:
    """A half-written save that does not parse was refused (the last good template stays in force), and the whole
    save that followed within the same mtime tick was never looked at: the refusal stayed, and the old text was
    sent, until the file was saved again."""
    path = tmp_path / "sms.j2"
    path.write_text("Hi {{ profile.first_name }}")
    renderer = TemplateRenderer(tmp_path, recheck_seconds=0)
    assert renderer.render("sms.j2", {"profile": {"first_name": "Ana"}}) == {"body": "Hi Ana"}
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    path.write_text("Hi {{ profile.first_na")  # cut short as it was written
    os.utime(path, ns=(stamp, stamp))
    assert renderer.render("sms.j2", {"profile": {"first_name": "Ana"}}) == {"body": "Hi Ana"}  # the last good one
    assert renderer.refused_edits({"sms.j2"})
    save_in_the_same_tick(path, "Hello {{ profile.first_name }}, your order is on its way")
    assert renderer.render("sms.j2", {"profile": {"first_name": "Ana"}}) == {"body": "Hello Ana, your order is on its way"}
    assert renderer.refused_edits({"sms.j2"}) == []


def test_a_layout_saved_twice_within_one_mtime_tick_is_rendered_with_its_last_save(tmp_path: Path) -> None:
    """Jinja asks whether a layout is up to date each time a template extending it renders; judged by mtime alone,
    its second save within one tick (the footer's link corrected) never reached a message."""
    layout = tmp_path / "layout.j2"
    layout.write_text("{% block body %}{% endblock %}{% block footer %}Help: https://shop.example/hlep{% endblock %}")
    (tmp_path / "sms.j2").write_text('{% extends "layout.j2" %}{% block body %}Hi{% endblock %}')
    renderer = TemplateRenderer(tmp_path, recheck_seconds=0)
    assert renderer.render("sms.j2", {})["footer"] == "Help: https://shop.example/hlep"
    save_in_the_same_tick(layout, "{% block body %}{% endblock %}{% block footer %}Help: https://shop.example/help{% endblock %}")
    assert renderer.render("sms.j2", {}) == {"body": "Hi", "footer": "Help: https://shop.example/help"}


# --- a rule's delay, for an event taken in late ---------------------------------------------------------------------

def follow_up(hub: Hub) -> tuple[datetime, dict[str, Any]]:
    """When the trial's follow-up email is due, and its content."""
    with hub.store.read() as connection:
        due, content = connection.execute(select(schema.deliveries.c.next_attempt_at, schema.deliveries.c.content)).one()
    return due.astimezone(timezone.utc), content


@BOTH_DATABASES
@pytest.mark.parametrize(("late", "due"), [
    (timedelta(hours=9), START + timedelta(hours=10)),  # one hour of its 10-hour delay left
    (timedelta(hours=11), START + timedelta(hours=11)),  # its delay over already: at once
])
def test_a_delayed_action_of_an_event_taken_in_late_goes_its_delay_after_the_event(
    tmp_path: Path, database_url: str, late: timedelta, due: datetime
) -> None:
    """`delay` is "Send this long after the decision", and a decision's time is its event's; it counted from when
    the hub took the event in: bo's Trial Started, queued offline on his phone and taken in 9 hours late, had its
    10-hour follow-up planned 19 hours after the trial started (taken in 11 hours late, 21 hours after)."""
    hub = hub_on(tmp_path, database_url=database_url, mappings_dir=str(copied_mappings(tmp_path, FOLLOW_UP_IN_10H)))
    try:
        take(hub, START - timedelta(minutes=5), identify(START - timedelta(minutes=5), {"email": "bo@example.com"}))
        take(hub, START + late, message(userId="bo", event="Trial Started", timestamp=START.isoformat()))
        planned_at, content = follow_up(hub)
        assert planned_at == due
        assert datetime.fromisoformat(content[SEND_BY]) == due + timedelta(hours=12)  # HUB_MESSAGE_MAX_AGE_HOURS after
    finally:
        hub.delivery.close()
        hub.store.dispose()


def test_a_delayed_action_of_an_event_older_than_the_message_max_age_is_still_skipped(tmp_path: Path) -> None:
    """Counted from the event, a delay does not make an old event young: taken in 13 hours late (over
    HUB_MESSAGE_MAX_AGE_HOURS, 12), the follow-up is skipped as too old, not planned for 10 hours after the event."""
    hub = hub_on(tmp_path, mappings_dir=str(copied_mappings(tmp_path, FOLLOW_UP_IN_10H)))
    try:
        take(hub, START - timedelta(minutes=5), identify(START - timedelta(minutes=5), {"email": "bo@example.com"}))
        take(hub, START + timedelta(hours=13), message(userId="bo", event="Trial Started", timestamp=START.isoformat()))
        with hub.store.read() as connection:
            planned = connection.execute(select(schema.deliveries.c.delivery_id)).all()
            [actions] = connection.execute(select(schema.decisions.c.actions)).scalars().all()
        assert planned == []
        assert [action["fate"] for action in actions] == ["skipped"] and "too old" in actions[0]["reason"]
    finally:
        hub.delivery.close()
        hub.store.dispose()
