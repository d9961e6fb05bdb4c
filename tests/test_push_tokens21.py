"""Push tokens FCM calls bad, and the newest devices past a profile's push-token limit (audit 21)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.destinations.fcm_push import FcmPushDestination
from connectors.sandbox.fcm import FakeFcm, create_app
from hub.errors import PermanentDeliveryError
from hub.identity import resolve
from hub.identity_config import IdentifierType, IdentityConfig
from hub.model import Delivery, Identifier, Resolution, Touchpoint, derived_id
from hub.serving import BackgroundServer
from hub.store import Store
from hub.store.identity_explain import explain
from hub.store.identity_graph import SqlIdentityGraph
from tests.conftest import cart_nudge_rules, make_settings, message, serve_hub, vendor_fake_fixtures

PHONE = "dGVzdC1waG9uZS10b2tlbjpBUEE5MWJIdGVzdHRva2VuMDAx"
CONTENT = {"title": "Still thinking it over?", "body": "Your cart is waiting.", "rule_id": "cart"}
NOT_VALID = "The registration token is not a valid FCM registration token"

fake, server, fresh = vendor_fake_fixtures("fake", FakeFcm, create_app)


class Forgotten(dict[str, str]):
    """Token -> the reason the destination gave for calling it dead."""

    def __call__(self, tokens: Sequence[str], reason: str) -> None:
        self.update(dict.fromkeys(tokens, reason))


@pytest.fixture
def forgotten() -> Forgotten:
    return Forgotten()


@pytest.fixture
def push(fake: FakeFcm, server: BackgroundServer, tmp_path: Path, forgotten: Forgotten) -> Iterator[FcmPushDestination]:
    key = tmp_path / "key.json"
    key.write_text(json.dumps(fake.service_account_key(f"{server.url}/token")))
    config = FcmPushDestination.validate_config(
        "test", {"credentials_file": key, "api_base_url": server.url, "timeout_seconds": 2}
    )
    built = FcmPushDestination("fcm_push", config, forget_tokens=forgotten)
    yield built
    built.close()


def delivery(*tokens: str) -> Delivery:
    return Delivery("dlv-1", "fcm_push", "push", tokens[0], {**CONTENT, "recipients": list(tokens)}, 0,
                    datetime.now(timezone.utc))


def test_fcm_invalid_registration_token_answer_as_fcm_really_sends_it_removes_the_token(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten
) -> None:
    """FCM answers an expired or malformed token with a bare 400 INVALID_ARGUMENT, only its text naming the token
    (firebase/firebase-admin-java#1064). The hub removed a token only on a field violation on message.token, which
    FCM does not send, so the bad token stayed on the profile and every push to it was refused again."""
    fake.fail_next(400, "INVALID_ARGUMENT", message=NOT_VALID)
    with pytest.raises(PermanentDeliveryError) as refused:
        push.send(delivery(PHONE))
    assert refused.value.failure.error_class == "fcm.INVALID_ARGUMENT"
    assert forgotten == {PHONE: "FCM answered INVALID_ARGUMENT for the token: it is malformed or expired"}


FCM_ERROR = {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}
TOKEN_VIOLATION = {"@type": "type.googleapis.com/google.rpc.BadRequest",
                   "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}


@pytest.mark.parametrize(("token_violations", "details"), [(False, [FCM_ERROR]), (True, [FCM_ERROR, TOKEN_VIOLATION])],
                         ids=["as FCM sends it", "with a field violation"])
def test_the_fake_answers_a_malformed_token_as_fcm_does_and_the_token_goes(
    push: FcmPushDestination, fake: FakeFcm, server: BackgroundServer, forgotten: Forgotten,
    token_violations: bool, details: list[dict[str, Any]],
) -> None:
    """The fake always added a field violation on message.token, which FCM leaves out, so no test met FCM's real
    answer to a bad token."""
    fake.token_violations = token_violations
    answer = httpx.post(f"{server.url}/v1/projects/{fake.project_id}/messages:send", json={"message": {"token": "not a token"}},
                        headers={"Authorization": f"Bearer {fake.access_tokens.issue()}"})
    assert (answer.status_code, answer.json()["error"]["message"], answer.json()["error"]["details"]) == (400, NOT_VALID, details)
    with pytest.raises(PermanentDeliveryError):
        push.send(delivery("not a token"))
    assert list(forgotten) == ["not a token"]


# ---------------------------------------------------------------------------------------------- past the limit

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
TWO_EACH = IdentityConfig(identifier_types=[
    IdentifierType(type="user_id", limit=1),
    IdentifierType(type="email", limit=5),
    IdentifierType(type="device_id", limit=2),
    IdentifierType(type="push_token", limit=2, evict_oldest=True),
])
BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def seen(store: Store, n: int, *idents: tuple[str, str]) -> Resolution:
    """Resolve a touchpoint carrying `idents`, `n` days after T0."""
    at = T0 + timedelta(days=n)
    tp = Touchpoint(touchpoint_id=derived_id("test", str(n)), source_id="test", message_id=str(n), kind="track",
                    event="App Opened", stage="retention", moment="other", occurred_at=at, received_at=at,
                    identifiers=tuple(Identifier(type_, value) for type_, value in idents), traits={})
    with store.write() as connection:
        return resolve(tp, SqlIdentityGraph(connection), at, TWO_EACH)


@BOTH_DATABASES
def test_a_new_push_token_past_the_limit_takes_the_place_of_the_oldest(store: Store) -> None:
    """The third token of a two-token profile was refused and never stored, so the phone Ana holds now never got
    a push. It takes the oldest token's place, and the profile's audit trail says where that one went."""
    for day, token in enumerate(["first-phone", "tablet", "new-phone"]):
        ana = seen(store, day, ("user_id", "ana"), ("push_token", token)).profile_id
    with store.read() as connection:
        graph = explain(connection, ana)
    assert graph is not None
    assert sorted(m["value"] for m in graph["identifiers"] if m["type"] == "push_token") == ["new-phone", "tablet"]
    [gone] = graph["detached"]
    assert gone["identifiers"] == [["push_token", "first-phone"]]
    assert gone["rule"] == "evicted: the oldest push_token made room for a new one (limit: at most 2 per profile)"


@BOTH_DATABASES
def test_limits_without_evict_oldest_and_links_between_profiles_still_refuse(store: Store) -> None:
    """Only a new identifier of an `evict_oldest` type takes an old one's place: a third device_id is refused as
    before, and two profiles whose tokens together pass the limit are not merged by a shared email."""
    for day, device in enumerate(["d1", "d2", "d3"]):
        last = seen(store, day, ("user_id", "ana"), ("device_id", device))
    assert [link.rule for link in last.refused] == ["limit: at most 2 device_id per profile"]
    seen(store, 3, ("user_id", "ana"), ("push_token", "ana-1"), ("push_token", "ana-2"))
    seen(store, 4, ("user_id", "bo"), ("push_token", "bo-1"), ("push_token", "bo-2"))
    seen(store, 5, ("user_id", "ana"), ("email", "shared@example.com"))
    joined = seen(store, 6, ("email", "shared@example.com"), ("push_token", "bo-1"))
    assert joined.merged_profile_ids == () and [link.rule for link in joined.refused] == [
        "limit: at most 2 push_token per profile"
    ]
    with store.read() as connection:
        graph = explain(connection, joined.profile_id)
    assert graph is not None and graph["detached"] == []


CART_NUDGE = cart_nudge_rules("      - {channel: push, template: cart_nudge.push.j2}\n")


def test_the_device_a_person_uses_now_gets_the_push_after_twenty_older_tokens(
    tmp_path: Path, mappings_dir: Path, sandbox: Any
) -> None:
    """identity.yaml allows 20 push tokens a profile, and a token comes new with every reinstall or new phone:
    the 21st, the phone Ana holds now, was refused ("limit: at most 20 push_token per profile"), so her cart
    nudge went to 20 older devices and not to the one she uses."""
    (mappings_dir / "triggers.yaml").write_text(CART_NUDGE)
    (mappings_dir / "templates" / "cart_nudge.push.j2").write_text(
        "{% block title %}Still thinking?{% endblock %}{% block body %}Your cart is saved.{% endblock %}"
    )
    tokens = [f"device{n:02d}-token:APA91bH" + "x" * 32 for n in range(21)]
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides()), sandbox) as hub:
        hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com"}))
        for token in tokens:  # one app open a day, each on the device of the time
            hub.send(message(userId="u-ana", event="App Opened", context={"device": {"token": token}}))
            hub.settle()
        hub.send(message(userId="u-ana", event="Cart Viewed"))
        hub.settle()
        [push] = [d for d in hub.admin("/api/deliveries")["deliveries"] if d["channel"] == "push"]
        graph = hub.admin(f"/api/profiles/{push['profile_id']}/explain")
    pushed = {m["message"]["token"] for m in sandbox.fcm.messages}
    assert pushed == set(tokens[1:])
    assert [entry["identifiers"] for entry in graph["detached"]] == [[["push_token", tokens[0]]]]
