"""Message templates as ops edit them: a broken edit keeps the last good template, a blank one sends nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from hub import templates as templates_module
from hub.clock import utcnow
from hub.decision_explain import explain
from hub.errors import ConfigError
from hub.model import Action, Decision, RawEvent
from connectors.base import load_registry
from hub.routes_file import ChannelRoute
from hub.routing import Router
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.store import decisions, inbox
from hub.templates import TemplateRenderer
from tests.conftest import logs_of, make_settings, support_ticket

ROUTES = {
    "sms": ChannelRoute(destination="twilio_sms", target="phone"),
    "email": ChannelRoute(destination="email_smtp", target="email"),
    "push": ChannelRoute(destination="fcm_push", target="push_token", multicast=True),
    "chat": ChannelRoute(destination="chat_webhook", target="profile_id"),
    "crm": ChannelRoute(destination="salesforce", target="profile_id", reaches_person=False),
}
PERSON = {
    "traits": {"first_name": "Ana"},
    "identifiers": {"phone": ["+14155550101"], "email": ["ana@example.com"], "push_token": ["tok-1"]},
}
SHIPPED = "Hi {{ profile.first_name }}, your order is on its way"
TYPO = "Hi {{ profile.first_name }, your order is on its way"  # a brace lost while editing


def save(path: Path, text: str, seconds_later: int = 0) -> None:
    """Write `text` with an mtime `seconds_later` than the file had, so Jinja sees a change however coarse the clock."""
    path.write_text(text)
    stamp = path.stat().st_mtime_ns + seconds_later * 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def decision(*actions: Action) -> Decision:
    return Decision("d-1", "rule", "rule@1", "P1", "tp-1", datetime(2026, 1, 1, tzinfo=timezone.utc), actions)


def plan_one(folder: Path, action: Action) -> tuple[list[Any], list[dict[str, Any]]]:
    """The deliveries and fates of a decision with one action, templates re-read on every message."""
    plan = Router(ROUTES, TemplateRenderer(folder, recheck_seconds=0)).plan(decision(action), PERSON, {})
    return plan.deliveries, plan.fates()


@pytest.fixture
def template_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    with logs_of(monkeypatch, templates_module) as logs:
        yield logs


# --- an edit that does not parse -----------------------------------------------------------------------------

def test_a_template_edit_that_does_not_parse_keeps_the_last_good_template_in_force(
    tmp_path: Path, template_logs: list[dict[str, Any]]
) -> None:
    """Rules refuse an edit that does not validate and keep the last good ones; a template saved with a typo was
    used as it was: every message of the rule `skipped`, the decision `unreached`, never retried."""
    template = tmp_path / "sms.j2"
    save(template, SHIPPED)
    router = Router(ROUTES, TemplateRenderer(tmp_path, recheck_seconds=0))
    assert router.plan(decision(Action("sms", "sms.j2")), PERSON, {}).fates()[0]["fate"] == "planned"
    save(template, TYPO, seconds_later=2)
    for _ in range(3):  # each message re-checks the file; the refusal is logged once
        plan = router.plan(decision(Action("sms", "sms.j2")), PERSON, {})
        assert [fate["fate"] for fate in plan.fates()] == ["planned"], plan.fates()
        assert plan.deliveries[0].content["body"] == "Hi Ana, your order is on its way"
    problem = f"{template}: TemplateSyntaxError: unexpected '}}' at line 1"
    assert [(entry["event"], entry["problem"]) for entry in template_logs] == [
        ("template edit refused; the last good template stays in force", problem)
    ]
    assert router.templates.refused_edits({"sms.j2"}) == [problem]
    assert router.templates.refused_edits({"other.j2"}) == []  # a template no rule in force names is not shown


def test_a_fixed_template_takes_effect_and_its_refused_edit_is_cleared(tmp_path: Path) -> None:
    """The edit after a refused one is judged afresh: fixed, it is in force and nothing is shown as refused."""
    template = tmp_path / "sms.j2"
    save(template, SHIPPED)
    renderer = TemplateRenderer(tmp_path, recheck_seconds=0)
    renderer.render("sms.j2", {"profile": {"first_name": "Ana"}})
    save(template, TYPO, seconds_later=2)
    assert renderer.refused_edits({"sms.j2"})  # looking re-checks the file: no message needed to see it
    save(template, "Hello {{ profile.first_name }}", seconds_later=4)
    assert renderer.render("sms.j2", {"profile": {"first_name": "Ana"}}) == {"body": "Hello Ana"}
    assert renderer.refused_edits({"sms.j2"}) == []


def test_a_template_checked_at_start_up_stays_in_force_where_no_message_has_named_it_yet(tmp_path: Path) -> None:
    """The start-up (and rules reload) check parsed the file but kept nothing: in a worker that had not yet sent
    the rule's message, a typo saved later skipped every one of them."""
    template = tmp_path / "sms.j2"
    save(template, SHIPPED)
    renderer = TemplateRenderer(tmp_path, recheck_seconds=0)
    renderer.check(["sms.j2"])
    save(template, TYPO, seconds_later=2)
    assert renderer.render("sms.j2", {"profile": {"first_name": "Ana"}}) == {"body": "Hi Ana, your order is on its way"}


