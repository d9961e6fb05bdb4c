"""What a message holds as the person reads it: headers made from traits, the parts of a template, nulls, and
what each provider takes (JSON without NaN, an SMS of at most 1,600 characters)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.destinations.fcm_push import FcmPushDestination
from connectors.destinations.html_text import html_as_text
from connectors.destinations.salesforce import SalesforceDestination
from connectors.destinations.webhook import ChatWebhookDestination
from connectors.sandbox.smtp import FakeSmtp, SmtpServer
from hub.config_files import ConfigLoader
from hub.errors import PermanentDeliveryError
from hub.model import Action, Decision
from hub.routes_file import ChannelRoute
from hub.routing import Router, RoutingPlan
from hub.template_values import template_context
from hub.templates import TemplateRenderer
from tests.test_email_destination import CREDENTIALS, RECIPIENT, WireSmtp, delivery, destination, raw_header_fields, to
from tests.test_webhook_destination import RawReceiver
from tests.test_webhook_destination import delivery as webhook_delivery
from tests.test_webhook_destination import to as webhook_to
from tests.test_webhooks20 import sending

AT = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
ROUTES = {
    "email": ChannelRoute(destination="email_smtp", target="email"),
    "sms": ChannelRoute(destination="twilio_sms", target="phone"),
    "push": ChannelRoute(destination="fcm_push", target="push_token", multicast=True),
    "crm": ChannelRoute(destination="salesforce", target="profile_id", reaches_person=False),
}
PROFILE = {
    "traits": {"first_name": "Ana"},
    "identifiers": {"email": ["ana@example.com"], "phone": ["+14155550101"], "push_token": ["tok-" + "a" * 40]},
}
INJECTING_NAME = "=?utf-8?q?Ann=0D=0AReply-To:_attacker@evil.example?="  # a first name any SDK's identify call can set


def plan(folder: Path, *actions: Action, traits: dict[str, Any] | None = None) -> RoutingPlan:
    decision = Decision("d-1", "rule", "rule@1", "P1", "tp-1", AT, actions, variables={"link": "https://help.example.com"})
    profile = {**PROFILE, "traits": traits or PROFILE["traits"]}
    return Router(ROUTES, TemplateRenderer(folder)).plan(decision, profile, {}, now=AT)


def params(text: str) -> dict[str, Any]:
    """A rule's `params` as the rules loader reads them from triggers.yaml."""
    return yaml.load(text, Loader=ConfigLoader)


# --- headers made from traits ------------------------------------------------------------------------------------


def test_an_rfc2047_encoded_line_break_in_a_trait_adds_no_header_to_the_email(tmp_path: Path) -> None:
    """The email library decodes an encoded-word in a value it is given, and Python 3.11.7 wrote the decoded text
    out as it was: a first name of `=?utf-8?q?Ann=0D=0A...?=` in the subject became a line break and a
    `Reply-To` of the attacker's in the brand's email."""
    (tmp_path / "t.j2").write_text(
        "{% block subject %}Hi {{ profile.first_name }}, your order{% endblock %}{% block text %}Hello{% endblock %}"
    )
    [email] = plan(tmp_path, Action("email", "t.j2"), traits={"first_name": INJECTING_NAME}).deliveries
    wire = WireSmtp()
    with SmtpServer(wire) as server:
        destination(server.port).send(to(RECIPIENT, **email.content))
    fields = raw_header_fields(wire.raw[0])
    assert "reply-to" not in fields, fields
    assert fields["subject"].startswith("=?utf-8?"), fields["subject"]  # the text reads as itself, not decoded
    [received] = wire.received
    assert received.message["Subject"] == f"Hi {INJECTING_NAME}, your order"


def test_control_characters_from_a_trait_are_left_out_of_the_subject() -> None:
    """Only line breaks were taken out: an ESC or a DEL from a form went into the Subject as it was, where a
    terminal or a log showing the subject acts on it."""
    fake = FakeSmtp(credentials=CREDENTIALS)
    with SmtpServer(fake) as server:
        destination(server.port).deliver(to(RECIPIENT, subject="Ana\x1b[2J\x7f, your\torder"))
    [received] = fake.received
    assert received.message["Subject"] == "Ana[2J, your\torder"


# --- a template's top level and its layout -------------------------------------------------------------------


def test_a_top_level_set_is_seen_by_the_email_blocks_and_the_message_is_sent(tmp_path: Path) -> None:
    """Each block was rendered alone, without the template's top level run: a `{% set %}` before the blocks was
    undefined in them, and every email of the template was skipped as "'name' is undefined"."""
    (tmp_path / "t.j2").write_text(
        '{% set name = profile.first_name | default("there") %}'
        "{% block subject %}Hi {{ name }}{% endblock %}{% block text %}Hello {{ name }}{% endblock %}"
    )
    routed = plan(tmp_path, Action("email", "t.j2"))
    assert [fate["fate"] for fate in routed.fates()] == ["planned"], routed.fates()
    [email] = routed.deliveries
    assert (email.content["subject"], email.content["text"]) == ("Hi Ana", "Hello Ana")


