"""Real SDKs -> hub -> identity -> trigger -> real twilio client -> fake Twilio."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from tests.conftest import WRITE_KEY, RunningHub


def test_segment_sdk_journey_ends_in_one_sms(running_hub: RunningHub) -> None:
    now = datetime.now(timezone.utc)
    errors: list[Exception] = []
    sdk = SegmentClient(WRITE_KEY, host=running_hub.url, sync_mode=True, on_error=lambda e, _b: errors.append(e))
    sdk.page(anonymous_id="anon-42", name="Pricing", timestamp=now - timedelta(days=3, hours=1))
    sdk.identify("user-42", {"email": " Jane@Example.COM", "phone": "(415) 555-0142", "first_name": "Jane"},
                 anonymous_id="anon-42", timestamp=now - timedelta(days=3))
    sdk.track("user-42", "Order Completed", {"order_id": "o-1", "total": 42.5}, timestamp=now - timedelta(days=2))
    sdk.track("user-42", "Ticket Submitted", {"ticket_id": "t-1"}, timestamp=now)
    sdk.flush()
    assert errors == []
    running_hub.settle()

    profile = running_hub.admin("/api/profiles/lookup", type="email", value="jane@example.com")
    assert profile["identifiers"] == {
        "anonymous_id": ["anon-42"], "email": ["jane@example.com"], "phone": ["+14155550142"], "user_id": ["user-42"],
    }
    assert profile["traits"]["first_name"] == "Jane"

    touchpoints = running_hub.admin("/api/touchpoints", profile_id=profile["profile_id"])["touchpoints"]
    assert [t["event"] for t in touchpoints] == ["Ticket Submitted", "Order Completed", "identify", "page"]
    assert {t["stage"] for t in touchpoints} == {"retention", "decision", "consideration", "awareness"}

    [sms] = running_hub.sandbox.twilio.messages
    assert sms["to"] == "+14155550142"
    assert sms["from"] == running_hub.hub.settings.twilio_from_number
    assert sms["body"].startswith("Hi Jane,") and "https://help.example.com/orders" in sms["body"]

    [delivery] = running_hub.admin("/api/deliveries", profile_id=profile["profile_id"], channel="sms")["deliveries"]
    assert delivery["status"] == "sent" and delivery["channel"] == "sms"
    assert delivery["provider_message_id"] == sms["sid"]
    assert delivery["target"] == "+1******0142"
    [attempt] = delivery["attempt_log"]
    assert attempt["outcome"] == "sent" and attempt["request_summary"]["to"] == "+1******0142"


def test_rudderstack_sdk_gzipped_batches_are_accepted(running_hub: RunningHub) -> None:
    errors: list[Exception] = []
    sdk = RudderClient(WRITE_KEY, host=running_hub.url, sync_mode=True, on_error=lambda e, _b: errors.append(e))
    sdk.identify("rs-user", {"email": "rs@example.com"})
    sdk.track("rs-user", "Product Viewed", {"product_id": "p-9"})
    sdk.alias(previous_id="rs-anon", user_id="rs-user")
    sdk.flush()
    assert errors == []
    running_hub.settle()
    events = sorted(t["event"] for t in running_hub.admin("/api/touchpoints", source="default")["touchpoints"])
    assert events == ["Product Viewed", "alias", "identify"]
