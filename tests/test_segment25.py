"""Segment messages the spec allows, or refuses, at ingest (twenty-fifth session's ingest and contract audits)."""

from __future__ import annotations

from tests.conftest import WRITE_KEY, RunningHub, message

GOOD = {"type": "track", "userId": "u-good", "event": "Product Viewed", "properties": {"sku": "p-1"}}


def test_a_track_event_that_is_not_text_is_refused_at_ingest_naming_event(running_hub: RunningHub) -> None:
    """`"event": 42` passed ingest's check (any non-blank text or integer), got a 200, and was quarantined by the
    pipeline: the sender was told it was kept. It is refused at once, naming `event`; the message beside it is
    kept. (A name longer than the hub keeps is the mapping's to judge: it trims it, and a value map may shorten
    it.)"""
    answer = running_hub.send(message(**GOOD, messageId="m-ok"), message(userId="u-good", event=42, messageId="m-number"))
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert [(problem["index"], problem["field"], problem["reason"]) for problem in answer.json()["rejected"]] == [
        (1, "event", "must be text, the event's name (got int)"),
    ]
    running_hub.settle()
    assert [row["stage"] for row in running_hub.admin("/api/quarantine")["quarantine"]] == ["item"]


def test_time_fields_sent_as_null_are_taken_as_absent_not_refused(running_hub: RunningHub) -> None:
    """`"timestamp": null` (or `originalTimestamp`, a message's `sentAt`) refused the message ("None is not an
    ISO-8601 timestamp"), and a batch's `"sentAt": null` the whole batch (400), where a null `properties`,
    `traits` or `context` is taken as absent, as SDKs that write every unset field send them."""
    single = running_hub.send(message(**GOOD, messageId="m-ts-null", timestamp=None, originalTimestamp=None, sentAt=None))
    batch = running_hub.client.post(
        "/v1/batch", json={"batch": [message(**GOOD, messageId="m-batch-sent-null")], "sentAt": None}, auth=(WRITE_KEY, ""),
    )
    assert [single.status_code, batch.status_code] == [200, 200], [single.text, batch.text]
    assert single.json()["accepted"] == 1 and batch.json()["accepted"] == 1
    running_hub.settle()
    assert running_hub.admin("/api/quarantine")["quarantine"] == []
    assert len(running_hub.admin("/api/touchpoints")["touchpoints"]) == 2
