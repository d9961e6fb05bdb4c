"""The FCM push destination with the real firebase-admin library against the fake FCM and token endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.destinations.fcm_push import FcmPushDestination, TokenFailure, _batch_error
from connectors.sandbox.fcm import FakeFcm, create_app
from hub.errors import AuthDeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery
from hub.serving import BackgroundServer
from tests.conftest import vendor_fake_fixtures

PHONE = "dGVzdC1waG9uZS10b2tlbjpBUEE5MWJIdGVzdHRva2VuMDAx"
TABLET = "dGVzdC10YWJsZXQtdG9rZW46QVBBOTFiSHRlc3R0b2tlbjAwMg"
CONTENT = {"title": "Still thinking it over?", "body": "Your cart is waiting: 10% off today.", "rule_id": "cart",
           "params": {"data": {"cart_id": "c-1", "discount": 10}}}


fake, server, fresh = vendor_fake_fixtures("fake", FakeFcm, create_app)


def key_file(folder: Path, key: dict[str, Any]) -> Path:
    path = folder / f"{key['client_email']}.json"
    path.write_text(json.dumps(key))
    return path


@pytest.fixture(scope="module")
def trusted_key(fake: FakeFcm, server: BackgroundServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return key_file(tmp_path_factory.mktemp("keys"), fake.service_account_key(f"{server.url}/token"))


class Forgotten(list[str]):
    def __call__(self, tokens: Sequence[str]) -> None:
        self.extend(tokens)


def destination(server: BackgroundServer, key: Path, forget: Forgotten | None = None, **overrides: Any) -> FcmPushDestination:
    config = FcmPushDestination.validate_config(
        "test", {"credentials_file": key, "api_base_url": server.url, "timeout_seconds": 2, **overrides}
    )
    return FcmPushDestination("fcm_push", config, forget_tokens=forget)


@pytest.fixture
def forgotten() -> Forgotten:
    return Forgotten()


@pytest.fixture
def push(server: BackgroundServer, trusted_key: Path, forgotten: Forgotten) -> Iterator[FcmPushDestination]:
    built = destination(server, trusted_key, forgotten)
    yield built
    built.close()


def delivery(*tokens: str, content: dict[str, Any] = CONTENT) -> Delivery:
    return Delivery("dlv-1", "fcm_push", "push", tokens[0], {**content, "recipients": list(tokens)}, 0,
                    datetime.now(timezone.utc))


def test_one_token_gets_the_notification_after_an_oauth_exchange(push: FcmPushDestination, fake: FakeFcm) -> None:
    result = push.send(delivery(PHONE))

    [sent] = fake.messages
    assert sent["message"] == {
        "token": PHONE,
        "notification": {"title": "Still thinking it over?", "body": "Your cart is waiting: 10% off today."},
        "data": {"cart_id": "c-1", "discount": "10"},
    }
    assert result.provider_message_id == sent["name"]
    assert result.response_summary == {"sent": 1, "failed": 0, "message_ids": [sent["name"]], "errors": {},
                                       "dead_tokens": 0}
    assert [(r["path"], r["status"]) for r in fake.requests] == [
        ("/token", 200), (f"/v1/projects/{fake.project_id}/messages:send", 200)
    ]
    assert fake.requests[0]["json"] == {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}
    push.send(delivery(PHONE))
    assert fake.token_grants == 1  # the access token is reused until it expires


def test_several_tokens_are_one_multicast(push: FcmPushDestination, fake: FakeFcm) -> None:
    result = push.send(delivery(PHONE, TABLET))
    assert sorted(m["message"]["token"] for m in fake.messages) == sorted([PHONE, TABLET])
    assert (result.response_summary["sent"], len(result.response_summary["message_ids"])) == (2, 2)


def test_dead_tokens_are_forgotten_and_the_live_device_counts_as_reached(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten
) -> None:
    fake.unregistered.add(TABLET)
    result = push.send(delivery(PHONE, TABLET, "too-short"))
    assert [m["message"]["token"] for m in fake.messages] == [PHONE]
    assert sorted(forgotten) == sorted([TABLET, "too-short"])
    assert result.response_summary["errors"] == {TABLET[:10] + "…": "UNREGISTERED", "too-short": "INVALID_ARGUMENT"}
    assert (result.response_summary["sent"], result.response_summary["dead_tokens"]) == (1, 2)


@pytest.mark.parametrize(("token", "code"), [(PHONE, "UNREGISTERED"), ("not a token", "INVALID_ARGUMENT")])
def test_dead_only_token_is_permanent_and_forgotten(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten, token: str, code: str
) -> None:
    fake.unregistered.add(PHONE)
    with pytest.raises(PermanentDeliveryError) as refused:
        push.send(delivery(token))
    assert (refused.value.failure.error_class, refused.value.failure.provider_code) == (f"fcm.{code}", code)
    assert forgotten == [token]


def test_token_of_another_sender_is_permanent_and_forgotten(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten
) -> None:
    fake.fail_next(403, "SENDER_ID_MISMATCH", message="SenderId mismatch")
    with pytest.raises(PermanentDeliveryError) as refused:
        push.send(delivery(PHONE))
    assert (refused.value.failure.error_class, forgotten) == ("fcm.SENDER_ID_MISMATCH", [PHONE])


def test_refused_apns_credentials_are_an_auth_failure(push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten) -> None:
    # FCM sends it as a 401, so google-auth first refreshes its access token and tries twice more.
    fake.fail_next(401, "THIRD_PARTY_AUTH_ERROR", message="Auth error from APNS or Web Push Service", times=3)
    with pytest.raises(AuthDeliveryError) as refused:
        push.send(delivery(PHONE))
    assert (refused.value.failure.error_class, forgotten) == ("fcm.THIRD_PARTY_AUTH_ERROR", [])
    assert [r["path"] for r in fake.requests].count("/token") == 3 and fake.messages == []


def test_a_bad_payload_is_permanent_but_keeps_the_token(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten
) -> None:
    with pytest.raises(PermanentDeliveryError) as refused:
        push.send(delivery(PHONE, content={**CONTENT, "params": {"data": {"from": "hub"}}}))
    assert refused.value.failure.error_class == "fcm.INVALID_ARGUMENT"
    assert forgotten == [] and fake.messages == []


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [(429, "QUOTA_EXCEEDED", 30), (503, "UNAVAILABLE", 12), (500, "INTERNAL", None)],
)
def test_quota_and_outages_are_retryable_with_retry_after(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten, status: int, code: str, retry_after: int | None
) -> None:
    fake.fail_next(status, code, retry_after=retry_after)
    with pytest.raises(RetryableDeliveryError) as failed:
        push.send(delivery(PHONE))
    failure = failed.value.failure
    assert (failure.error_class, failure.retry_after) == (f"fcm.{code}", retry_after)
    assert len([r for r in fake.requests if r["fault"]]) == 1  # firebase-admin's own retries are off: the hub retries
    assert forgotten == []
    push.send(delivery(PHONE))
    assert len(fake.messages) == 1


def test_multicast_with_no_device_reached_waits_for_the_longest_retry_after(push: FcmPushDestination, fake: FakeFcm) -> None:
    fake.fail_next(429, "QUOTA_EXCEEDED", retry_after=5)
    fake.fail_next(503, "UNAVAILABLE", retry_after=9)
    with pytest.raises(RetryableDeliveryError) as failed:
        push.send(delivery(PHONE, TABLET))
    assert failed.value.failure.retry_after == 9
    assert sorted(failed.value.failure.response_summary["errors"].values()) == ["QUOTA_EXCEEDED", "UNAVAILABLE"]


def test_no_device_reached_fails_as_the_most_hopeful_outcome() -> None:
    dead = TokenFailure(TABLET, PermanentDeliveryError, "UNREGISTERED", "gone", None, dead_token=True)
    busy = TokenFailure(PHONE, RetryableDeliveryError, "QUOTA_EXCEEDED", "slow down", 30.0, dead_token=False)
    apns = TokenFailure(PHONE, AuthDeliveryError, "THIRD_PARTY_AUTH_ERROR", "apns key", None, dead_token=False)
    assert isinstance(_batch_error([dead, busy, apns], dead=1), RetryableDeliveryError)
    assert isinstance(_batch_error([dead, apns], dead=1), AuthDeliveryError)
    only_dead = _batch_error([dead], dead=1)
    assert isinstance(only_dead, PermanentDeliveryError)
    assert only_dead.failure.response_summary == {"errors": {TABLET[:10] + "…": "UNREGISTERED"}, "dead_tokens": 1}


def test_key_the_token_endpoint_does_not_trust_is_an_auth_failure(
    server: BackgroundServer, fake: FakeFcm, tmp_path: Path
) -> None:
    stranger = FakeFcm().service_account_key(f"{server.url}/token")
    push = destination(server, key_file(tmp_path, stranger))
    with pytest.raises(AuthDeliveryError) as refused:
        push.send(delivery(PHONE))
    assert refused.value.failure.error_class == "fcm.credentials.RefreshError"
    assert [(r["path"], r["status"]) for r in fake.requests] == [("/token", 400)]
    push.close()


def test_revoked_access_token_is_refreshed_once_by_google_auth(push: FcmPushDestination, fake: FakeFcm) -> None:
    push.send(delivery(PHONE))
    fake.expire_access_tokens()
    push.send(delivery(PHONE))
    assert fake.token_grants == 2
    assert [r["status"] for r in fake.requests] == [200, 200, 401, 200, 200]


def test_wrong_project_is_an_auth_failure(server: BackgroundServer, trusted_key: Path, fake: FakeFcm) -> None:
    push = destination(server, trusted_key, project_id="someone-elses-project")
    with pytest.raises(AuthDeliveryError) as refused:
        push.send(delivery(PHONE))
    assert (refused.value.failure.error_class, fake.messages) == ("fcm.PERMISSION_DENIED", [])
    push.close()


def test_a_slow_answer_times_out_as_retryable(push: FcmPushDestination, fake: FakeFcm) -> None:
    fake.fail_next(503, "UNAVAILABLE", delay_seconds=3)
    with pytest.raises(RetryableDeliveryError) as slow:
        push.send(delivery(PHONE))
    assert slow.value.failure.error_class == "fcm.DEADLINE_EXCEEDED"


def test_unreachable_token_endpoint_is_retryable(fake: FakeFcm, server: BackgroundServer, tmp_path: Path) -> None:
    with BackgroundServer(create_app(fake)) as gone:
        token_uri = f"{gone.url}/token"
    push = destination(server, key_file(tmp_path, fake.service_account_key(token_uri)))
    with pytest.raises(RetryableDeliveryError) as down:
        push.send(delivery(PHONE))
    assert down.value.failure.error_class.startswith("fcm.credentials.")
    push.close()


def test_control_endpoints_show_state_and_queue_faults(server: BackgroundServer, fake: FakeFcm) -> None:
    queued = httpx.post(f"{server.url}/_sandbox/faults", json={"status": 503, "code": "UNAVAILABLE", "times": 2})
    assert queued.status_code == 201
    assert httpx.post(f"{server.url}/_sandbox/faults", json={"status": 200}).status_code == 422
    answer = httpx.post(f"{server.url}/v1/projects/{fake.project_id}/messages:send", json={"message": {"token": PHONE}})
    assert answer.status_code == 503
    assert answer.json()["error"]["details"] == [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNAVAILABLE"}
    ]
    assert httpx.get(f"{server.url}/_sandbox/state").json() == {"token_grants": 0, "messages": []}
    assert httpx.post(f"{server.url}/_sandbox/reset").status_code == 204
    assert fake.requests == []


def test_a_failing_token_store_never_fails_a_push_that_reached_a_device(
    server: BackgroundServer, trusted_key: Path, fake: FakeFcm
) -> None:
    def broken_store(tokens: Sequence[str]) -> None:
        raise RuntimeError("database is locked")

    fake.unregistered.add(TABLET)
    push = FcmPushDestination("fcm_push", FcmPushDestination.validate_config(
        "test", {"credentials_file": trusted_key, "api_base_url": server.url}), forget_tokens=broken_store)
    result = push.send(delivery(PHONE, TABLET))
    assert (result.response_summary["sent"], result.response_summary["dead_tokens"]) == (1, 1)
    push.close()
