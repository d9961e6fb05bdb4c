"""Delivery retries with the real twilio client against the fake: transient errors retry, permanent ones do not."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from connectors.destinations.twilio_sms import TwilioSmsDestination
from connectors.sandbox.twilio import SANDBOX_ACCOUNT_SID
from hub.errors import RetryableDeliveryError
from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.model import Delivery, PlannedDelivery
from hub.runtime import Hub
from hub.serving import bind_socket, socket_url
from hub.store import outbox
from hub.store.schema import deliveries
from tests.conftest import RunningHub, make_settings, support_ticket

NOW = datetime.now(timezone.utc)


def trigger_sms(running_hub: RunningHub, phone: str = "+14155550100") -> dict:
    running_hub.send(*support_ticket("u-r", {"phone": phone}, NOW))
    running_hub.settle()
    [delivery] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    return delivery


def test_two_503s_then_success_is_one_delivery_with_three_attempts(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="Service unavailable", times=2)
    delivery = trigger_sms(running_hub)
    assert delivery["status"] == "sent"
    assert [a["outcome"] for a in delivery["attempt_log"]] == ["retryable", "retryable", "sent"]
    assert delivery["attempt_log"][0]["error_class"] == "twilio.20500"
    assert all(a["duration_ms"] >= 0 for a in delivery["attempt_log"])
    assert delivery["attempt_log"][2]["provider_message_id"] == running_hub.sandbox.twilio.messages[0]["sid"]
    assert running_hub.sandbox.twilio.message_count == 1
    assert len(running_hub.sandbox.twilio.requests) == 3


def test_invalid_number_21211_is_permanent_and_not_retried(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.fail_next(400, code=21211, message="The 'To' number +14155550100 is not valid.")
    delivery = trigger_sms(running_hub)
    assert delivery["status"] == "failed"
    [attempt] = delivery["attempt_log"]
    assert (attempt["outcome"], attempt["error_class"]) == ("permanent", "twilio.21211")
    assert "+14155550100" not in attempt["error_message"]  # masked in the delivery log
    assert len(running_hub.sandbox.twilio.requests) == 1


@pytest.mark.hub_settings(delivery_max_attempts=3)
def test_retries_stop_at_max_attempts_and_the_delivery_is_dead(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="down", times=10)
    delivery = trigger_sms(running_hub)
    assert delivery["status"] == "dead"
    assert len(delivery["attempt_log"]) == 3


@pytest.mark.hub_settings(twilio_auth_token="wrong-token")
def test_refused_credentials_park_the_delivery_without_retrying(running_hub: RunningHub) -> None:
    delivery = trigger_sms(running_hub)
    assert delivery["status"] == "dead"
    [attempt] = delivery["attempt_log"]
    assert (attempt["outcome"], attempt["error_class"]) == ("auth", "twilio.20003")


def test_rate_limited_20429_is_retried_until_sent(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.fail_next(429, code=20429, message="Too Many Requests", retry_after=0)
    delivery = trigger_sms(running_hub)
    assert [(a["outcome"], a["error_class"]) for a in delivery["attempt_log"]] == [
        ("retryable", "twilio.20429"), ("sent", None),
    ]


def test_landline_21614_is_permanent(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.fail_next(400, code=21614, message="'To' number is not a valid mobile number")
    delivery = trigger_sms(running_hub)
    assert (delivery["status"], delivery["attempt_log"][0]["error_class"]) == ("failed", "twilio.21614")


def test_a_twilio_that_never_answers_times_out_as_retryable() -> None:
    with bind_socket() as silent:
        silent.listen(1)  # accepts the connection, never answers
        config = TwilioSmsDestination.validate_config("test", {
            "account_sid": SANDBOX_ACCOUNT_SID, "auth_token": "t", "from_number": "+15005550006",
            "api_base_url": socket_url(silent), "timeout_seconds": 0.2,
        })
        destination = TwilioSmsDestination("twilio_sms", config)
        sms = Delivery("d-1", "twilio_sms", "sms", "+14155550100", {"body": "Hi"}, 0, NOW)
        with pytest.raises(RetryableDeliveryError) as timed_out:
            destination.deliver(sms)
        destination.close()
    assert timed_out.value.failure.error_class == "network.ReadTimeout"


def test_the_retry_age_runs_from_when_a_delivery_was_due_not_from_when_it_was_planned(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Both were planned two days ago, with a 24 h retry age. The one held by `delay: 2d` is due now: a 503 on
    its first attempt is retried, where it used to go straight to the dead-letter queue. The one due then is
    past its age, and is not."""
    hub = Hub(make_settings(tmp_path, **sandbox.settings_overrides()))
    planned_at = utcnow() - timedelta(days=2)
    with hub.store.write() as connection:
        outbox.plan(connection, [
            PlannedDelivery("delayed", "decision", "profile", "sms", "twilio_sms", "+14155550100", {"body": "Hi"},
                            not_before=utcnow()),
            PlannedDelivery("overdue", "decision", "profile", "sms", "twilio_sms", "+14155550101", {"body": "Hi"}),
        ], planned_at)
    sandbox.twilio.fail_next(503, code=20500, message="Service unavailable", times=2)
    try:
        for _ in range(100):  # the sends run beside the worker's loop
            if len(sandbox.twilio.requests) == 2:
                break
            hub.delivery.run_once()
        hub.delivery.close()
        with hub.store.read() as connection:
            statuses = dict(connection.execute(deliveries.select().with_only_columns(deliveries.c.delivery_id, deliveries.c.status)).all())
    finally:
        hub.store.dispose()
    assert statuses == {"delayed": "retrying", "overdue": "dead"}

