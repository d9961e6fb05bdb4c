"""Readiness (/readyz) and the count of refused ingest requests (hub_events_rejected_total)."""

from __future__ import annotations

import pytest
from alembic import command
from prometheus_client.parser import text_string_to_metric_families

from hub.store import _alembic_config
from tests.conftest import WRITE_KEY, RunningHub, message

BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def rejected(running_hub: RunningHub) -> dict[tuple[str, str], float]:
    """hub_events_rejected_total as {(source, reason): value}."""
    answer = running_hub.client.get("/metrics")
    return {
        (sample.labels["source"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name == "hub_events_rejected_total"
    }


def added(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}


@BOTH
def test_readyz_is_ready_on_a_migrated_store(running_hub: RunningHub) -> None:
    answer = running_hub.client.get("/readyz")
    assert (answer.status_code, answer.json()) == (200, {"ready": True})


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_readyz_is_a_503_naming_the_database_when_it_refuses_connections(
    running_hub: RunningHub, postgres, database_url: str
) -> None:
    """Before: the probe's schema check raised and it was an unhandled 500 with a traceback, not a 503."""
    with postgres.refusing_connections(database_url):
        answer = running_hub.client.get("/readyz")
        assert answer.status_code == 503, answer.text
        assert answer.json()["ready"] is False
        reason = answer.json()["reason"]
        assert reason.startswith("database: ") and "not currently accepting connections" in reason
        password = running_hub.hub.store.engine.url.password
        assert not password or password not in answer.text


@BOTH
def test_readyz_is_not_ready_on_a_schema_rolled_back_to_nothing(running_hub: RunningHub) -> None:
    """Before: /readyz only asked whether a table alembic_version existed, and after `alembic downgrade base` (an
    empty alembic_version, no other table) it said ready while every ingest request was a 500."""
    store = running_hub.hub.store
    for worker in running_hub.hub._workers:  # quiet the workers first: the test is about the probe
        worker.stop()
    with store.write() as connection:
        command.downgrade(_alembic_config(connection), "base")
    answer = running_hub.client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"ready": False, "reason": "schema not at this hub's migrations; run touchhub migrate"}


def test_refused_requests_are_counted_by_reason(running_hub: RunningHub) -> None:
    """Before: a wrong write key (401) and a body over HUB_MAX_BODY_BYTES (413) were counted nowhere; only bodies
    the source could not parse and bad items were."""
    before = rejected(running_hub)
    assert running_hub.send(message(userId="u-1", event="x"), write_key="stale-key").status_code == 401
    big = message(userId="u-1", event="x", properties={"pad": "x" * (600 * 1024)})
    assert running_hub.client.post("/v1/track", json=big, auth=(WRITE_KEY, "")).status_code == 413
    assert added(before, rejected(running_hub)) == {("unknown", "auth"): 1, ("unknown", "too_large"): 1}


def test_a_body_the_source_cannot_parse_is_counted_once_under_its_source(running_hub: RunningHub) -> None:
    """The source's own refusal (400, quarantined) is counted by the handler every refusal passes, not also where
    it is quarantined; and a request to an unconfigured webhook source is labelled "unknown", not by its path."""
    before = rejected(running_hub)
    assert running_hub.client.post("/v1/batch", json={"batch": "x"}, auth=(WRITE_KEY, "")).status_code == 400
    assert running_hub.client.post("/v1/webhooks/no-such-source", json={}).status_code == 404
    assert added(before, rejected(running_hub)) == {("default", "bad_payload"): 1, ("unknown", "unknown_source"): 1}
