"""FCM fixes of audit 25: one device's message rate held back every push to everyone, and pushes went to FCM with no
lifespan, so FCM kept them for a phone that was off for four weeks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from starlette.responses import JSONResponse, Response

from connectors.destinations.fcm_push import FcmPushDestination
from connectors.sandbox.fcm import FCM_ERROR_TYPE, FakeFcm, create_app
from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.errors import RetryableDeliveryError
from hub.model import SEND_BY, Delivery
from hub.runtime import Hub
from hub.serving import BackgroundServer
from hub.store.schema import deliveries
from tests.conftest import message, vendor_fake_fixtures
from tests.test_absence_timers import accept, hub_on
from tests.test_crm_and_push_delivery import cart_nudge_mappings
from tests.test_fcm_push import CONTENT, PHONE, TABLET, delivery, destination, intercepting_app, key_file

fake, server, fresh = vendor_fake_fixtures("fake", FakeFcm, create_app)

DEVICE_RATE = "Device message rate exceeded."


# --- 4. one device's rate limit held back every push -------------------------------------------------------------


@pytest.fixture
def push_hub(tmp_path: Path, sandbox: SandboxProviders) -> Iterator[Hub]:
    hub = hub_on(tmp_path, mappings_dir=cart_nudge_mappings(tmp_path), **sandbox.settings_overrides())
    yield hub
    hub.stop()


def views_cart(hub: Hub, user: str, token: str) -> None:
    """`user` opens the app on the device of `token` and views their cart, which plans them a push."""
    accept(hub, message("identify", userId=user, traits={"email": f"{user}@example.com", "first_name": user}),
           message(userId=user, event="App Opened", context={"device": {"token": token}}),
           message(userId=user, event="Cart Viewed"))


def push_to(hub: Hub, token: str) -> tuple[str, int, datetime]:
    """The status, attempts and next attempt time of the push to `token`."""
    with hub.store.read() as connection:
        row = connection.execute(
            select(deliveries.c.status, deliveries.c.attempts, deliveries.c.next_attempt_at)
            .where(deliveries.c.channel == "push", deliveries.c.target == token)
        ).one()
    return row.status, row.attempts, row.next_attempt_at


def run_until(hub: Hub, done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hub.delivery.run_once()
        if done():
            return True
        time.sleep(0.02)
    return False


def test_one_devices_message_rate_does_not_hold_back_every_other_persons_push(
    push_hub: Hub, sandbox: SandboxProviders
) -> None:
    """FCM answers a device sent to faster than it allows with 429 QUOTA_EXCEEDED "Device message rate exceeded."
    and a Retry-After. The engine took every retryable Retry-After as the whole destination asking for quiet: Ana's
    chatty phone stopped Bob's push, and every other, for as long as FCM asked that phone to wait."""
    views_cart(push_hub, "ana", PHONE)
    sandbox.fcm.fail_next(429, "QUOTA_EXCEEDED", message=DEVICE_RATE, retry_after=300)
    assert run_until(push_hub, lambda: push_to(push_hub, PHONE)[1] == 1, 10)
    status, _, next_attempt = push_to(push_hub, PHONE)
    assert status == "retrying"
    assert next_attempt >= utcnow() + timedelta(seconds=290), "Ana's own retry must still wait out FCM's Retry-After"

    views_cart(push_hub, "bob", TABLET)  # another person, another device, nothing wrong with either
    assert run_until(push_hub, lambda: push_to(push_hub, TABLET)[0] == "sent", 5), (
        "Bob's push was held back by Ana's device rate limit"
    )


def test_the_projects_message_rate_still_holds_back_every_push(push_hub: Hub, sandbox: SandboxProviders) -> None:
    """The project's rate (QUOTA_EXCEEDED naming no device or topic) is FCM asking quiet of every push: the fix for
    one device's rate must not send Bob's push into the same limit."""
    views_cart(push_hub, "ana", PHONE)
    sandbox.fcm.fail_next(429, "QUOTA_EXCEEDED", message="Message rate exceeded.", retry_after=300)
    assert run_until(push_hub, lambda: push_to(push_hub, PHONE)[1] == 1, 10)

    views_cart(push_hub, "bob", TABLET)
    run_until(push_hub, lambda: False, 1)
    assert push_to(push_hub, TABLET)[:2] == ("pending", 0)


def quota_refusal(violation: dict[str, str]) -> Response:
    """FCM's 429 QUOTA_EXCEEDED with a QuotaFailure naming the rate in `violation`, under a message naming none."""
    error = {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": FCM_ERROR_TYPE, "errorCode": "QUOTA_EXCEEDED"},
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
    ]}
    return JSONResponse({"error": error}, status_code=429, headers={"Retry-After": "30"})


