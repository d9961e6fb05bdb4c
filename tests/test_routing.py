"""Routing: recipients, consent, template blocks and params become delivery content."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from hub.model import Action, Decision
from hub.routing import ChannelRoute, Router
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
        {"channel": "sms", "fate": "skipped", "reason": "sms consent revoked by the profile"},
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
