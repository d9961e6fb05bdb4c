"""The FCM push destination with the real firebase-admin library against the fake FCM and token endpoint."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, PlainTextResponse, Response

from connectors.destinations.fcm_errors import TokenFailure, batch_error
from connectors.destinations.fcm_push import FCM_PAYLOAD_LIMIT, FcmPushDestination
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
    """The tokens the destination called dead, in order; `reasons` says why, by token."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, str] = {}

    def __call__(self, tokens: Sequence[str], reason: str) -> None:
        self.extend(tokens)
        self.reasons.update(dict.fromkeys(tokens, reason))


def intercepting_app(fake: FakeFcm, answer: Callable[[dict[str, Any]], Response | None]) -> Any:
    """The fake's ASGI app, except that `answer(message)` may answer a ``messages:send`` first: FCM (or proxy)
    answers the fake does not give, aimed at one device."""
    inner = create_app(fake)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("messages:send"):
            await inner(scope, receive, send)
            return
        body, more = b"", True
        while more:
            chunk = await receive()
            body, more = body + chunk.get("body", b""), chunk.get("more_body", False)
        canned = answer(json.loads(body).get("message") or {})
        if canned is not None:
            await canned(scope, receive, send)
            return

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        await inner(scope, replay, send)

    return app


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
        "android": {"collapse_key": "cart", "notification": {"tag": "cart"}},
        "apns": {"headers": {"apns-collapse-id": "cart"}},
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
    assert forgotten.reasons == {
        TABLET: "FCM answered UNREGISTERED: the app was uninstalled or the token expired",
        "too-short": "FCM answered INVALID_ARGUMENT for the token: it is malformed or expired",
    }
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


def test_token_of_another_sender_beside_a_reached_device_is_forgotten(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten
) -> None:
    fake.other_senders.add(TABLET)
    result = push.send(delivery(PHONE, TABLET))
    assert (result.response_summary["errors"], forgotten) == ({TABLET[:10] + "…": "SENDER_ID_MISMATCH"}, [TABLET])
    # Not an uninstall: a wrong-project setup for ops to fix, which `profiles explain` must say.
    assert forgotten.reasons[TABLET].startswith("FCM answered SENDER_ID_MISMATCH: the token belongs to another "
                                                "Firebase project; check the hub's FCM project")


def test_refused_apns_credentials_are_an_auth_failure(push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten) -> None:
    # FCM sends it as a 401, so google-auth first refreshes its access token and tries twice more.
    fake.fail_next(401, "THIRD_PARTY_AUTH_ERROR", message="Auth error from APNS or Web Push Service", times=3)
    with pytest.raises(AuthDeliveryError) as refused:
        push.send(delivery(PHONE))
    assert (refused.value.failure.error_class, forgotten) == ("fcm.THIRD_PARTY_AUTH_ERROR", [])
    assert [r["path"] for r in fake.requests].count("/token") == 3 and fake.messages == []


def test_a_reserved_data_key_is_refused_before_sending_and_keeps_the_token(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten
) -> None:
    with pytest.raises(PermanentDeliveryError) as refused:
        push.send(delivery(PHONE, content={**CONTENT, "params": {"data": {"from": "hub"}}}))
    assert refused.value.failure.error_class == "fcm.bad_params"
    assert "params.data.from" in refused.value.failure.message
    assert forgotten == [] and fake.requests == []


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
    assert isinstance(batch_error([dead, busy, apns], dead=1), RetryableDeliveryError)
    assert isinstance(batch_error([dead, apns], dead=1), AuthDeliveryError)
    only_dead = batch_error([dead], dead=1)
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


# ---------------------------------------------------------------------------------------------- what blames a token


