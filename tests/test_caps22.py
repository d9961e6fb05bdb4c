"""What the daily cap counts: the messages that may have reached the person, not those a provider refused or lost."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.serving import bind_socket, socket_url
from hub.settings import PROJECT_MAPPINGS
from hub.store import Store, outbox
from tests.conftest import RunningHub, make_settings, message, serve_hub
from tests.test_fallbacks21 import DEAD_TOKEN, cart_left, cart_mappings
from tests.test_query_plans import plans_of

PHONE = "+14155550188"
# Two rules of one person's day: a text when she opens a ticket, an email when she leaves a cart.
TEXT_THEN_EMAIL = """\
rules:
  - {id: ticket_text, urgency: immediate, when: {event: Ticket Submitted}, vars: {help_center_url: h},
     respond: [{channel: sms, template: post_purchase_support.sms.j2}]}
  - {id: cart_email, urgency: immediate, when: {event: Cart Viewed},
     vars: {discount_code: C, discount_percent: 10, cart_url: "https://shop.example.com/cart"},
     respond: [{channel: email, template: cart_abandonment.email.j2}]}
"""


@contextmanager
def text_then_email_hub(tmp_path: Path, sandbox: SandboxProviders) -> Iterator[RunningHub]:
    """A hub with those two rules and a daily cap of 1, at a URL Twilio's status callbacks reach."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "triggers.yaml").write_text(TEXT_THEN_EMAIL)
    sock = bind_socket()
    settings = make_settings(tmp_path, mappings_dir=mappings, daily_message_cap=1, public_base_url=socket_url(sock),
                             **sandbox.settings_overrides())
    with serve_hub(settings, sandbox, sock) as hub:
        yield hub


def ticket(hub: RunningHub) -> None:
    hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "phone": PHONE, "first_name": "Ana"}),
             message(userId="u-ana", event="Ticket Submitted"))
    hub.settle()


def cart(hub: RunningHub) -> dict[str, str]:
    """Ana leaves a cart; each delivery's status by channel."""
    hub.send(message(userId="u-ana", event="Cart Viewed"))
    hub.settle()
    return {d["channel"]: d["status"] for d in hub.admin("/api/deliveries")["deliveries"]}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_dead_push_leaves_the_daily_cap_to_its_email_fallback(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """With a daily cap of 1, Ana's only push token was dead: the failed push, which reached nobody, spent the
    day's message, so its email fallback was `capped` and she heard nothing."""
    sandbox.fcm.unregistered.add(DEAD_TOKEN)
    settings = make_settings(tmp_path, database_url=database_url, mappings_dir=cart_mappings(tmp_path),
                             daily_message_cap=1, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub)
        deliveries = {d["channel"]: d["status"] for d in hub.admin("/api/deliveries")["deliveries"]}
    assert deliveries == {"push": "failed", "email": "sent"}
    [email] = sandbox.smtp.received
    assert email.message["To"] == "ana@example.com"


def test_an_sms_twilio_refused_as_an_invalid_number_leaves_the_days_email(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """Twilio refused Ana's text (21211, not a valid number), yet with a daily cap of 1 it spent her day: the
    email of another rule later that day was `capped`."""
    sandbox.twilio.fail_next(400, code=21211, message=f"The 'To' number {PHONE} is not a valid phone number.")
    with text_then_email_hub(tmp_path, sandbox) as hub:
        ticket(hub)
        statuses = cart(hub)
    assert statuses == {"sms": "failed", "email": "sent"}
    assert sandbox.twilio.messages == [] and len(sandbox.smtp.received) == 1


def test_an_sms_twilio_reported_undelivered_leaves_the_days_email(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """Twilio took Ana's text, then called back `undelivered`: it never reached her, yet with a daily cap of 1
    it spent her day and the email of another rule later that day was `capped`."""
    with text_then_email_hub(tmp_path, sandbox) as hub:
        ticket(hub)
        [sent] = sandbox.twilio.messages
        assert sandbox.twilio.post_status(sent["sid"], "undelivered", error_code=30003).status_code == 200
        statuses = cart(hub)
    assert statuses == {"sms": "failed", "email": "sent"}
    assert len(sandbox.smtp.received) == 1


def test_an_sms_that_went_still_spends_the_days_message(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """The other side of the three above: a text Twilio took (and delivered) is the day's one message."""
    with text_then_email_hub(tmp_path, sandbox) as hub:
        ticket(hub)
        [sent] = sandbox.twilio.messages
        assert sandbox.twilio.post_status(sent["sid"], "delivered").status_code == 200
        statuses = cart(hub)
    assert statuses == {"sms": "delivered"} and sandbox.smtp.received == []


def test_the_daily_caps_read_stays_one_indexed_statement(store: Store) -> None:
    """Asked for every decision routed: the profiles' deliveries by their index, a failed one's last attempt by
    its delivery's, whatever the size of the tables."""
    with store.write() as connection, plans_of(connection, "deliveries") as plans:
        outbox.going_since(connection, ["p1", "p2"], ["sms", "email"], datetime(2026, 1, 1, tzinfo=timezone.utc))
    [plan] = plans
    assert "SEARCH deliveries USING INDEX ix_deliveries_profile_id" in plan, plan
    assert "SEARCH attempts USING INDEX ix_attempts_delivery_id" in plan, plan
