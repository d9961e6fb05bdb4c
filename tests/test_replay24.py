"""Replays where they meet config changes, forget and fallbacks: a channel taken out of routes.yaml, a person
forgotten during or before a source replay, a push whose fallback reached no one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.identity_config import DEFAULT_IDENTITY
from hub.mapping_catalog import MappingCatalog
from hub.replay import replay as replay_source_events
from hub.settings import HubSettings
from hub.store.schema import inbox, touchpoints
from tests.conftest import ADMIN_TOKEN, RunningHub, cart_nudge_rules, make_settings, message, serve_hub, support_ticket, wait_for
from tests.test_replay import edit

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def replay(hub: RunningHub, delivery_id: str) -> httpx.Response:
    answer = hub.client.post(f"/api/deliveries/{delivery_id}/replay", headers=AUTH)
    hub.settle()
    return answer


def touchhub(settings: HubSettings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`touchhub deliveries ...` on the hub's store and mappings, as ops run it beside the hub."""
    env = {"COLUMNS": "250", "PATH": "", "HUB_DATABASE_URL": settings.database_url, "HUB_MAPPINGS_DIR": str(settings.mappings_dir)}
    return subprocess.run([TOUCHHUB, "deliveries", *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


def drop_email_route(mappings_dir: Path) -> None:
    """routes.yaml without its `email` channel, and rules that send none (the hub refuses rules naming a channel
    with no route)."""
    routes = mappings_dir / "routes.yaml"
    routes.write_text(re.sub(r"  email:\n(    .*\n)+", "", routes.read_text()))
    (mappings_dir / "triggers.yaml").write_text(cart_nudge_rules("      - channel: sms\n        template: post_purchase_support.sms.j2\n"))


def dead_email(hub: RunningHub, sandbox: SandboxProviders, user_id: str, address: str) -> dict[str, Any]:
    """The support email to `address`, dead after one attempt the relay deferred (delivery_max_attempts=1); the
    address stays the person's."""
    sandbox.smtp.fail_next("451 4.3.0 try later", stage="rcpt")
    hub.send(*support_ticket(user_id, {"email": address}))
    hub.settle()
    [email] = hub.admin("/api/deliveries", status="dead")["deliveries"]
    assert email["channel"] == "email"
    return email


# --- a channel taken out of routes.yaml -------------------------------------------------------------------------------


def test_a_bounced_email_is_not_mailed_again_by_a_replay_once_routes_yaml_no_longer_routes_email(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """A 5.1.1 bounce takes the address off the profile and a replay of that email is refused... until ops took
    the `email` channel out of routes.yaml and restarted: the route no longer said the target was an email, the
    replay read that as "addressed to a profile, no address to lose", and mailed the dead address again through
    the SMTP relay still configured."""
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        sandbox.smtp.fail_next("550 5.1.1 <gone@example.com>: no such mailbox", stage="rcpt")
        hub.send(*support_ticket("u-gone", {"email": "gone@example.com"}))
        hub.settle()
        [email] = hub.admin("/api/deliveries", channel="email")["deliveries"]
        assert email["status"] == "failed"
        assert "email" not in hub.admin(f"/api/profiles/{email['profile_id']}")["identifiers"]
    drop_email_route(mappings_dir)
    sandbox.smtp.received.clear()
    with serve_hub(settings, sandbox) as hub:
        answer = replay(hub, email["delivery_id"])
    assert sandbox.smtp.received == [], "the replay mailed the address that bounced"
    assert answer.status_code == 409, answer.text
    assert "to an address its person no longer has" in answer.json()["detail"]


def test_a_dead_email_of_a_channel_taken_out_of_routes_yaml_waits_for_its_route_to_be_replayed(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """With `email` out of routes.yaml, nothing says what a dead email's target is, so whether its person still
    holds it cannot be checked; the console's Replay and `touchhub deliveries replay` sent it all the same, as
    if addressed to a profile. It is refused, saying what to do, until the route is back."""
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, delivery_max_attempts=1, **sandbox.settings_overrides())
    routes, rules = (mappings_dir / "routes.yaml").read_text(), (mappings_dir / "triggers.yaml").read_text()
    with serve_hub(settings, sandbox) as hub:
        email = dead_email(hub, sandbox, "u-kept", "kept@example.com")
    drop_email_route(mappings_dir)
    with serve_hub(settings, sandbox) as hub:
        answer = replay(hub, email["delivery_id"])
        by_cli = touchhub(settings, tmp_path, "replay", email["delivery_id"])
        assert sandbox.smtp.received == [], "a replay of an unrouted channel went"
    assert answer.status_code == 409, answer.text
    assert "routes.yaml no longer routes" in answer.json()["detail"]
    assert "add the channel's route back to routes.yaml to replay it, or leave it dead" in answer.json()["detail"]
    said = " ".join((by_cli.stdout + by_cli.stderr).split())
    assert by_cli.returncode == 1 and "routes.yaml no longer routes" in said, said
    (mappings_dir / "routes.yaml").write_text(routes)
    (mappings_dir / "triggers.yaml").write_text(rules)
    with serve_hub(settings, sandbox) as hub:
        assert replay(hub, email["delivery_id"]).status_code == 200
        wait_for(lambda: len(sandbox.smtp.received) == 1)
    assert sandbox.smtp.received[0].rcpt_tos == ["kept@example.com"]


def test_the_dead_letters_of_a_channel_taken_out_of_routes_yaml_can_still_be_listed_by_channel(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """Ops moved email off the hub and restarted: the emails still dead in the queue are to be looked at and
    replayed or dropped, but `GET /api/deliveries?channel=email` and `touchhub deliveries list --channel email`
    answered 400 "'email' is no channel routes.yaml has": the filter was judged by today's routes.yaml, not by
    what the log holds. A name found nowhere is still refused."""
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, delivery_max_attempts=1, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        email = dead_email(hub, sandbox, "u-dead", "dead@example.com")
    drop_email_route(mappings_dir)
    with serve_hub(settings, sandbox) as hub:
        answer = hub.client.get("/api/deliveries", params={"channel": "email"}, headers=AUTH)
        typo = hub.client.get("/api/deliveries", params={"channel": "emial"}, headers=AUTH)
    listed = touchhub(settings, tmp_path, "list", "--channel", "email", "--json")
    assert answer.status_code == 200, answer.text
    assert [d["delivery_id"] for d in answer.json()["deliveries"]] == [email["delivery_id"]]
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [d["delivery_id"] for d in json.loads(listed.stdout)["deliveries"]] == [email["delivery_id"]]
    assert typo.status_code == 400
    assert typo.json()["detail"].startswith("channel: 'emial' is no channel routes.yaml has, nor in the delivery log; use one of: ")


def test_a_dead_crm_update_of_a_profile_merged_since_waits_for_its_route_once_crm_is_out_of_routes_yaml(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """A CRM update planned for a visitor's profile went dead while Salesforce was down; the visitor then logged
    in as Ana (the merge moved the delivery to her profile, its target kept the visitor's id), and ops took `crm`
    out of routes.yaml. Its replay answered "to an address its person no longer has ... never sent again", as if
    the visitor's profile id were a bounced address, where putting the route back would let it go."""
    from tests.test_crm_and_push_delivery import cart_nudge_mappings

    mappings = cart_nudge_mappings(tmp_path)
    (mappings / "templates" / "cart_nudge.crm.j2").write_text(
        "{% block field_LastName %}{{ profile.last_name | default('[not provided]') }}{% endblock %}"
        "{% block field_Company %}[not provided]{% endblock %}"
    )
    settings = make_settings(tmp_path, mappings_dir=mappings, delivery_max_attempts=1, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "last_name": "Silva"}))
        hub.settle()
        sandbox.salesforce.fail_next(503, "SERVER_UNAVAILABLE", times=10)
        hub.send(message(anonymousId="anon-7", event="Cart Viewed"))
        hub.settle()
        hub.send(message("identify", anonymousId="anon-7", userId="u-ana"))
        hub.settle()
        [crm] = [d for d in hub.admin("/api/deliveries", status="dead")["deliveries"] if d["channel"] == "crm"]
        assert crm["profile_id"] != crm["target"]  # moved to Ana's profile by the merge
    routes = mappings / "routes.yaml"
    routes.write_text(re.sub(r"  crm:\n(    .*\n)+", "", routes.read_text()))
    (mappings / "triggers.yaml").write_text(cart_nudge_rules("      - channel: push\n        template: cart_nudge.push.j2\n"))
    with serve_hub(settings, sandbox) as hub:
        answer = replay(hub, crm["delivery_id"])
    assert answer.status_code == 409, answer.text
    assert "routes.yaml no longer routes" in answer.json()["detail"]
    assert "add the channel's route back to routes.yaml to replay it" in answer.json()["detail"]


# --- source replays and forgotten people ------------------------------------------------------------------------------


class _ForgetsMidway:
    """The source's mapping, with a hook that runs `meanwhile` once, as the replay normalizes its first event:
    after the replay read the batch's raw events, before it rewrites their touchpoints."""

    def __init__(self, mapping: Any, meanwhile: Any) -> None:
        self._mapping, self._meanwhile = mapping, meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mapping, name)

    def drop_reason(self, payload: dict[str, Any]) -> str | None:
        meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return self._mapping.drop_reason(payload)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_source_replay_running_while_a_person_is_forgotten_does_not_write_their_data_back(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, database_url: str
) -> None:
    """`touchhub replay --source default` on one node, `DELETE /api/profiles/{id}` on another: forget wiped the
    person's touchpoints and raw events, and the replay, which had read the raw events before, rewrote the wiped
    touchpoints from them: the erased email, traits and properties were back in the store for good, and no later
    forget found them (the profile is gone). The forget now waits for the replay's batch, then wipes it all."""
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, database_url=database_url, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        hub.send(message("identify", userId="u-erase", traits={"email": "erase.me@example.com", "name": "Erin"}),
                 message(userId="u-erase", event="Product Viewed", properties={"note": "erase.me@example.com"}))
        hub.settle()
        profile_id = hub.admin("/api/profiles/lookup", type="user_id", value="u-erase")["profile_id"]
        segment = mappings_dir / "segment.yaml"
        segment.write_text(segment.read_text().replace("moment: product_view}", "moment: browsing_products}"))
        later = time.time() + 2
        os.utime(segment, (later, later))
        mapping = MappingCatalog(mappings_dir, {"default": "segment.yaml"}, check_seconds=60)["default"]
        forgot: list[httpx.Response] = []
        forgetting = threading.Thread(
            target=lambda: forgot.append(hub.client.delete(f"/api/profiles/{profile_id}", headers=AUTH))
        )

        def forget_on_another_node() -> None:  # done in well under 5 s, unless it waits for the replay's batch
            forgetting.start()
            forgetting.join(timeout=5)

        replay_source_events(hub.hub.store, {"default": _ForgetsMidway(mapping, forget_on_another_node)}, "default",
                             utcnow() - timedelta(hours=1), utcnow(), "US", DEFAULT_IDENTITY)
        forgetting.join(timeout=20)
        assert [answer.status_code for answer in forgot] == [200]
        with hub.hub.store.read() as connection:
            rows = connection.execute(
                select(touchpoints.c.identifiers, touchpoints.c.traits, touchpoints.c.properties)
                .where(touchpoints.c.profile_id == profile_id)
            ).all()
    assert len(rows) == 2
    assert "erase.me@example.com" not in repr(rows), f"the forgotten person's data is back: {rows}"




def test_a_source_replay_does_not_write_a_forgotten_persons_email_into_a_touchpoint_it_rewrites(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """README (DELETE /api/profiles/{id}): "an event carrying their email again is stored without it", and the
    pipeline does so. After a mapping fix that reads a new field as an email, `touchhub replay` rewrote the
    touchpoints already made straight from the new mapping, without that step: Bo's referral, which named Ana's
    address after she was forgotten, carried `email: ana@...` among its identifiers, and its raw body kept it,
    where the same event taken in now is stored without it."""
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, mappings_reload_seconds=0.05, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        hub.send(message("identify", userId="ana", traits={"email": "ana@example.com"}))
        hub.settle()
        ana = hub.admin("/api/profiles/lookup", type="user_id", value="ana")["profile_id"]
        assert hub.client.delete(f"/api/profiles/{ana}", headers=AUTH).status_code == 200
        hub.send(message(userId="bo", event="Referral Sent", properties={"friend_email": "ana@example.com"}))
        hub.settle()
        edit(mappings_dir / "segment.yaml", "    - properties.email\n", "    - properties.email\n    - properties.friend_email\n")
        hub.send(message(userId="cy", event="Referral Sent", properties={"friend_email": "ana@example.com"}))
        hub.settle()
        answer = hub.client.post("/api/sources/default/replay", params={"since": "1h"}, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["rewritten"] >= 1, answer.text
        referrals = {
            t["identifiers"][0][1]: t for t in hub.admin("/api/touchpoints")["touchpoints"] if t["event"] == "Referral Sent"
        }
        with hub.hub.store.read() as connection:
            raw_bodies = connection.execute(select(inbox.c.payload)).scalars().all()
    assert "ana@example.com" not in repr(referrals["cy"]), referrals["cy"]  # the pipeline: stored without it
    assert "ana@example.com" not in repr(referrals["bo"]["identifiers"]), referrals["bo"]
    assert "ana@example.com" not in repr(referrals["bo"]["properties"]), referrals["bo"]
    assert "ana@example.com" not in repr(raw_bodies)


# --- fallbacks that reached no one ------------------------------------------------------------------------------------


def test_a_push_whose_fallback_email_bounced_can_be_replayed_once_its_token_is_back(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Ana's token was an uninstalled app's (FCM UNREGISTERED), so the email her rule names was planned in the
    push's place, and that email bounced (550 5.1.1): she heard nothing. When her app registered the token again,
    the replay of the push was refused, "its rule's fallback channel was planned in its place; sending it as well
    would message the person twice": only whether a fallback was planned was asked, not whether it may have
    reached her, so the one message she could get could never be sent."""
    from tests.test_fallbacks21 import DEAD_TOKEN, cart_left, cart_mappings

    sandbox.fcm.unregistered.add(DEAD_TOKEN)
    sandbox.smtp.fail_next("550 5.1.1 <ana@example.com>: no such mailbox", stage="rcpt")
    settings = make_settings(tmp_path, mappings_dir=cart_mappings(tmp_path), **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        cart_left(hub)
        deliveries = {d["channel"]: d for d in hub.admin("/api/deliveries")["deliveries"]}
        assert (deliveries["push"]["status"], deliveries["email"]["status"]) == ("failed", "failed")
        assert sandbox.smtp.received == [] and sandbox.fcm.messages == []
        sandbox.fcm.unregistered.clear()
        hub.send(message(userId="u-ana", event="App Opened", context={"device": {"token": DEAD_TOKEN}}))
        hub.settle()
        answer = replay(hub, deliveries["push"]["delivery_id"])
    assert answer.status_code == 200, answer.text
    assert [m["message"]["token"] for m in sandbox.fcm.messages] == [DEAD_TOKEN]
