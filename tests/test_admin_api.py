"""Admin API contract: limits, filters, newest-first order, health and metrics."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_TOKEN, RunningHub, message, support_ticket

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_touchpoints_are_newest_first_filterable_and_limited(running_hub: RunningHub) -> None:
    for n in range(3):
        running_hub.send(message(userId=f"u-{n}", event="Product Viewed" if n < 2 else "Signed Up"))
    running_hub.settle()
    everything = running_hub.admin("/api/touchpoints")["touchpoints"]
    assert [t["identifiers"] for t in everything] == [[["user_id", "u-2"]], [["user_id", "u-1"]], [["user_id", "u-0"]]]
    assert len(running_hub.admin("/api/touchpoints", limit=2)["touchpoints"]) == 2
    assert {t["event"] for t in running_hub.admin("/api/touchpoints", event="Product Viewed")["touchpoints"]} == {"Product Viewed"}
    assert running_hub.admin("/api/touchpoints", source="elsewhere")["touchpoints"] == []
    assert running_hub.admin("/api/touchpoints", profile_id="no-such-profile")["touchpoints"] == []


def test_limit_above_1000_is_refused_naming_the_parameter(running_hub: RunningHub) -> None:
    answer = running_hub.client.get("/api/touchpoints", params={"limit": 1001}, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "limit"]


def test_lookup_normalizes_the_value_and_explains_misses(running_hub: RunningHub) -> None:
    running_hub.send(message("identify", userId="u-1", traits={"email": "ana@example.com"}))
    running_hub.settle()
    assert running_hub.admin("/api/profiles/lookup", type="email", value="  ANA@example.com")["identifiers"]["user_id"] == ["u-1"]
    missing = running_hub.client.get("/api/profiles/lookup", params={"type": "email", "value": "x@example.com"}, headers=AUTH)
    assert (missing.status_code, missing.json()["detail"]) == (404, "no profile has email 'x@example.com'")
    junk = running_hub.client.get("/api/profiles/lookup", params={"type": "user_id", "value": "null"}, headers=AUTH)
    assert (junk.status_code, junk.json()["detail"]) == (400, "value: 'null' is not a usable user_id identifier")


def test_deliveries_filter_by_status(running_hub: RunningHub) -> None:
    running_hub.send(*support_ticket("u-d", {"phone": "+14155550177"}))
    running_hub.settle()
    assert {d["channel"] for d in running_hub.admin("/api/deliveries", status="sent")["deliveries"]} == {"sms", "crm"}
    assert running_hub.admin("/api/deliveries", status="dead")["deliveries"] == []


def test_health_readiness_and_metrics(running_hub: RunningHub) -> None:
    running_hub.send(message(userId="u-m", event="Product Viewed"))
    running_hub.settle()
    assert running_hub.client.get("/healthz").text == "ok"
    assert running_hub.client.get("/readyz").json() == {"ready": True}
    metrics = running_hub.client.get("/metrics").text
    assert 'hub_events_accepted_total{source="default"}' in metrics
    assert "hub_touchpoints_processed_total" in metrics


@pytest.mark.hub_settings(max_body_bytes=1024)
def test_an_admin_body_sent_in_chunks_past_max_body_bytes_is_413(running_hub: RunningHub) -> None:
    """FastAPI read admin bodies whole, with no limit, before the token was even checked; a chunked body has no
    Content-Length to refuse it by, so it is counted as it comes."""
    chunks = (b'{"merged_profile_id": "' + b"x" * 512 if n == 0 else b"x" * 512 for n in range(8))
    answer = running_hub.client.post("/api/profiles/p-1/unmerge", content=chunks, headers=AUTH)
    assert answer.status_code == 413, answer.text
    assert "larger than the 1024-byte limit" in answer.json()["detail"]


def test_a_bad_admin_body_with_a_good_token_is_422_naming_the_field(running_hub: RunningHub) -> None:
    answer = running_hub.client.post("/api/profiles/p-1/unmerge", json={"merged_profile_id": ""}, headers=AUTH)
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert (problem["loc"], problem["type"]) == (["body", "merged_profile_id"], "string_too_short")
