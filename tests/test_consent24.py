"""Consent given back: "Subscribe again" on the unsubscribe page, and ops setting a channel's consent (API, CLI)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from connectors.sandbox.providers import SandboxProviders
from hub.cli_profiles import app as profiles_app
from hub.clock import utcnow
from hub.consent import set_by_ops
from hub.runtime import Hub
from hub.serving import bind_socket, socket_url
from hub.store import api_keys
from hub.store.schema import deliveries
from hub.unsubscribe import make_token
from tests.conftest import ADMIN_TOKEN, RunningHub, make_settings, message, serve_hub, support_ticket
from tests.test_absence_timers import accept
from tests.test_cap_timing22 import email_nudge_mappings

NOW = datetime.now(timezone.utc)
EMAIL = "ana@example.com"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(name="running_hub")
def nudging_hub(tmp_path: Path, database_url: str, sandbox: SandboxProviders) -> Iterator[RunningHub]:
    """conftest's `running_hub`, with one rule: an email for every Cart Viewed, with no rule cap (the shipped
    rules' caps would hold back a second email whatever consent said) and no quiet hours."""
    sock = bind_socket()  # bound first: the unsubscribe links need the hub's URL in its settings
    settings = make_settings(
        tmp_path, **sandbox.settings_overrides(), database_url=database_url, public_base_url=socket_url(sock),
        mappings_dir=email_nudge_mappings(tmp_path), quiet_hours="",
    )
    with serve_hub(settings, sandbox, sock) as running:
        yield running


def nudge(running_hub: RunningHub, user: str = "u-ana", email: str = EMAIL) -> None:
    """A cart viewed: the one rule answers with an email, when consent lets it."""
    running_hub.send(message("identify", userId=user, traits={"email": email, "first_name": "Ana"}),
                     message(userId=user, event="Cart Viewed"))
    running_hub.settle()


def link_in(running_hub: RunningHub, index: int = -1) -> str:
    [link] = re.findall(r"^<(.+)>$", running_hub.sandbox.smtp.received[index].message["List-Unsubscribe"])
    return link


def form_action(page: httpx.Response, base: str) -> str:
    """Where the page's form posts, as a browser resolves it."""
    [action] = re.findall(r'<form method="post" action="([^"]+)">', page.text)
    return urljoin(base, action.replace("&amp;", "&"))


def profile_of(running_hub: RunningHub, email: str = EMAIL) -> dict[str, Any]:
    return running_hub.admin("/api/profiles/lookup", type="email", value=email)


def fates(running_hub: RunningHub) -> list[str]:
    """The email action's fate in each decision, oldest first."""
    decisions = running_hub.admin("/api/decisions")["decisions"]
    return [action["fate"] for decision in reversed(decisions) for action in decision["actions"] if action["channel"] == "email"]


def put_consent(running_hub: RunningHub, profile_id: str, channel: str, body: Any, token: str = ADMIN_TOKEN) -> httpx.Response:
    return running_hub.client.put(
        f"/api/profiles/{profile_id}/consent/{channel}", json=body, headers={"Authorization": f"Bearer {token}"}
    )


