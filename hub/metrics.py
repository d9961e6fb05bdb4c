"""Prometheus metrics, served at /metrics.

Counters and the circuit gauge live in the memory of the process that
changes them. What the store holds (inbox backlog, outbox by status, timers)
is read from the store at each scrape by `exposition`, so it is the same
whichever process or node is scraped. A `touchhub worker` serves them too
when HUB_METRICS_PORT is set (`metrics_app`): its counters and circuit gauges
are in its own memory, seen by no other process's /metrics.

A store that cannot be read leaves its gauges out of the scrape, and
`hub_store_up` says so, rather than failing the scrape: during a database
outage the counters (events refused as store_unavailable) are what the alert
on it reads.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Connection, Table, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.clock import utcnow
from hub.store import Store, inbox, outbox, timers
from hub.store.schema import deliveries
from hub.store.schema import inbox as inbox_table
from hub.store.schema import timers as timers_table

EVENTS_ACCEPTED = Counter("hub_events_accepted_total", "Events committed to the inbox.", ["source"])
EVENTS_REJECTED = Counter(
    "hub_events_rejected_total",
    "Requests and items refused at ingest and provider callbacks, by reason (auth, forbidden, unknown_source, "
    "too_large, unsupported_encoding, bad_payload, bad_request, bad_item, store_unavailable); source is the "
    "configured source, or for a callback the configured destination, the request names, else unknown.",
    ["source", "reason"],
)
TOUCHPOINTS_PROCESSED = Counter("hub_touchpoints_processed_total", "Inbox rows turned into touchpoints.")
DECISIONS = Counter("hub_decisions_total", "Trigger decisions made.", ["rule"])
DELIVERY_ATTEMPTS = Counter("hub_delivery_attempts_total", "Calls to destinations by outcome.", ["channel", "outcome"])
DELIVERIES_HELD_BACK = Counter(
    "hub_deliveries_held_back_total",
    "Deliveries not sent to the destination, by reason: put back in the outbox for later (circuit_open, rate_limit, "
    "in_flight_limit, not_configured, provider_asked_wait: the destination's Retry-After holds back every delivery to "
    "it, for an hour at most), or parked in the dead-letter queue without a call (destination_gone: it answered an "
    "earlier delivery 410 Gone; not_configured past the max age); counted by the process that held them back.",
    ["destination", "reason"],
)
CIRCUIT_OPEN = Gauge(
    "hub_circuit_open",
    "1 while this process's circuit breaker for the destination is open or probing, 0 when closed. Each process "
    "keeps its own breaker: scrape every process that delivers.",
    ["destination"],
)
TIMERS_SETTLED = Counter(
    "hub_timers_settled_total",
    "Absence timers the timer worker settled when they came due, by outcome (fired, cancelled, superseded, lapsed, "
    "failed); the reasons are on the timer rows. Waits the pipeline ends as events come in are counted in /api/stats.",
    ["rule", "outcome"],
)


def exposition(store: Store) -> bytes:
    """This process's metrics, then the store's gauges read now. The store's go through a registry built for the
    one scrape: several hubs in one process (the tests start many) would collide in the global one."""
    registry = CollectorRegistry()
    registry.register(_StoreGauges(store))
    return generate_latest(REGISTRY) + generate_latest(registry)


async def metrics_response(store: Store) -> Response:
    """The answer to a scrape; the store's gauges are read off the event loop."""
    return Response(await run_in_threadpool(exposition, store), media_type=CONTENT_TYPE_LATEST)


def metrics_app(store: Store) -> Starlette:
    """/metrics alone, as `touchhub serve` answers it, for a process with no HTTP API of its own (`touchhub
    worker`): prometheus_client's own server would serve this process's counters without the store's gauges."""

    async def metrics(_request: Request) -> Response:
        return await metrics_response(store)

    return Starlette(routes=[Route("/metrics", metrics)])


class _StoreGauges:
    """Gauges of what the store holds, read in one read transaction per scrape, and whether it could be read."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            with self.store.read() as connection:
                gauges = [*_inbox_gauges(connection), _outbox_gauge(connection), *_timer_gauges(connection)]
        except SQLAlchemyError:  # the database down or refusing connections: /readyz says why
            gauges = []
        yield GaugeMetricFamily(
            "hub_store_up",
            "1 when the store could be read at this scrape, 0 when it could not (a database outage; /readyz says why): "
            "the store's gauges (hub_inbox_*, hub_outbox_unsent, hub_timers_*) are then left out.",
            value=1 if gauges else 0,
        )
        yield from gauges


def _inbox_gauges(connection: Connection) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "hub_inbox_pending", "Events accepted and waiting for the pipeline.", value=_count(connection, inbox_table, "pending"),
    )
    oldest = inbox.oldest_waiting(connection)
    yield GaugeMetricFamily(
        "hub_inbox_oldest_pending_age_seconds",
        "Seconds since the oldest event the pipeline has not processed was received (0: caught up).",
        value=(utcnow() - oldest).total_seconds() if oldest else 0.0,
    )


def _outbox_gauge(connection: Connection) -> Metric:
    """Only what is still to send and the dead letters: sent, delivered and failed rows grow for ever, and a scrape
    every 15 s must not count them (the attempt counters do); these statuses are a range of the due index."""
    gauge = GaugeMetricFamily(
        "hub_outbox_unsent",
        "Deliveries not sent, by destination, channel and status: pending and retrying wait to go, dead ones wait in "
        "the dead-letter queue for a replay.",
        labels=["destination", "channel", "status"],
    )
    query = (
        select(deliveries.c.destination_id, deliveries.c.channel, deliveries.c.status, func.count())
        .where(deliveries.c.status.in_(outbox.UNSENT_STATUSES))
        .group_by(deliveries.c.destination_id, deliveries.c.channel, deliveries.c.status)
    )
    for destination, channel, status, count in connection.execute(query):
        gauge.add_metric([destination, channel, status], count)
    return gauge


def _timer_gauges(connection: Connection) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "hub_timers_pending", "Absence timers armed and not yet settled.", value=_count(connection, timers_table, "pending"),
    )
    yield GaugeMetricFamily(
        "hub_timers_overdue",
        "Pending absence timers already due: the timer worker is behind (or waiting for the pipeline) when it stays up.",
        value=timers.pending_due(connection, utcnow()),
    )


def _count(connection: Connection, table: Table, status: str) -> int:
    """Rows of one status: a range of the table's (status, ...) index, not a count of every row ever stored."""
    return connection.execute(select(func.count()).select_from(table).where(table.c.status == status)).scalar_one()