def test_a_template_that_never_parsed_still_skips_its_message_saying_why(tmp_path: Path) -> None:
    save(tmp_path / "sms.j2", TYPO)
    deliveries, fates = plan_one(tmp_path, Action("sms", "sms.j2"))
    assert deliveries == []
    assert fates == [{"channel": "sms", "fate": "skipped", "reason": "template sms.j2: unexpected '}'"}]


def test_the_check_names_the_line_of_a_syntax_error(tmp_path: Path) -> None:
    """`touchhub mappings check` and a refused rules edit named the file and the reason, not where in the file."""
    save(tmp_path / "email.j2", "{% block subject %}Hi{% endblock %}\n{% block text %}{{ vars.link }{% endblock %}")
    with pytest.raises(ConfigError) as refused:
        TemplateRenderer(tmp_path).check(["email.j2"])
    assert refused.value.problems == [f"{tmp_path / 'email.j2'}: TemplateSyntaxError: unexpected '}}' at line 2"]


# --- a file a template extends or includes --------------------------------------------------------------------

LOADED = {  # a template and the file it loads, as ops split a shared layout or footer out of their messages
    "extends": ('{% extends "base.j2" %}{% block text %}your order is on its way{% endblock %}',
                "{% block body %}Hi {{ profile.first_name }}, {% block text %}{% endblock %}{% endblock %}"),
    "include": ('Hi {{ profile.first_name }}, {% include "base.j2" %}', "your order is on its way"),
}
LOADED_TYPO = "Hi {{ profile.first_name }, {% block text %}{% endblock %}"


def loading(folder: Path, how: str) -> Path:
    """sms.j2, which loads base.j2 the way `how` says; the path of base.j2."""
    template, loaded = LOADED[how]
    save(folder / "sms.j2", template)
    save(folder / "base.j2", loaded)
    return folder / "base.j2"


@pytest.mark.parametrize("how", LOADED)
def test_a_broken_edit_of_a_template_another_extends_keeps_the_last_good_one_in_force(tmp_path: Path, how: str) -> None:
    """Only the file a rule names was re-checked and kept: Jinja loads the layout it extends (or a file it
    includes) as it renders, so a typo saved there skipped every message of every template built on it."""
    base = loading(tmp_path, how)
    router = Router(ROUTES, TemplateRenderer(tmp_path, recheck_seconds=0))
    assert router.plan(decision(Action("sms", "sms.j2")), PERSON, {}).fates()[0]["fate"] == "planned"
    save(base, LOADED_TYPO, seconds_later=2)
    plan = router.plan(decision(Action("sms", "sms.j2")), PERSON, {})
    assert [fate["fate"] for fate in plan.fates()] == ["planned"], plan.fates()
    assert plan.deliveries[0].content["body"] == "Hi Ana, your order is on its way"


def test_a_refused_edit_of_a_loaded_file_shows_for_the_templates_that_load_it_until_a_fix_takes_effect(
    tmp_path: Path, template_logs: list[dict[str, Any]]
) -> None:
    """GET /api/rules showed no refused edit while the layout's typo was skipping the messages, and nothing
    was logged."""
    base = loading(tmp_path, "extends")
    renderer = TemplateRenderer(tmp_path, recheck_seconds=0)
    renderer.check(["sms.j2"])
    save(base, LOADED_TYPO, seconds_later=2)
    problem = f"{base}: TemplateSyntaxError: unexpected '}}' at line 1"
    for _ in range(2):  # each look re-checks the file; the refusal is logged once
        assert renderer.refused_edits({"sms.j2"}) == [problem]
    assert [entry["problem"] for entry in template_logs] == [problem]
    assert renderer.refused_edits({"other.j2"}) == []  # no template a rule in force names loads it
    save(base, "{% block body %}Hello {{ profile.first_name }}: {% block text %}{% endblock %}{% endblock %}", seconds_later=4)
    assert renderer.render("sms.j2", {"profile": {"first_name": "Ana"}}) == {
        "body": "Hello Ana: your order is on its way", "text": "your order is on its way"
    }
    assert renderer.refused_edits({"sms.j2"}) == []