@pytest.mark.parametrize(("violation", "one_device"), [
    ({"subject": "device", "description": "Device message rate exceeded"}, True),
    ({"subject": "topic:/topics/news", "description": "Topic message rate exceeded"}, True),
    ({"subject": "project_number:1", "description": "Message rate exceeded"}, False),
])
def test_the_quota_fcm_names_in_its_quota_failure_decides_who_waits(
    fake: FakeFcm, tmp_path: Path, violation: dict[str, str], one_device: bool
) -> None:
    """FCM's QUOTA_EXCEEDED carries a google.rpc.QuotaFailure saying which rate was exceeded, whatever its message
    says: a device's or a topic's wait is the delivery's alone, the project's the whole destination's."""
    refusal = quota_refusal(violation)
    with BackgroundServer(intercepting_app(fake, lambda sent: refusal)) as limited:
        push = destination(limited, key_file(tmp_path, fake.service_account_key(f"{limited.url}/token")))
        try:
            with pytest.raises(RetryableDeliveryError) as failed:
                push.send(delivery(PHONE))
        finally:
            push.close()
    assert failed.value.failure.retry_after == 30
    assert failed.value.failure.retry_after_scope == ("delivery" if one_device else "destination")


# --- 5. pushes kept by FCM past the time the hub would still send them ------------------------------------------


@pytest.fixture
def push(fake: FakeFcm, server: BackgroundServer, tmp_path: Path) -> Iterator[FcmPushDestination]:
    built = destination(server, key_file(tmp_path, fake.service_account_key(f"{server.url}/token")))
    yield built
    built.close()


def due_by(send_by: datetime) -> Delivery:
    """A push to PHONE that routing gave `send_by` (HUB_MESSAGE_MAX_AGE_HOURS after it was due)."""
    return Delivery("d-ttl", "fcm_push", "push", PHONE, {**CONTENT, SEND_BY: send_by.isoformat()}, 0,
                    datetime.now(timezone.utc), profile_id="p-1")


def test_a_push_is_not_kept_by_fcm_past_the_time_the_hub_would_still_send_it(
    push: FcmPushDestination, fake: FakeFcm
) -> None:
    """Routing gives every message to a person a send-by time, and the engine withdraws one claimed past it. The
    push went to FCM with no lifespan at all, so FCM kept it for a phone that was off for its default of four
    weeks, and "your cart is saved" popped up days after the hub itself would have called it too old to send."""
    send_by = datetime.now(timezone.utc) + timedelta(hours=1)
    push.send(due_by(send_by))

    [sent] = fake.messages
    pushed = sent["message"]
    assert 3590 <= fake.kept_for(pushed) <= 3600
    assert pushed["android"]["collapse_key"] == "cart", "the lifespan must not drop the collapse key"
    assert pushed["apns"]["headers"] == {"apns-collapse-id": "cart", "apns-expiration": str(int(send_by.timestamp()))}
    assert 3590 <= int(pushed["webpush"]["headers"]["TTL"]) <= 3600


def test_a_push_due_past_its_send_by_time_is_tried_once_and_not_kept(push: FcmPushDestination, fake: FakeFcm) -> None:
    """A send-by time just passed between the claim and the send: FCM takes no negative lifespan, so the push goes
    with none left (ttl 0, APNs expiration 0: delivered now or dropped)."""
    push.send(due_by(datetime.now(timezone.utc) - timedelta(seconds=5)))

    pushed = fake.messages[0]["message"]
    lifespans = pushed["android"]["ttl"], pushed["apns"]["headers"]["apns-expiration"], pushed["webpush"]["headers"]["TTL"]
    assert lifespans == ("0s", "0", "0")


def test_a_send_by_time_beyond_fcms_longest_lifespan_is_kept_as_long_as_fcm_allows(
    push: FcmPushDestination, fake: FakeFcm
) -> None:
    """HUB_MESSAGE_MAX_AGE_HOURS may reach beyond FCM's 28 days, whose longer ttl FCM refuses (INVALID_ARGUMENT)."""
    push.send(due_by(datetime.now(timezone.utc) + timedelta(days=40)))

    assert fake.kept_for(fake.messages[0]["message"]) == 2_419_200


@pytest.mark.parametrize("ttl", ["3600", 3600, "1h", "2419201s", "-1s"])
def test_the_fake_refuses_a_ttl_fcm_would(fake: FakeFcm, server: BackgroundServer, ttl: object) -> None:
    """FCM takes ``android.ttl`` only as a Duration in JSON ("3600s") of at most 28 days; a fake that took anything
    would let a push FCM refuses pass the tests."""
    answer = httpx.post(f"{server.url}/v1/projects/{fake.project_id}/messages:send",
                        headers={"Authorization": f"Bearer {fake.access_tokens.issue()}"},
                        json={"message": {"token": PHONE, "android": {"ttl": ttl}}})
    assert answer.status_code == 400
    assert "message.android.ttl" in answer.json()["error"]["message"]
    assert fake.messages == []