@pytest.mark.parametrize("answer", [
    # FCM's answer to a message over its size limit (firebase/firebase-admin-go#580): no detail at all.
    JSONResponse({"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}},
                 status_code=400),
    PlainTextResponse("<html><body>400 Bad Request</body></html>", status_code=400),  # a proxy on the way
], ids=["bare INVALID_ARGUMENT", "proxy page"])
def test_a_400_that_blames_no_token_fails_the_message_and_keeps_every_token(
    fake: FakeFcm, trusted_key: Path, forgotten: Forgotten, answer: Response
) -> None:
    """Only FCM's word that the token is at fault removes one: a 400 without it was read as "malformed token",
    and a too-big message took every good device the person had."""
    with BackgroundServer(intercepting_app(fake, lambda message: answer)) as bare:
        push = destination(bare, trusted_key, forgotten)
        try:
            with pytest.raises(PermanentDeliveryError) as refused:
                push.send(delivery(PHONE, TABLET))
        finally:
            push.close()
    assert (refused.value.failure.error_class, forgotten) == ("fcm.INVALID_ARGUMENT", [])


def test_an_invalid_argument_that_does_not_blame_the_token_keeps_it(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten
) -> None:
    """FCM's bare answer to a message over its size limit says nothing of the token: the message's fault only.
    (Its bare answer to a bad token does say so, and removes it: tests/test_push_tokens21.py.)"""
    fake.fail_next(400, "INVALID_ARGUMENT", message="Android message is too big")
    with pytest.raises(PermanentDeliveryError):
        push.send(delivery(PHONE))
    assert forgotten == []


# ---------------------------------------------------------------------------------------------- payload size


def content_of_size(size: int) -> dict[str, Any]:
    """CONTENT with its body padded so that title, body and data keys and values come to `size` UTF-8 bytes."""
    used = sum(len(text.encode()) for text in [CONTENT["title"], "cart_id", "c-1", "discount", "10"])
    return {**CONTENT, "body": "€" + "x" * (size - used - len("€".encode()))}  # bytes, not characters


def test_a_push_of_exactly_the_payload_limit_goes_out(push: FcmPushDestination, fake: FakeFcm) -> None:
    push.send(delivery(PHONE, content=content_of_size(FCM_PAYLOAD_LIMIT)))
    assert len(fake.messages) == 1


def test_a_push_over_the_payload_limit_is_refused_before_sending_naming_its_size(
    push: FcmPushDestination, fake: FakeFcm, forgotten: Forgotten
) -> None:
    """A long template hits FCM's 4096 bytes; the delivery log should say so, in bytes, instead of FCM's bare
    INVALID_ARGUMENT, and no request should go out."""
    with pytest.raises(PermanentDeliveryError) as refused:
        push.send(delivery(PHONE, TABLET, content=content_of_size(FCM_PAYLOAD_LIMIT + 1)))
    assert refused.value.failure.error_class == "fcm.message_too_big"
    assert f"{FCM_PAYLOAD_LIMIT + 1} bytes" in refused.value.failure.message
    assert fake.requests == [] and forgotten == []


def test_the_fake_refuses_a_payload_over_the_limit_as_fcm_does(server: BackgroundServer, fake: FakeFcm) -> None:
    """FCM's 400 INVALID_ARGUMENT "Android message is too big", with no field violation: the fake accepted any
    size, so nothing tested the push path against the limit."""
    url = f"{server.url}/v1/projects/{fake.project_id}/messages:send"
    bearer = {"Authorization": f"Bearer {fake.access_tokens.issue()}"}

    def post(content: dict[str, Any]) -> httpx.Response:
        message = {"token": PHONE, "notification": {"title": content["title"], "body": content["body"]},
                   "data": {"cart_id": "c-1", "discount": "10"}}
        return httpx.post(url, json={"message": message}, headers=bearer)

    assert post(content_of_size(FCM_PAYLOAD_LIMIT)).status_code == 200
    refused = post(content_of_size(FCM_PAYLOAD_LIMIT + 1))
    error = refused.json()["error"]
    assert (refused.status_code, error["status"], error["message"]) == (400, "INVALID_ARGUMENT", "Android message is too big")
    assert error["details"] == [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]
    assert len(fake.messages) == 1


# ---------------------------------------------------------------------------------------------- partial success


UNAVAILABLE = {"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE",
                         "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNAVAILABLE"}]}}


