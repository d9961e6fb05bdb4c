"""Five suspicions an audit left unproven, proven and fixed: a template's failure quoting a trait into the decision
log, `localtime` taken as a person's zone, RFC 3339's lower-case and leap-second times at Segment ingest, a replay
of a message to a person who opted out since, and FCM pushes with no collapse key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.destinations.fcm_push import FcmPushDestination
from connectors.sandbox.providers import SandboxProviders
from connectors.sandbox.fcm import FakeFcm, create_app
from hub.serving import BackgroundServer
from tests.conftest import RunningHub, hub_with_source, message, vendor_fake_fixtures
from tests.test_dead_letter_replay import AUTH, touchhub, trigger_sms
from tests.test_fcm_push import CONTENT, PHONE, TABLET, delivery, destination, key_file
from tests.test_templates18 import support_decision_explained
from tests.test_webhook_sources22 import SECRET, post_signed

# --- 1. a template's failure quoting a trait ---------------------------------------------------------------------------

@pytest.mark.parametrize(("sms_template", "reason"), [
    ("Hi\n{{ profile.email | filesizeformat }}",
     "post_purchase_support.sms.j2:2: ValueError: could not convert string to float: '***@example.com'"),
    ('{% set codes = {"gold": "G-10"} %}Your code: {{ codes[profile.phone] }}',
     "'dict object' has no attribute '+1******0100'"),
])
def test_a_template_failing_on_a_trait_records_it_masked_in_the_decision_log(
    tmp_path: Path, sms_template: str, reason: str
) -> None:
    """A template that failed on a trait's value (a filter that reads it as a number, a phone used as a key) had
    Jinja's message quote the value, and the decision log (GET /api/decisions/{id}, `touchhub decisions explain`)
    kept the person's email or phone whole."""
    explained = support_decision_explained(tmp_path, sms_template)
    [sms] = [action for action in explained["actions"] if action["channel"] == "sms"]
    assert (sms["fate"], sms["reason"]) == ("skipped", f"template post_purchase_support.sms.j2: {reason}")


# --- 2. names zoneinfo loads that are no place's zone: among tests/test_quiet_zones22.py's `junk` -----------------


# --- 3. RFC 3339's lower-case letters and leap second at Segment ingest ------------------------------------------

def test_segment_ingest_takes_rfc_3339_times_with_lower_case_letters_and_a_leap_second(running_hub: RunningHub) -> None:
    """RFC 3339 allows `t` and `z` in lower case and a second 60; the Segment API rejected each such message as
    "is not an ISO-8601 timestamp". A leap second is taken as the instant before the next second, on its own day."""
    answer = running_hub.send(
        message(userId="u-1", event="Lower Case", timestamp="2026-12-07t10:00:00z"),
        message(userId="u-1", event="Leap Second", timestamp="2016-12-31T23:59:60Z"),
        message(userId="u-1", event="Leap Second East", originalTimestamp="2017-01-01T00:59:60+01:00"),
    )
    assert answer.status_code == 200
    assert (answer.json()["accepted"], answer.json()["rejected"]) == (3, [])
    running_hub.settle()
    listed = running_hub.admin("/api/touchpoints", limit=10)["touchpoints"]
    assert {touchpoint["event"]: touchpoint["occurred_at"] for touchpoint in listed} == {
        "Lower Case": "2026-12-07T10:00:00Z",
        "Leap Second": "2016-12-31T23:59:59.999999Z",
        "Leap Second East": "2016-12-31T23:59:59.999999Z",
    }
    assert running_hub.admin("/api/quarantine")["quarantine"] == []


# A generic HMAC source taking one event a request, signed as `post_signed` signs.
FORMS = "{id: forms, connector: generic_hmac, secrets: {secret: HUB_SRC_FORMS_SECRET}}"


