"""The real `twilio` library against the fake Twilio, through BaseUrlHttpClient (and its async twin)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio.rest.api.v2010.account.message import MessageInstance

from connectors.destinations.twilio_sms import TwilioSmsConfig, TwilioSmsDestination, _as_delivery_error
from connectors.destinations.twilio_transport import AsyncPooledHttpClient, BaseUrlHttpClient
from connectors.sandbox.twilio import FakeTwilio, create_app
from hub.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery
from hub.serving import BackgroundServer
from tests.conftest import vendor_fake_fixtures

SENDER = "+15005550006"
RECIPIENT = "+14155550142"
CALLBACK = "https://hub.example.com/webhooks/twilio/status"


fake, server, fresh = vendor_fake_fixtures("fake", FakeTwilio, create_app)


def twilio_client(server: BackgroundServer, fake: FakeTwilio, auth_token: str | None = None, **kwargs: str) -> Client:
    transport = BaseUrlHttpClient(server.url, timeout=5)
    return Client(fake.account_sid, auth_token or fake.auth_token, http_client=transport, **kwargs)


@pytest.fixture
def client(server: BackgroundServer, fake: FakeTwilio) -> Iterator[Client]:
    twilio = twilio_client(server, fake)
    yield twilio
    twilio.http_client.session.close()


def send(client: Client, to: str = RECIPIENT, **fields: str | None) -> MessageInstance:
    """Send with the defaults below; a field set to None is left out, as the library does."""
    return client.messages.create(to=to, **{"from_": SENDER, "body": "Hi Jane", **fields})


def test_created_message_is_what_arrived_and_what_twilio_returns(client: Client, fake: FakeTwilio) -> None:
    sent = send(client, body="Your order shipped", status_callback=CALLBACK)

    [request] = fake.requests
    assert request == {
        "method": "POST",
        "path": f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json",
        "query": {},
        "form": {"To": RECIPIENT, "From": SENDER, "Body": "Your order shipped", "StatusCallback": CALLBACK},
        "auth_user": fake.account_sid,
        "status": 201,
        "fault": False,
    }
    [stored] = fake.messages
    assert re.fullmatch(r"SM[0-9a-f]{32}", sent.sid) and stored["sid"] == sent.sid
    assert fake.status_callbacks == {sent.sid: CALLBACK}
    assert (sent.to, sent.from_, sent.body) == (RECIPIENT, SENDER, "Your order shipped")
    assert (sent.status, sent.direction, sent.num_segments, sent.num_media) == ("queued", "outbound-api", "1", "0")
    assert (sent.account_sid, sent.api_version, sent.messaging_service_sid) == (fake.account_sid, "2010-04-01", None)
    assert (sent.error_code, sent.error_message, sent.price, sent.date_sent) == (None, None, None, None)
    assert isinstance(sent.date_created, datetime) and sent.date_created.tzinfo is not None
    assert stored["date_created"].endswith(" +0000")  # RFC 2822, as Twilio writes it
    assert sent.uri == f"/2010-04-01/Accounts/{fake.account_sid}/Messages/{sent.sid}.json"
    assert sent.subresource_uris == {"media": f"/2010-04-01/Accounts/{fake.account_sid}/Messages/{sent.sid}/Media.json"}


def test_fetch_by_sid_returns_the_stored_resource(client: Client, fake: FakeTwilio) -> None:
    sent = send(client)
    fetched = client.messages(sent.sid).fetch()
    assert (fetched.sid, fetched.to, fetched.body, fetched.status) == (sent.sid, RECIPIENT, "Hi Jane", "queued")
    with pytest.raises(TwilioRestException) as missing:
        client.messages("SM" + "0" * 32).fetch()
    assert (missing.value.status, missing.value.code) == (404, 20404)
    assert [r["status"] for r in fake.requests] == [201, 200, 404]


@pytest.mark.parametrize("wrong", ["token", "account in path"])
def test_refused_credentials_are_401_code_20003(server: BackgroundServer, fake: FakeTwilio, wrong: str) -> None:
    if wrong == "token":
        client = twilio_client(server, fake, auth_token="not-the-token")
    else:
        client = twilio_client(server, fake, account_sid="AC" + "0" * 32)
    with pytest.raises(TwilioRestException) as refused:
        send(client)
    assert (refused.value.status, refused.value.code) == (401, 20003)
    assert [(r["status"], r["auth_user"]) for r in fake.requests] == [(401, fake.account_sid)]
    assert fake.message_count == 0


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"to": ""}, 21604),
        ({"from_": None}, 21603),
        ({"body": None}, 21602),
        ({"to": "4155550142"}, 21211),
        ({"to": "+14155550142\n"}, 21211),
        ({"body": "x" * 1601}, 21617),
    ],
)
def test_requests_twilio_refuses_are_400_with_its_code(
    client: Client, fake: FakeTwilio, fields: dict[str, str | None], code: int
) -> None:
    with pytest.raises(TwilioRestException) as refused:
        send(client, **fields)
    assert (refused.value.status, refused.value.code) == (400, code)
    assert fake.message_count == 0
    assert [r["status"] for r in fake.requests] == [400]


def test_unsubscribed_recipient_is_21610(client: Client, fake: FakeTwilio) -> None:
    fake.unsubscribed.add(RECIPIENT)
    with pytest.raises(TwilioRestException) as refused:
        send(client)
    assert (refused.value.status, refused.value.code) == (400, 21610)
    assert "unsubscribed" in refused.value.msg


def test_two_injected_503s_then_success(client: Client, fake: FakeTwilio) -> None:
    fake.fail_next(503, code=20503, message="Service unavailable", times=2)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as failed:
            send(client)
        assert (failed.value.status, failed.value.code) == (503, 20503)
    sent = send(client)

    requests = fake.requests
    assert len(requests) == 3
    assert [(r["status"], r["fault"]) for r in requests] == [(503, True), (503, True), (201, False)]
    assert all(r["form"]["To"] == RECIPIENT for r in requests)
    assert [m["sid"] for m in fake.messages] == [sent.sid]


def test_injected_429_over_http_exposes_retry_after(server: BackgroundServer, fake: FakeTwilio) -> None:
    queued = httpx.post(
        f"{server.url}/_sandbox/faults",
        json={"status": 429, "code": 20429, "message": "Too Many Requests", "retry_after": 7},
    )
    assert queued.status_code == 201

    answer = httpx.post(
        f"{server.url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json",
        data={"To": RECIPIENT, "From": SENDER, "Body": "Hi"},
        auth=(fake.account_sid, fake.auth_token),
    )
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "7"
    assert answer.json() == {
        "code": 20429,
        "message": "Too Many Requests",
        "more_info": "https://www.twilio.com/docs/errors/20429",
        "status": 429,
    }
    assert httpx.post(f"{server.url}/_sandbox/faults", json={"status": 200}).status_code == 422
    named = httpx.post(f"{server.url}/_sandbox/faults", json={"status": 503, "code": "UNAVAILABLE"})
    assert named.status_code == 422  # Twilio's codes are numbers; a name would reach the client as a broken error


def test_json_body_has_no_fields_for_twilio(server: BackgroundServer, fake: FakeTwilio) -> None:
    answer = httpx.post(
        f"{server.url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json",
        json={"To": RECIPIENT, "From": SENDER, "Body": "Hi"},
        auth=(fake.account_sid, fake.auth_token),
    )
    assert (answer.status_code, answer.json()["code"]) == (400, 21604)


def test_unknown_path_is_404_recorded_and_never_eats_a_fault(server: BackgroundServer, fake: FakeTwilio) -> None:
    fake.fail_next(503)
    path = f"/2010-04-01/Accounts/{fake.account_sid}/Calls.json"
    answer = httpx.post(f"{server.url}{path}", data={"To": RECIPIENT}, auth=(fake.account_sid, fake.auth_token))
    assert (answer.status_code, answer.json()["code"], answer.json()["status"]) == (404, 20404, 404)
    wrong_method = httpx.get(f"{server.url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, 20004)
    assert [(r["method"], r["path"], r["form"], r["status"]) for r in fake.requests] == [
        ("POST", path, {"To": RECIPIENT}, 404),
        ("GET", f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json", {}, 405),
    ]
    assert fake.requests[0]["fault"] is False


def test_control_endpoints_show_and_reset_state(client: Client, server: BackgroundServer, fake: FakeTwilio) -> None:
    sent = send(client)
    state = httpx.get(f"{server.url}/_sandbox/state").json()
    assert ([m["sid"] for m in state["messages"]], state["unsubscribed"]) == ([sent.sid], [])
    assert httpx.get(f"{server.url}/_sandbox/requests").json() == fake.requests
    assert httpx.post(f"{server.url}/_sandbox/reset").status_code == 204
    assert (fake.messages, fake.requests) == ([], [])


def test_messaging_service_media_message_is_accepted_mms(client: Client, fake: FakeTwilio) -> None:
    service = "MG" + "1" * 32
    sent = client.messages.create(
        to=RECIPIENT, messaging_service_sid=service, media_url=["https://a.example/1.png", "https://a.example/2.png"]
    )
    assert re.fullmatch(r"MM[0-9a-f]{32}", sent.sid)
    assert (sent.status, sent.from_, sent.messaging_service_sid, sent.num_media) == ("accepted", None, service, "2")
    assert fake.requests[0]["form"]["MediaUrl"] == ["https://a.example/1.png", "https://a.example/2.png"]


def test_transport_redirects_regional_hosts_and_refuses_other_twilio_hosts(
    server: BackgroundServer, fake: FakeTwilio
) -> None:
    regional = twilio_client(server, fake, region="au1", edge="sydney")
    assert send(regional).status == "queued"
    with pytest.raises(ValueError, match="verify.twilio.com"):
        regional.http_client.request("GET", "https://verify.twilio.com/v2/Services")
    assert len(fake.requests) == 1


def test_the_async_transport_sends_is_refused_and_redirects_as_the_blocking_one(
    server: BackgroundServer, fake: FakeTwilio
) -> None:
    async def scenario() -> tuple[MessageInstance, TwilioRestException]:
        transport = AsyncPooledHttpClient(5, server.url)
        try:
            regional = Client(fake.account_sid, fake.auth_token, http_client=transport, region="au1", edge="sydney")
            sent = await regional.messages.create_async(to=RECIPIENT, from_=SENDER, body="Hi Jane", status_callback=CALLBACK)
            wrong = Client(fake.account_sid, "not-the-token", http_client=transport)
            with pytest.raises(TwilioRestException) as refused:
                await wrong.messages.create_async(to=RECIPIENT, from_=SENDER, body="Hi Jane")
            with pytest.raises(ValueError, match="verify.twilio.com"):
                await transport.request("GET", "https://verify.twilio.com/v2/Services")
            return sent, refused.value
        finally:
            await transport.close()

    sent, refused = asyncio.run(scenario())
    [stored] = fake.messages
    assert (sent.sid, sent.status, sent.to, sent.body) == (stored["sid"], "queued", RECIPIENT, "Hi Jane")
    assert fake.requests[0]["form"] == {"To": RECIPIENT, "From": SENDER, "Body": "Hi Jane", "StatusCallback": CALLBACK}
    assert (refused.status, refused.code) == (401, 20003)
    assert [(r["status"], r["auth_user"]) for r in fake.requests] == [(201, fake.account_sid), (401, fake.account_sid)]


def test_the_destination_sends_on_the_engines_loop_and_classifies_refusals_alike(
    server: BackgroundServer, fake: FakeTwilio
) -> None:
    config = TwilioSmsConfig(account_sid=fake.account_sid, auth_token=fake.auth_token, from_number=SENDER,
                             api_base_url=server.url)
    destination = TwilioSmsDestination("twilio_sms", config)
    fake.unsubscribed.add("+14155550199")

    def delivery(target: str) -> Delivery:
        return Delivery(f"d-{target}", "twilio_sms", "sms", target, {"body": "Hi Jane"}, 0, datetime.now().astimezone())

    async def scenario() -> tuple[str | None, PermanentDeliveryError]:
        try:
            sent = await destination.deliver_async(delivery(RECIPIENT))
            with pytest.raises(PermanentDeliveryError) as refused:
                await destination.deliver_async(delivery("+14155550199"))
            return sent.provider_message_id, refused.value
        finally:
            await destination.close_async()

    sid, refused = asyncio.run(scenario())
    assert [stored["sid"] for stored in fake.messages] == [sid]
    assert (refused.failure.error_class, refused.failure.revokes_consent) == ("twilio.21610", True)


def test_the_destination_imports_the_clients_message_api_when_built_not_at_the_first_sms() -> None:
    """In a fresh interpreter: the twilio client imports its REST API's modules at first use, 35 ms and more,
    which at the first SMS would stall the delivery engine's loop and every send in flight on it."""
    built = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from connectors.destinations.twilio_sms import TwilioSmsConfig, TwilioSmsDestination
            assert "twilio.rest.api" not in sys.modules
            TwilioSmsDestination("twilio_sms", TwilioSmsConfig(
                account_sid="AC{'0' * 32}", auth_token="token", from_number="{SENDER}"))
            print(sorted(name for name in sys.modules if name.startswith("twilio.rest.api.v2010.account.message")))
        """)],
        capture_output=True, text=True, check=True,
    )
    assert "twilio.rest.api.v2010.account.message" in built.stdout


def sms_destination(server: BackgroundServer, fake: FakeTwilio) -> TwilioSmsDestination:
    config = TwilioSmsConfig(account_sid=fake.account_sid, auth_token=fake.auth_token, from_number=SENDER,
                             api_base_url=server.url)
    return TwilioSmsDestination("twilio_sms", config)


def refusals(destination: TwilioSmsDestination, engine_loop: bool, sends: int) -> list[DeliveryError]:
    """What `sends` SMS raise, sent as the delivery engine does (`deliver_async`) or on a thread (`deliver`)."""
    sms = Delivery("d-1", "twilio_sms", "sms", RECIPIENT, {"body": "Hi Jane"}, 0, datetime.now(timezone.utc))

    async def on_the_loop() -> list[DeliveryError]:
        raised = []
        try:
            for _ in range(sends):
                with pytest.raises(DeliveryError) as refused:
                    await destination.deliver_async(sms)
                raised.append(refused.value)
        finally:
            await destination.close_async()
        return raised

    if engine_loop:
        return asyncio.run(on_the_loop())
    raised = []
    try:
        for _ in range(sends):
            with pytest.raises(DeliveryError) as refused:
                destination.deliver(sms)
            raised.append(refused.value)
    finally:
        destination.close()
    return raised


@pytest.mark.parametrize("engine_loop", [True, False], ids=["async", "blocking"])
@pytest.mark.parametrize("code", [20429, None])
def test_a_429s_retry_after_reaches_the_failure_and_no_later_one(
    server: BackgroundServer, fake: FakeTwilio, engine_loop: bool, code: int | None
) -> None:
    """Twilio's exceptions carry no headers: without the transport handing the response over, a rate-limited
    account is asked again at the policy's first backoff, not when it said. The next refusal (no header) must
    not inherit the wait."""
    fake.fail_next(429, code=code, message="Too Many Requests", retry_after=30)
    fake.fail_next(503, code=20503, message="Service unavailable")
    limited, unavailable = refusals(sms_destination(server, fake), engine_loop, sends=2)
    assert isinstance(limited, RetryableDeliveryError)
    assert (limited.failure.error_class, limited.failure.retry_after) == (f"twilio.{code or 429}", 30)
    assert (unavailable.failure.error_class, unavailable.failure.retry_after) == ("twilio.20503", None)


def test_retry_after_as_an_http_date_is_seconds_from_now() -> None:
    """RFC 9110 allows Retry-After as a date; it is read as the wait until then."""
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=90), usegmt=True)
    error = _as_delivery_error(TwilioRestException(429, "/Messages.json", "Too Many Requests", 20429), later)
    assert error.failure.retry_after is not None and 80 <= error.failure.retry_after <= 90


@pytest.mark.parametrize("engine_loop", [True, False], ids=["async", "blocking"])
def test_from_number_queue_full_21611_is_retried(server: BackgroundServer, fake: FakeTwilio, engine_loop: bool) -> None:
    """21611: the sender number's queue of unsent messages is full. It drains, and the same request then
    succeeds; judged permanent (as an unlisted 400 is), every SMS of a burst beyond the queue would be lost."""
    fake.fail_next(400, code=21611, message="This 'From' number has exceeded the maximum number of queued messages")
    [full] = refusals(sms_destination(server, fake), engine_loop, sends=1)
    assert (type(full), full.failure.error_class) == (RetryableDeliveryError, "twilio.21611")