@pytest.mark.parametrize("answer", [
    JSONResponse(UNAVAILABLE, status_code=503, headers={"Retry-After": "\u00b2"}),  # a digit to str.isdigit, not to float
    JSONResponse(UNAVAILABLE, status_code=503, headers={"Retry-After": "Mon, 01 Jan 2024 00:00:00 +99999999999999999999"}),
    JSONResponse([], status_code=503),
    JSONResponse({"error": {"code": 503, "status": "UNAVAILABLE", "details": "see logs"}}, status_code=503),
    JSONResponse({"error": {"code": 503, "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                                      "errorCode": {"reason": "UNAVAILABLE"}}]}}, status_code=503),
], ids=["Retry-After superscript", "Retry-After overflowing offset", "JSON list", "details not a list", "errorCode a map"])
def test_an_odd_answer_for_one_device_does_not_undo_the_push_another_device_accepted(
    fake: FakeFcm, trusted_key: Path, answer: Response
) -> None:
    """PHONE accepts; TABLET's answer is one reading it raised on (fcm_push had its own copy of the Retry-After
    parser, without hub.retry's fixes). The push then failed as `unexpected`, and its retry notified PHONE again."""
    with BackgroundServer(intercepting_app(fake, lambda message: answer if message.get("token") == TABLET else None)) as odd:
        push = destination(odd, trusted_key)
        try:
            result = push.deliver(delivery(PHONE, TABLET))
        finally:
            push.close()
    assert (result.status, result.response_summary["sent"], result.response_summary["failed"]) == ("sent", 1, 1)
    assert [m["message"]["token"] for m in fake.messages] == [PHONE]


def test_a_failed_token_refresh_for_one_device_does_not_undo_the_push_another_device_accepted(
    fake: FakeFcm, tmp_path: Path
) -> None:
    """TABLET is refused with a 401 (APNs' THIRD_PARTY_AUTH_ERROR), on which google-auth renews the access token,
    and Google's token endpoint answers 503 just then. The RefreshError escaped send_each's worker thread with
    PHONE's result: the push failed as a credential error and its retry notified PHONE again."""
    token_endpoint_down = False
    apns_refused = JSONResponse({"error": {"code": 401, "message": "Auth error from APNS or Web Push Service", "status": "UNAUTHENTICATED",
                                           "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                                        "errorCode": "THIRD_PARTY_AUTH_ERROR"}]}}, status_code=401)
    fcm_app = intercepting_app(fake, lambda message: apns_refused if message.get("token") == TABLET else None)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/token" and token_endpoint_down:
            await JSONResponse({"error": "internal_failure", "error_description": "Backend Error"}, status_code=503)(scope, receive, send)
            return
        await fcm_app(scope, receive, send)

    with BackgroundServer(app) as flaky:
        push = destination(flaky, key_file(tmp_path, fake.service_account_key(f"{flaky.url}/token")))
        try:
            push.send(delivery(PHONE))  # the destination holds an access token from an earlier push
            token_endpoint_down = True
            result = push.deliver(delivery(PHONE, TABLET))
        finally:
            push.close()
    assert (result.status, result.response_summary["errors"]) == ("sent", {TABLET[:10] + "…": "credentials.RefreshError"})
    assert [m["message"]["token"] for m in fake.messages] == [PHONE, PHONE]


# ---------------------------------------------------------------------------------------------- data params


def test_non_string_data_params_reach_the_app_as_json(push: FcmPushDestination, fake: FakeFcm) -> None:
    """FCM data values are strings, and a rule's params.data is YAML, with booleans, nulls and maps: str() sent
    "True", "None" and "{'id': 7}", which no Kotlin, Swift or JavaScript JSON parser reads. Strings stay as written."""
    data = {"screen": "cart", "show_banner": True, "coupon": None, "discount": 10, "ratio": 0.5,
            "cart": {"id": 7, "items": ["a", "é"]}}
    push.send(delivery(PHONE, content={**CONTENT, "params": {"data": data}}))
    [sent] = fake.messages
    assert sent["message"]["data"] == {"screen": "cart", "show_banner": "true", "coupon": "null", "discount": "10",
                                       "ratio": "0.5", "cart": '{"id":7,"items":["a","é"]}'}


@pytest.mark.parametrize(("data", "problem"), [
    ({"from": "hub"}, "params.data.from: FCM reserves this key"),
    ({"notification": "x"}, "params.data.notification: FCM reserves this key"),
    ({"message_type": "x"}, "params.data.message_type: FCM reserves this key"),
    ({"google.c.a.e": "1"}, "params.data.google.c.a.e: FCM reserves this key"),
    ({"googleCampaign": "1"}, "params.data.googleCampaign: FCM reserves this key"),
    ({"gcm_id": "1"}, "params.data.gcm_id: FCM reserves this key"),
    ({"ratio": float("nan")}, "params.data.ratio: float nan has no JSON form"),
    ({"expires": date(2025, 1, 1)}, "params.data.expires: date datetime.date(2025, 1, 1) has no JSON form"),
    ({7: "x"}, "params.data: key 7 is not text"),
    (["screen", "cart"], "params.data: must be a map"),
])
def test_data_params_fcm_can_never_take_are_refused_when_the_rules_load(data: Any, problem: str) -> None:
    """Found only at send time, every push of the rule failed for good (FCM refuses reserved keys), replays too."""
    [found] = FcmPushDestination.check_params({"data": data})
    assert found.startswith(problem), found


def test_data_params_fcm_takes_pass_the_rule_check() -> None:
    assert FcmPushDestination.check_params({"data": {"screen": "cart", "show": True, "coupon": None, "cart": {"id": 7}},
                                            "meant_for_another_channel": 1}) == []
    assert FcmPushDestination.check_params({}) == []


def test_data_params_the_rule_check_refuses_are_refused_at_send_too(push: FcmPushDestination, fake: FakeFcm) -> None:
    """A delivery stored before the rule check existed (or replayed) must not reach FCM with them either."""
    with pytest.raises(PermanentDeliveryError) as refused:
        push.send(delivery(PHONE, content={**CONTENT, "params": {"data": {"gcm.notification.x": "1", "n": float("inf")}}}))
    assert refused.value.failure.error_class == "fcm.bad_params"
    assert [p.partition(":")[0] for p in refused.value.failure.message.split("; ")] == ["params.data.gcm.notification.x", "params.data.n"]
    assert fake.requests == []