def test_a_webhook_sources_rfc_3339_time_is_read_not_quarantined(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generic source's events were acknowledged, then quarantined by the pipeline ("occurred_at ... is not an
    ISO-8601 timestamp"): it read times with `fromisoformat`, which takes neither a lower-case `z` nor a second 60."""
    with hub_with_source(tmp_path, mappings_dir, sandbox, monkeypatch, FORMS, {"HUB_SRC_FORMS_SECRET": SECRET}) as hub:
        for event, written in [("Lower Case", "2026-12-07t10:00:00z"), ("Leap Second", "2016-12-31T23:59:60Z")]:
            _, answer = post_signed(hub, "forms", {"event": event, "user_id": "u-1", "timestamp": written})
            assert answer.status_code == 200, answer.text
        hub.settle()
        listed = hub.admin("/api/touchpoints", limit=10)["touchpoints"]
        assert {touchpoint["event"]: touchpoint["occurred_at"] for touchpoint in listed} == {
            "Lower Case": "2026-12-07T10:00:00Z", "Leap Second": "2016-12-31T23:59:59.999999Z",
        }
        assert hub.admin("/api/quarantine")["quarantine"] == []


def test_a_second_60_that_is_no_leap_second_is_still_rejected(running_hub: RunningHub) -> None:
    answer = running_hub.send(message(userId="u-1", event="Noon", timestamp="2016-12-31T12:00:60Z"))
    assert answer.json()["rejected"] == [
        {"index": 0, "field": "timestamp", "reason": "'2016-12-31T12:00:60Z' is not an ISO-8601 timestamp"}
    ]


# --- 4. a replay to a person who opted out since ------------------------------------------------------------------

@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.hub_settings(delivery_max_attempts=1)
def test_a_dead_letter_to_a_person_who_opted_out_since_is_refused_naming_the_opt_out(
    running_hub: RunningHub, database_url: str
) -> None:
    """Two SMS went dead in an outage; then Amy opted out of SMS. Replaying hers answered 200 "replayed" and the
    claim withdrew it as blocked by consent: the operator was told it went. `--all` counted it as queued again."""
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="down", times=2)
    trigger_sms(running_hub, "u-amy", "+14155550191")
    trigger_sms(running_hub, "u-bo", "+14155550192")
    running_hub.send(message("identify", userId="u-amy", traits={"sms_opt_out": True},
                             timestamp="2026-12-07T21:30:00Z"))
    running_hub.settle()
    dead = {d["target"]: d["delivery_id"] for d in running_hub.admin("/api/deliveries", status="dead")["deliveries"]}

    refused = running_hub.client.post(f"/api/deliveries/{dead['+1******0191']}/replay", headers=AUTH)
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"delivery {dead['+1******0191']!r} is to a person who revoked consent to its channel (sms_opt_out set by "
        "an event at 2026-12-07 21:30:00 UTC), and they still have; it is not sent while they do: once they consent "
        "again, it may be replayed"
    )
    replayed = touchhub(running_hub, "replay", "--all", "--destination", "twilio_sms")
    assert replayed.returncode == 0, replayed.stderr
    assert "1 dead deliveries queued again" in replayed.stdout
    assert "its person revoked consent to its channel" in replayed.stdout
    running_hub.settle()
    assert running_hub.sandbox.twilio.message_count == 1
    assert {d["target"]: d["status"] for d in running_hub.admin("/api/deliveries", channel="sms")["deliveries"]} == {
        "+1******0191": "dead", "+1******0192": "sent"
    }


# --- 5. FCM pushes with no collapse key ---------------------------------------------------------------------------

fake, server, fresh = vendor_fake_fixtures("fake", FakeFcm, create_app)


@pytest.fixture
def push(fake: FakeFcm, server: BackgroundServer, tmp_path: Path) -> Iterator[FcmPushDestination]:
    built = destination(server, key_file(tmp_path, fake.service_account_key(f"{server.url}/token")))
    yield built
    built.close()


def test_a_push_sent_again_replaces_the_one_the_device_shows(push: FcmPushDestination, fake: FakeFcm) -> None:
    """A push carried no collapse key: sent again (a retry, a replay) or followed by its rule's next nudge, it
    stacked on the device as a second notification beside the first."""
    push.send(delivery(PHONE, TABLET))
    push.send(delivery(PHONE, content={**CONTENT, "title": "Your cart misses you"}))
    assert fake.shown(PHONE) == [{"title": "Your cart misses you", "body": CONTENT["body"]}]
    assert len(fake.shown(TABLET)) == 1
    sent = fake.messages[-1]["message"]
    assert (sent["android"], sent["apns"]) == (
        {"collapse_key": "cart", "notification": {"tag": "cart"}}, {"headers": {"apns-collapse-id": "cart"}}
    )


def test_an_actions_collapse_key_keeps_its_pushes_apart_from_the_rules_others(
    push: FcmPushDestination, fake: FakeFcm
) -> None:
    push.send(delivery(PHONE))
    push.send(delivery(PHONE, content={**CONTENT, "params": {"collapse_key": "price_drop"}}))
    assert len(fake.shown(PHONE)) == 2
    assert fake.messages[-1]["message"]["apns"] == {"headers": {"apns-collapse-id": "price_drop"}}


@pytest.mark.parametrize(("key", "problem"), [
    (7, "params.collapse_key: must be text naming what a push replaces on the device (e.g. cart_nudge)"),
    ("é" * 33, "params.collapse_key: is 66 bytes; APNs takes at most 64 (apns-collapse-id): shorten it"),
])
def test_a_collapse_key_apns_would_refuse_is_refused_when_the_rules_load(key: object, problem: str) -> None:
    assert FcmPushDestination.check_params({"collapse_key": key}) == [problem]