@pytest.mark.parametrize("how", LOADED)
def test_the_check_refuses_a_template_whose_loaded_file_does_not_parse(tmp_path: Path, how: str) -> None:
    """`touchhub mappings check` and start-up compiled only the file a rule names: a layout with a typo passed,
    and every message built on it was skipped once traffic came."""
    base = loading(tmp_path, how)
    save(base, LOADED_TYPO)
    with pytest.raises(ConfigError) as refused:
        TemplateRenderer(tmp_path).check(["sms.j2"])
    assert refused.value.problems == [f"{base}: TemplateSyntaxError: unexpected '}}' at line 1"]


# --- a template that renders to nothing ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("channel", "text"),
    [
        pytest.param("sms", "", id="sms-empty-file"),
        pytest.param("sms", "{% if profile.vip | default(false) %}Your VIP code: 123{% endif %}\n", id="sms-false-if"),
        pytest.param("email", "", id="email-empty-file"),
        pytest.param("email", "{% block subject %} {% endblock %}{% block text %}\n{% endblock %}{% block html %}{% endblock %}",
                     id="email-blank-blocks"),
        pytest.param("push", "{% block title %}{% endblock %}{% block body %}  {% endblock %}", id="push-blank-blocks"),
    ],
)
def test_a_message_whose_template_renders_to_nothing_is_not_planned(tmp_path: Path, channel: str, text: str) -> None:
    """Routing planned it anyway: an SMS with an empty body (Twilio refuses it, 21602, a permanent failure that
    still spent the person's daily cap), an email with no text under the rule id as its subject, a blank push."""
    save(tmp_path / "message.j2", text)
    deliveries, fates = plan_one(tmp_path, Action(channel, "message.j2"))
    assert deliveries == [], [delivery.content for delivery in deliveries]
    assert [(fate["fate"], fate["reason"].split(";")[0]) for fate in fates] == [
        ("skipped", f"template rendered empty: message.j2 ({', '.join(_parts(channel))} all blank)")
    ]


def _parts(channel: str) -> tuple[str, ...]:
    return load_registry().destinations[ROUTES[channel].destination].message_parts


def test_a_message_with_some_text_left_is_planned(tmp_path: Path) -> None:
    """An email with a text part but a blank html one, a push with a title only: something to read, so they go.
    (An email with nothing but its subject is skipped: tests/test_content24.py.)"""
    save(tmp_path / "email.j2", "{% block subject %}Your order{% endblock %}{% block text %}Shipped{% endblock %}"
                                "{% block html %}{% endblock %}")
    save(tmp_path / "push.j2", "{% block title %}Still there?{% endblock %}{% block body %}{% endblock %}")
    assert [fate["fate"] for fate in plan_one(tmp_path, Action("email", "email.j2"))[1]] == ["planned"]
    assert [fate["fate"] for fate in plan_one(tmp_path, Action("push", "push.j2"))[1]] == ["planned"]


def test_a_message_whose_template_fails_as_it_renders_falls_back_saying_where(tmp_path: Path) -> None:
    """A division by a count of 0 raised out of routing: no fallback, and the whole event failed."""
    save(tmp_path / "sms.j2", "{% block body %}Hi\n{{ 100 / (profile.first_name | length - 3) }}% off{% endblock %}")
    save(tmp_path / "email.j2", "{% block subject %}Your cart{% endblock %}{% block text %}Still there?{% endblock %}")
    deliveries, fates = plan_one(tmp_path, Action("sms", "sms.j2", fallback=(("email", "email.j2"),)))
    assert [delivery.channel for delivery in deliveries] == ["email"]
    assert (fates[0]["fate"], fates[0]["reason"]) == (
        "fell_back", "template sms.j2: sms.j2:2: ZeroDivisionError: division by zero"
    )