def test_a_macro_imported_at_the_top_is_usable_in_the_html_block(tmp_path: Path) -> None:
    """`{% from "macros.j2" import button %}` at the top, as Jinja's docs show: the html block, rendered alone, did
    not see the import, and the email was skipped as "'button' is undefined"."""
    (tmp_path / "macros.j2").write_text(
        '{% macro button(url, label) %}<a class="btn" href="{{ url }}">{{ label }}</a>{% endmacro %}'
    )
    (tmp_path / "t.j2").write_text(
        '{% from "macros.j2" import button %}'
        "{% block subject %}Your order{% endblock %}"
        '{% block html %}<p>Hi {{ profile.first_name }}</p>{{ button(vars.link, "Help") }}{% endblock %}'
    )
    [email] = plan(tmp_path, Action("email", "t.j2")).deliveries
    assert email.content["html"] == '<p>Hi Ana</p><a class="btn" href="https://help.example.com">Help</a>'


def test_an_email_extending_a_layout_keeps_the_layouts_text_and_html_parts(tmp_path: Path) -> None:
    """Only the blocks the child file itself defines were parts: filling the layout's `content` block, the email
    went out text-only, its plain part the subject followed by the layout's raw HTML source."""
    (tmp_path / "layout.j2").write_text(
        "{% block subject %}{% endblock %}"
        "{% block text %}{% block text_content %}{% endblock %}\n\n-- The Shop team{% endblock %}"
        "{% block html %}<html><body>{% block content %}{% endblock %}<p>The Shop team</p></body></html>{% endblock %}"
    )
    (tmp_path / "t.j2").write_text(
        '{% extends "layout.j2" %}'
        "{% block subject %}Your order, {{ profile.first_name }}{% endblock %}"
        "{% block text_content %}Hi {{ profile.first_name }}, thanks.{% endblock %}"
        "{% block content %}<p>Hi {{ profile.first_name }}, thanks.</p>{% endblock %}"
    )
    [email] = plan(tmp_path, Action("email", "t.j2"), traits={"first_name": "<b>Ann</b>"}).deliveries
    assert email.content["text"] == "Hi <b>Ann</b>, thanks.\n\n-- The Shop team"
    assert email.content["html"] == "<html><body><p>Hi &lt;b&gt;Ann&lt;/b&gt;, thanks.</p><p>The Shop team</p></body></html>"
    assert "body" not in email.content


# --- blank parts -----------------------------------------------------------------------------------------------


def test_an_email_whose_text_and_html_render_blank_is_skipped_and_its_fallback_tried(tmp_path: Path) -> None:
    """The whole template, rendered as `body`, counted as a part: in a template with blocks it is the subject
    printed again, so with text and html blank the email went out with its subject line as the whole message."""
    (tmp_path / "t.j2").write_text(
        "{% block subject %}Your VIP offer{% endblock %}"
        "{% block text %}{% if profile.vip %}Your code: VIP10{% endif %}{% endblock %}"
        "{% block html %}{% if profile.vip %}<p>Your code: <b>VIP10</b></p>{% endif %}{% endblock %}"
    )
    (tmp_path / "sms.j2").write_text("Hi {{ profile.first_name }}")
    routed = plan(tmp_path, Action("email", "t.j2", fallback=(("sms", "sms.j2"),)), traits={"first_name": "Ana", "vip": False})
    assert [delivery.channel for delivery in routed.deliveries] == ["sms"], [d.content for d in routed.deliveries]
    assert routed.fates()[0]["reason"].startswith("template rendered empty: t.j2 (text, html, body all blank)")


@pytest.mark.parametrize(
    ("channel", "text", "parts"),
    [
        pytest.param("push", "{% block title %}Your cart misses you{% endblock %}", {"title": "Your cart misses you"},
                     id="push-title-only"),
        pytest.param("crm", "{% block field_LastName %}Silva{% endblock %}{% block field_Email %}{{ vars.link }}{% endblock %}",
                     {"field_LastName": "Silva", "field_Email": "https://help.example.com"}, id="crm-fields-only"),
    ],
)
def test_a_template_with_blocks_has_no_body_made_of_all_of_them(tmp_path: Path, channel: str, text: str, parts: dict[str, str]) -> None:
    """The whole template was its `body`: a push with only a title showed the title again as its text, and a
    Salesforce Task without a `description` block got every field value (the email too) run together."""
    (tmp_path / "t.j2").write_text(text)
    [sent] = plan(tmp_path, Action(channel, "t.j2")).deliveries
    assert {key: value for key, value in sent.content.items() if key in {"body", *parts}} == parts


def test_the_plain_part_made_from_html_keeps_table_cells_apart() -> None:
    """Table cells were inline: the words of neighbouring cells ran together, "Order#1234", "Total$42.00"."""
    text = html_as_text(
        "<table><thead><tr><th>Item</th><th>Price</th></tr></thead>"
        "<tbody><tr><td>Order</td><td>#1234</td></tr><tr><th>Total</th><td>$42.00</td></tr></tbody></table>"
        "<blockquote>Thanks!</blockquote><pre>Ref 7</pre>"
    )
    assert [line for line in text.splitlines() if line] == ["Item Price", "Order #1234", "Total $42.00", "Thanks!", "Ref 7"]


