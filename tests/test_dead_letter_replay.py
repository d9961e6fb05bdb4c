"""The dead-letter queue: exhausted deliveries go dead, are found in the log, and replay with a fresh budget."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hub.store.schema import deliveries
from tests.conftest import ADMIN_TOKEN, RunningHub, support_ticket

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
NOW = datetime.now(timezone.utc)
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def trigger_sms(running_hub: RunningHub, user: str, phone: str) -> None:
    running_hub.send(*support_ticket(user, {"phone": phone}, NOW))
    running_hub.settle()


def cli_env(running_hub: RunningHub) -> dict[str, str]:
    return {"COLUMNS": "200", "PATH": "", "HUB_DATABASE_URL": running_hub.hub.settings.database_url}


def touchhub(running_hub: RunningHub, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOUCHHUB, "deliveries", *args], capture_output=True, text=True, timeout=60, env=cli_env(running_hub))


def explained(running_hub: RunningHub, decision_id: str) -> list[str]:
    """`touchhub decisions explain`'s lines, without the tree's drawing."""
    result = subprocess.run([TOUCHHUB, "decisions", "explain", decision_id], capture_output=True, text=True,
                            timeout=60, env=cli_env(running_hub))
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.strip(" │├└─") for line in result.stdout.splitlines()]


@pytest.mark.hub_settings(delivery_max_attempts=2)
def test_dead_delivery_replayed_over_the_api_is_sent_with_a_fresh_budget(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="down", times=2)
    trigger_sms(running_hub, "u-dead", "+14155550190")
    [dead] = running_hub.admin("/api/deliveries", status="dead")["deliveries"]
    assert [a["outcome"] for a in dead["attempt_log"]] == ["retryable", "retryable"]

    answer = running_hub.client.post(f"/api/deliveries/{dead['delivery_id']}/replay", headers=AUTH)
    assert answer.status_code == 200
    assert answer.json() == {"delivery_id": dead["delivery_id"], "previous_status": "dead", "status": "pending"}
    running_hub.settle()
    [sent] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    assert sent["status"] == "sent"
    assert [(a["attempt_no"], a["outcome"]) for a in sent["attempt_log"]] == [(1, "retryable"), (2, "retryable"), (3, "sent")]
    assert running_hub.sandbox.twilio.message_count == 1
    assert sent["replayed"]["after_attempt"] == 2  # the log tells the replay's attempts from the first run's
    lines = explained(running_hub, sent["decision_id"])
    replayed = next(n for n, line in enumerate(lines) if line.startswith("replayed at "))
    assert lines[replayed - 1].startswith("attempt 2 at ") and lines[replayed + 1].startswith("attempt 3 at ")

    again = running_hub.client.post(f"/api/deliveries/{dead['delivery_id']}/replay", headers=AUTH)
    assert again.status_code == 409 and "is sent" in again.json()["detail"]
    assert running_hub.client.post("/api/deliveries/nope/replay", headers=AUTH).status_code == 404
    assert running_hub.client.post(f"/api/deliveries/{dead['delivery_id']}/replay").status_code == 401


def replay_past_its_send_by_time(running_hub: RunningHub) -> dict:
    """An SMS that went dead in an outage, replayed as if the outage had lasted two days: the delivery after."""
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="down", times=1)
    trigger_sms(running_hub, "u-late", "+14155550191")
    [dead] = running_hub.admin("/api/deliveries", status="dead")["deliveries"]
    with running_hub.hub.store.write() as connection:  # as if the outage had lasted two days
        row = deliveries.c.delivery_id == dead["delivery_id"]
        content = connection.execute(select(deliveries.c.content).where(row)).scalar_one()
        content["send_by"] = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
        connection.execute(update(deliveries).where(row).values(content=content))
    assert running_hub.client.post(f"/api/deliveries/{dead['delivery_id']}/replay", headers=AUTH).status_code == 200
    running_hub.settle()
    [failed] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    return failed


@pytest.mark.hub_settings(delivery_max_attempts=1)
def test_a_dead_message_replayed_past_its_send_by_time_fails_unsent(running_hub: RunningHub) -> None:
    """A dead letter replayed days after a provider outage would message the person about the past: the
    delivery engine withdraws a message past HUB_MESSAGE_MAX_AGE_HOURS after it was due, and says so."""
    failed = replay_past_its_send_by_time(running_hub)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["last_error"] == "not sent: too old to send, past HUB_MESSAGE_MAX_AGE_HOURS after it was due"
    assert running_hub.sandbox.twilio.message_count == 0


@pytest.mark.hub_settings(delivery_max_attempts=1)
def test_decisions_explain_says_a_replay_was_withdrawn_not_that_it_waits(running_hub: RunningHub) -> None:
    """The CLI said "replayed at ...; no attempt since yet" of a replay already settled as failed, and not why."""
    failed = replay_past_its_send_by_time(running_hub)
    lines = explained(running_hub, failed["decision_id"])
    head = lines.index(f"sms to {failed['target']} via twilio_sms: failed")
    replay, why = lines[head + 2:head + 4]  # after the attempt before the replay
    assert replay.startswith("replayed at ") and replay.endswith("; no attempt since")
    assert why == "not sent: too old to send, past HUB_MESSAGE_MAX_AGE_HOURS after it was due"


@pytest.mark.hub_settings(delivery_max_attempts=1)
def test_cli_lists_the_dlq_and_replays_all_of_one_destination(running_hub: RunningHub) -> None:
    running_hub.sandbox.twilio.fail_next(503, code=20500, message="down", times=2)
    trigger_sms(running_hub, "u-a", "+14155550191")
    trigger_sms(running_hub, "u-b", "+14155550192")
    assert len(running_hub.admin("/api/deliveries", status="dead")["deliveries"]) == 2

    listed = touchhub(running_hub, "list", "--status", "dead")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("twilio_sms") == 2 and "Twilio 503 error 20500" in listed.stdout
    assert "+14155550191" not in listed.stdout and "+1******0191" in listed.stdout

    nothing = touchhub(running_hub, "replay", "--all", "--destination", "email_smtp")
    assert nothing.returncode == 0 and "0 dead deliveries queued again" in nothing.stdout
    replayed = touchhub(running_hub, "replay", "--all", "--destination", "twilio_sms")
    assert replayed.returncode == 0, replayed.stderr
    assert "2 dead deliveries queued again" in replayed.stdout
    running_hub.settle()
    assert {d["status"] for d in running_hub.admin("/api/deliveries")["deliveries"]} == {"sent"}
    assert running_hub.sandbox.twilio.message_count == 2

    assert touchhub(running_hub, "replay").returncode == 2  # neither an id nor --all
    sent_id = running_hub.admin("/api/deliveries", channel="sms")["deliveries"][0]["delivery_id"]
    refused = touchhub(running_hub, "replay", sent_id)
    assert refused.returncode == 1 and "only dead or failed" in refused.stderr


def test_delivery_log_filters_by_destination_channel_and_time(running_hub: RunningHub) -> None:
    trigger_sms(running_hub, "u-f", "+14155550193")
    [delivery] = running_hub.admin("/api/deliveries", channel="sms")["deliveries"]
    planned = datetime.fromisoformat(delivery["created_at"])
    assert running_hub.admin("/api/deliveries", destination="twilio_sms", channel="sms")["deliveries"] == [delivery]
    assert running_hub.admin("/api/deliveries", destination="email_smtp")["deliveries"] == []
    window = {"since": (planned - timedelta(seconds=1)).isoformat(), "until": (planned + timedelta(seconds=1)).isoformat()}
    assert delivery in running_hub.admin("/api/deliveries", **window)["deliveries"]
    assert running_hub.admin("/api/deliveries", since=(planned + timedelta(seconds=1)).isoformat())["deliveries"] == []
    naive_until = (planned - timedelta(seconds=1)).replace(tzinfo=None).isoformat()  # read as UTC
    assert running_hub.admin("/api/deliveries", until=naive_until)["deliveries"] == []
    bad = running_hub.client.get("/api/deliveries", params={"since": "yesterday"}, headers=AUTH)
    assert bad.status_code == 422 and "since" in bad.text


def test_replay_all_counts_as_queued_only_what_went_back_and_says_why_the_rest_did_not() -> None:
    """`replay --all` printed every dead delivery as queued again, those refused (an address that bounced, a
    forgotten person) included."""
    from collections import Counter

    from hub.cli_deliveries import _replay_summary
    from hub.cli_support import console
    from hub.store import delivery_replay

    with console.capture() as captured:
        _replay_summary(Counter({"dead": 2, delivery_replay.ADDRESS_GONE: 1}))
    shown = captured.get()
    assert "2 dead deliveries queued again." in shown
    assert "Not replayed" in shown and "no longer the person's" in shown