def test_a_block_that_fails_only_when_rendered_alone_names_the_templates_own_line(tmp_path: Path) -> None:
    """An email extending a layout: the layout prints only the html block, so the subject block runs only in
    `render`'s loop over the blocks, outside Jinja's traceback rewriting. The reason named the line of the Python
    code Jinja compiled the template into (email.j2:27), not the template's line 3."""
    save(tmp_path / "layout.j2", "<html>{% block html %}{% endblock %}</html>\n")
    save(tmp_path / "email.j2", (
        '{% extends "layout.j2" %}\n'
        "{% block subject %}\n"
        "Your {{ 100 / (profile.first_name | length - 3) }}% off{% endblock %}\n"
        "{% block text %}Still there?{% endblock %}\n"
        "{% block html %}<p>Still there?</p>{% endblock %}\n"
    ))
    save(tmp_path / "sms.j2", "Still there?")
    _, fates = plan_one(tmp_path, Action("email", "email.j2", fallback=(("sms", "sms.j2"),)))
    assert fates[0]["reason"] == "template email.j2: email.j2:3: ZeroDivisionError: division by zero"


def test_a_crm_field_that_fails_as_it_renders_skips_its_update_naming_the_value(tmp_path: Path) -> None:
    save(tmp_path / "crm.j2", "")
    deliveries, fates = plan_one(tmp_path, Action("crm", "crm.j2", fields={"Score__c": "{{ 'x' + 1 }}"}))
    assert deliveries == []
    assert fates[0]["reason"] == (
        "rule 'rule': fields.Score__c: `{{ 'x' + 1 }}`: TypeError: can only concatenate str (not \"int\") to str; "
        "fix the field's value in triggers.yaml"
    )


def test_a_chat_offer_is_data_and_goes_even_with_no_text(tmp_path: Path) -> None:
    save(tmp_path / "chat.j2", "")
    assert [fate["fate"] for fate in plan_one(tmp_path, Action("chat", "chat.j2"))[1]] == ["planned"]


def test_a_message_that_renders_empty_falls_back_to_the_next_channel(tmp_path: Path) -> None:
    """As a profile with no push token: the fallback channel, with its own template, reaches the person."""
    save(tmp_path / "sms.j2", "")
    save(tmp_path / "email.j2", "{% block subject %}Your order{% endblock %}{% block text %}On its way{% endblock %}")
    deliveries, fates = plan_one(tmp_path, Action("sms", "sms.j2", fallback=(("email", "email.j2"),)))
    assert [(delivery.channel, delivery.content["subject"]) for delivery in deliveries] == [("email", "Your order")]
    assert [(fate["channel"], fate["fate"], fate.get("to")) for fate in fates] == [
        ("sms", "fell_back", "email"), ("email", "planned", None)
    ]


def support_decision_explained(tmp_path: Path, sms_template: str) -> dict[str, Any]:
    """The explained decision of the shipped support rule for Amy's ticket, its SMS template saved as given."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    save(mappings / "templates" / "post_purchase_support.sms.j2", sms_template)
    hub = Hub(make_settings(tmp_path, mappings_dir=str(mappings), quiet_hours=""))
    messages = support_ticket("amy", {"phone": "+14155550100", "email": "amy@example.com", "orders": 0})
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], utcnow())
    hub.pipeline.run_once()
    with hub.store.read() as connection:
        [decided] = decisions.search(connection, limit=10, rule_id="post_purchase_support")
        explained = explain(connection, decided["decision_id"])
    assert explained is not None
    return explained


@pytest.mark.parametrize(("sms_template", "reason"), [
    # the SMS was planned, failed at Twilio and counted against the daily cap
    ("", "template rendered empty: post_purchase_support.sms.j2 (body all blank)"),
    # the error failed the whole event: retried, then quarantined, with the email and CRM update
    ("Hi\n{{ 100 / profile.orders }}% off", "template post_purchase_support.sms.j2: post_purchase_support.sms.j2:2: "
     "ZeroDivisionError: division by zero"),
])
def test_decisions_explain_says_which_template_failed_and_the_other_actions_go(
    tmp_path: Path, sms_template: str, reason: str
) -> None:
    """The shipped support rule with its SMS template caught empty, or failing as it renders: the email and CRM
    update still go, and the decision says why no SMS did."""
    explained = support_decision_explained(tmp_path, sms_template)
    assert explained["status"] == "fired"
    assert [(action["channel"], action["fate"]) for action in explained["actions"]] == [
        ("sms", "skipped"), ("email", "planned"), ("crm", "planned")
    ]
    assert explained["actions"][0]["reason"].startswith(reason)
    assert sorted(delivery["channel"] for delivery in explained["deliveries"]) == ["crm", "email"]