# --- null traits -------------------------------------------------------------------------------------------------


def test_a_null_trait_through_a_filter_or_concatenation_is_not_printed_as_none(tmp_path: Path) -> None:
    """Only a bare `{{ x }}` and `default` knew null: `| capitalize`, `| title`, `| trim` or `~` made it the text
    "None" first, and the SMS went out as "Hi None, ..."."""
    (tmp_path / "sms.j2").write_text(
        "Hi {{ profile.first_name | capitalize }}{{ profile.last_name | title | trim }}, "
        "{{ 'your order ' ~ profile.order_ref }} is on its way{{ profile.address.city | upper }}"
    )
    traits = {"first_name": None, "last_name": None, "order_ref": None, "address": None}
    [sms] = plan(tmp_path, Action("sms", "sms.j2"), traits=traits).deliveries
    assert sms.content["body"] == "Hi , your order  is on its way"


def test_a_null_trait_is_still_none_to_is_none_and_null_to_tojson(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{{ profile.company is none }} {{ profile | tojson }} {{ profile.company | default('-') }}")
    context = template_context({"company": None, "tags": [None, "vip"]}, {}, {})
    assert TemplateRenderer(tmp_path).render("t.j2", context) == {"body": 'True {"company": null, "tags": [null, "vip"]} -'}


# --- what each provider takes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination_type", "text", "where"),
    [
        pytest.param(ChatWebhookDestination, "type: chat.offer\nscore: .nan\nceiling: .inf\n", ["params.score", "params.ceiling"],
                     id="webhook"),
        pytest.param(SalesforceDestination, "fields: {Score__c: .nan, Title: CTO}\n", ["params.fields"], id="salesforce"),
        pytest.param(FcmPushDestination, "data: {score: -.inf}\n", ["params.data.score"], id="fcm"),
    ],
)
def test_params_holding_nan_or_infinity_are_refused_when_the_rules_load(destination_type: Any, text: str, where: list[str]) -> None:
    """`.nan` and `.inf` in triggers.yaml are YAML floats: the webhook and Salesforce destinations checked only
    the params' types, and sent `{"score":NaN}`, which is not JSON: every receiver refused each delivery."""
    problems = destination_type.check_params(params(text))
    assert [problem.split(":")[0] for problem in problems] == where, problems
    assert all("has no JSON form to send" in problem for problem in problems), problems


def test_a_stored_webhook_delivery_holding_nan_fails_for_good_and_sends_nothing() -> None:
    """A delivery planned before its rule's params were checked (and its replays) went out as `{"score":NaN}`."""
    with RawReceiver(sending(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as receiver:
        target = webhook_to(receiver.url)
        with pytest.raises(PermanentDeliveryError) as raised:
            target.deliver(webhook_delivery(params=params("score: .nan\n")))
        target.close()
        assert receiver.heads == []
    assert raised.value.failure.error_class == "webhook.bad_params"
    assert raised.value.failure.message.startswith("params.score: float nan has no JSON form to send")


def test_an_sms_over_1600_characters_is_skipped_and_its_fallback_tried(tmp_path: Path) -> None:
    """Twilio refuses a body over 1,600 characters for good (21617): a long trait made the SMS fail after
    planning, and the email fallback, tried for a blank SMS, never was."""
    (tmp_path / "sms.j2").write_text("Hi {{ profile.first_name }}, your order is on its way")
    (tmp_path / "email.j2").write_text("{% block subject %}Your order{% endblock %}{% block text %}On its way{% endblock %}")
    routed = plan(tmp_path, Action("sms", "sms.j2", fallback=(("email", "email.j2"),)), traits={"first_name": "A" * 1600})
    assert [delivery.channel for delivery in routed.deliveries] == ["email"]
    assert routed.fates()[0]["reason"].startswith(
        "template rendered too long: sms.j2 (body is 1,629 characters; Twilio Programmable Messaging (SMS) takes at "
        "most 1,600)"
    ), routed.fates()


# --- the unsubscribe footer ------------------------------------------------------------------------------------


def test_the_unsubscribe_footer_goes_before_body_in_an_email_to_a_turkish_name() -> None:
    """The footer's place was found in `html.lower()`, where each "İ" (İlker, İstanbul) is two characters: the
    email to İlker ended `...</p><<p ...>Unsubscribe</a></p>/body>`, its `</body>` broken."""
    fake = FakeSmtp(credentials=CREDENTIALS)
    with SmtpServer(fake) as server:
        destination(server.port).deliver(delivery("İlker"))
    [received] = fake.received
    html = received.message.get_body(("html",)).get_content()
    assert html.rstrip().endswith('Unsubscribe</a></p></body></html>'), html