def test_a_person_who_unsubscribed_can_subscribe_again_and_a_later_opt_out_still_holds(running_hub: RunningHub) -> None:
    """An email unsubscribe could never be taken back (email has no START): the page offered no way, and no
    trait undid the pinned opt-out, so Ana got no email again even when she asked for it."""
    nudge(running_hub)
    link = link_in(running_hub)
    unsubscribed = httpx.post(link, content="List-Unsubscribe=One-Click",
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert unsubscribed.status_code == 200 and "Subscribe again" in unsubscribed.text
    assert unsubscribed.headers["cache-control"] == "no-store"
    assert "form-action 'self'" in unsubscribed.headers["content-security-policy"]
    again = form_action(unsubscribed, link)
    assert again.startswith(f"{running_hub.url}/v1/resubscribe?token=")
    assert httpx.get(again).status_code == 405  # a link scanner's GET changes nothing

    resubscribed = httpx.post(again)
    assert resubscribed.status_code == 200 and "You will receive email messages from us again." in resubscribed.text
    assert form_action(resubscribed, again).startswith(f"{running_hub.url}/v1/unsubscribe?token=")  # changed her mind again
    assert profile_of(running_hub)["traits"]["email_opt_out"] is False
    nudge(running_hub)
    assert len(running_hub.sandbox.smtp.received) == 2

    # Her opt-out in the app's settings, after the grant, still holds: the grant is no pin.
    running_hub.send(message("identify", userId="u-ana", traits={"email_opt_out": True}, timestamp=utcnow().isoformat()))
    running_hub.settle()
    nudge(running_hub)
    assert len(running_hub.sandbox.smtp.received) == 2
    assert fates(running_hub) == ["planned", "planned", "blocked_by_consent"]


def test_subscribe_again_keeps_the_token_rules_and_acts_for_whoever_holds_the_address(running_hub: RunningHub) -> None:
    """A link naming Ana's profile for an email that went to Bo (sent while the two were wrongly one profile,
    unmerged since) gives consent back to Bo, who holds that address now, as unsubscribing does; an expired or
    forged token changes nothing."""
    nudge(running_hub, "u-bo", "bo@example.com")
    nudge(running_hub)
    bo_link = link_in(running_hub, 0)
    httpx.post(bo_link)
    assert profile_of(running_hub, "bo@example.com")["traits"]["email_opt_out"] is True
    secret = running_hub.hub.settings.unsubscribe_secret.get_secret_value()
    bo_id, ana_id = profile_of(running_hub, "bo@example.com")["profile_id"], profile_of(running_hub)["profile_id"]
    [to_bo] = running_hub.admin("/api/deliveries", channel="email", profile_id=bo_id)["deliveries"]
    url = f"{running_hub.url}/v1/resubscribe"
    expired = make_token(secret, ana_id, "email", to_bo["delivery_id"], NOW - timedelta(seconds=1))
    forged = make_token("not-our-secret", ana_id, "email", to_bo["delivery_id"], NOW + timedelta(days=1))
    assert httpx.post(url, params={"token": expired}).status_code == 410
    assert httpx.post(url, params={"token": forged}).status_code == 403
    assert profile_of(running_hub, "bo@example.com")["traits"]["email_opt_out"] is True

    sent_while_merged = make_token(secret, ana_id, "email", to_bo["delivery_id"], NOW + timedelta(days=1))
    assert httpx.post(url, params={"token": sent_while_merged}).status_code == 200
    assert profile_of(running_hub, "bo@example.com")["traits"]["email_opt_out"] is False
    assert "email_opt_out" not in profile_of(running_hub)["traits"]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_ops_revoke_and_grant_email_through_the_admin_api_and_explain_says_who_and_why(running_hub: RunningHub) -> None:
    """Ops had no way to change a person's consent when asked (by phone, in a ticket): only the person's word
    through a provider could. A revocation holds against a later trait as an unsubscribe does; a grant lets
    email go again."""
    nudge(running_hub)
    ana_id = profile_of(running_hub)["profile_id"]
    with running_hub.hub.store.write() as connection:
        _, support_key = api_keys.create(connection, "support-desk", ["profiles:write"], utcnow())

    why = {"granted": False, "reason": "asked by phone, ticket 4521"}
    revoked = put_consent(running_hub, ana_id, "email", why, support_key)
    assert revoked.status_code == 200, revoked.text
    assert {key: revoked.json()[key] for key in ("profile_id", "channel", "granted", "reason")} == {
        "profile_id": ana_id, "channel": "email", "granted": False,
        "reason": "ops API key 'support-desk': asked by phone, ticket 4521",
    }
    # Her app resends a cached `email_opt_out: false` with every event: the revocation is pinned.
    running_hub.send(message("identify", userId="u-ana", traits={"email_opt_out": False}, timestamp=utcnow().isoformat()))
    nudge(running_hub)
    assert len(running_hub.sandbox.smtp.received) == 1

    granted = put_consent(running_hub, ana_id, "email", {"granted": True, "reason": "asked to hear from us again"})
    assert granted.status_code == 200 and granted.json()["granted"] is True
    nudge(running_hub)
    assert len(running_hub.sandbox.smtp.received) == 2
    assert fates(running_hub) == ["planned", "blocked_by_consent", "planned"]
    changes = running_hub.admin(f"/api/profiles/{ana_id}/explain")["consent_changes"]
    assert [(change["granted"], change["reason"]) for change in changes] == [
        (False, "ops API key 'support-desk': asked by phone, ticket 4521"),
        (True, "ops HUB_ADMIN_TOKEN: asked to hear from us again"),
    ]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_bad_consent_requests_are_refused_naming_what_to_fix(running_hub: RunningHub) -> None:
    """There was no route: each of these was a 404 or 405 saying nothing of what to fix."""
    nudge(running_hub)
    ana_id = profile_of(running_hub)["profile_id"]
    with running_hub.hub.store.write() as connection:
        _, viewer = api_keys.create(connection, "viewer", ["read"], utcnow())
    why = {"granted": True, "reason": "asked by phone"}

    unknown_channel = put_consent(running_hub, ana_id, "emial", why)
    assert unknown_channel.status_code == 400
    assert unknown_channel.json()["detail"].startswith("channel: 'emial' has no route in routes.yaml; use one of ")
    for body, field in (({"granted": True}, "reason"), ({"granted": True, "reason": "  "}, "reason"),
                        ({"granted": True, "reason": "x" * 61}, "reason"), ({"reason": "asked"}, "granted")):
        refused = put_consent(running_hub, ana_id, "email", body)
        assert refused.status_code == 422, body
        assert [error["loc"] for error in refused.json()["detail"]] == [["body", field]], refused.text
    nobody = put_consent(running_hub, "01JDQ6ZB3T7E3Y0P6M2C1V9XKQ", "email", why)
    assert nobody.status_code == 404 and "no profile '01JDQ6ZB3T7E3Y0P6M2C1V9XKQ'" in nobody.json()["detail"]
    read_only = put_consent(running_hub, ana_id, "email", why, viewer)
    assert read_only.status_code == 403 and "'profiles:write' scope" in read_only.json()["detail"]
    assert running_hub.client.delete(f"/api/profiles/{ana_id}", headers=ADMIN).status_code == 200
    assert put_consent(running_hub, ana_id, "email", why).status_code == 404  # forgotten: nothing to set


def test_a_grant_before_a_held_message_is_claimed_lets_it_go(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """The delivery engine checks consent again when it claims a message planned earlier: revoked and given back
    since, the message goes."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides()))  # workers not started: each step by hand
    accept(hub, *support_ticket("u-held", {"email": EMAIL}, NOW - timedelta(minutes=5)))
    with hub.store.write() as connection:
        profile_id = connection.execute(select(deliveries.c.profile_id).where(deliveries.c.channel == "email")).scalar_one()
        set_by_ops(connection, profile_id, "email", False, "asked by phone", "test", utcnow())
        state = set_by_ops(connection, profile_id, "email", True, "changed her mind", "test", utcnow())
    assert state is not None and state["granted"] is True
    while hub.delivery.run_once():
        pass
    hub.delivery.close()
    assert [received.message["To"] for received in sandbox.smtp.received] == [EMAIL]
    hub.store.dispose()


def test_touchhub_profiles_consent_changes_it_and_profiles_show_says_who_and_why(running_hub: RunningHub) -> None:
    """The CLI had no way to change consent; `profiles show` did not say why email was off."""
    nudge(running_hub)
    env = {"HUB_DATABASE_URL": running_hub.hub.settings.database_url, "COLUMNS": "200", "LOGNAME": "olga"}

    def cli(*args: str) -> Any:
        return CliRunner().invoke(profiles_app, list(args), env=env)

    revoked = cli("consent", f"email:{EMAIL}", "--channel", "email", "--revoke", "--reason", "asked by letter")
    assert revoked.exit_code == 0, revoked.output
    assert re.search(r"consent\s+│?\s*revoked", revoked.output) and "ops CLI olga: asked by letter" in revoked.output
    assert profile_of(running_hub)["traits"]["email_opt_out"] is True
    shown = cli("show", f"email:{EMAIL}")
    assert "Consent changes (1)" in shown.output and "ops CLI olga: asked by letter" in shown.output

    typo = cli("consent", f"email:{EMAIL}", "--channel", "emial", "--grant", "--reason", "asked")
    assert typo.exit_code == 2 and "'emial' has no route in routes.yaml" in typo.output
    no_reason = cli("consent", f"email:{EMAIL}", "--channel", "email", "--grant", "--reason", " ")
    assert no_reason.exit_code == 2 and "say why consent changes" in no_reason.output
    nobody = cli("consent", "email:nobody@example.com", "--channel", "email", "--grant", "--reason", "asked")
    assert nobody.exit_code == 1 and "No profile 'email:nobody@example.com'" in nobody.output


def test_a_reason_with_a_lone_surrogate_is_refused_naming_what_to_fix(running_hub: RunningHub) -> None:
    """A JSON escape such as \\ud800 decodes to text with no UTF-8 form: the write failed on it, a 500."""
    nudge(running_hub)
    ana_id = profile_of(running_hub)["profile_id"]
    refused = running_hub.client.put(
        f"/api/profiles/{ana_id}/consent/email", content=b'{"granted": false, "reason": "a\\ud800"}',
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "reason"] and "lone surrogate" in error["msg"] and "remove it" in error["msg"]
    assert profile_of(running_hub)["traits"].get("email_opt_out") is None


def test_an_api_key_named_hub_admin_token_is_recorded_as_an_api_key(running_hub: RunningHub) -> None:
    """The caller was compared with the bootstrap token by value: an admin API key named HUB_ADMIN_TOKEN was
    recorded as the bootstrap token itself, hiding which key made the change."""
    nudge(running_hub)
    ana_id = profile_of(running_hub)["profile_id"]
    with running_hub.hub.store.write() as connection:
        _, look_alike = api_keys.create(connection, "HUB_ADMIN_TOKEN", ["admin"], utcnow())
    revoked = put_consent(running_hub, ana_id, "email", {"granted": False, "reason": "asked by phone"}, look_alike)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["reason"] == "ops API key 'HUB_ADMIN_TOKEN': asked by phone"
