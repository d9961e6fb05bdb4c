"""Delivery throughput to a provider that answers in ~20 ms, as a ratio against a bare HTTP client.

    .venv/bin/python bench/delivery.py [--deliveries 5000] [--latency-ms 20] [--batch 1000]
                                       [--concurrency 64 128] [--workers 1 2]

The provider is the sandbox webhook receiver, answering every POST after
`--latency-ms`. The baseline, measured in the same run, is a bare client of
the kind the hub sends with (aiohttp on one event loop, `concurrency`
requests in flight): what that concurrency can reach with no hub at all.
Two more references: httpx's AsyncClient the same way, and a sync httpx
client from `concurrency` threads (the engine's previous design). The hub
side is the real delivery path: deliveries planned in the outbox (SQLite),
claimed by `DeliveryEngine` in `--batch` rows, signed by the
`outbound_webhook` destination, sent through its SSRF guard, every attempt
written back, in `--workers` processes. Every delivery must arrive; "retried" counts attempts
that failed (connections dropped under load) and were sent again, which with
at-least-once delivery may reach the provider twice under one webhook-id.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import aiohttp
import httpx

from connectors.destinations.webhook import OutboundWebhookDestination
from connectors.sandbox.webhooks import FakeWebhookReceiver, create_app, new_secret
from hub.clock import utcnow
from hub.delivery import DeliveryEngine
from hub.delivery_policy import DeliveryPolicyFile, PolicyBook
from hub.model import PlannedDelivery, derived_id
from hub.serving import BackgroundServer
from hub.settings import HubSettings
from hub.store import Store, outbox

DESTINATION = "outbound_webhook"


def serve_receiver(latency: float, port: Any, stop: Any) -> None:
    """The provider, in its own process so it never competes with the sender for the GIL."""
    with BackgroundServer(create_app(FakeWebhookReceiver(delay_seconds=latency))) as server:
        port.put(server.port)
        stop.wait()


@contextmanager
def receiver_process(latency: float) -> Iterator[str]:
    """Run `serve_receiver` answering after `latency` seconds; yields its origin (``http://127.0.0.1:port``)."""
    context = multiprocessing.get_context("spawn")
    port, stop = context.Queue(), context.Event()
    provider = context.Process(target=serve_receiver, args=(latency, port, stop))
    provider.start()
    try:
        yield f"http://127.0.0.1:{port.get(timeout=30)}"
    finally:
        stop.set()
        provider.join()


BODY = {"type": "profile.decision", "data": {"message": {"body": "x" * 80}}}


def baseline_threads(url: str, requests: int, concurrency: int) -> float:
    """Sends/s of a bare sync httpx client from `concurrency` threads."""
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)) as client:
        def post(_: int) -> None:
            try:
                client.post(url, json=BODY).raise_for_status()
            except httpx.TransportError:  # a connection the receiver dropped under load: sent again, as the hub would
                client.post(url, json=BODY).raise_for_status()

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, range(requests)))
        return requests / (time.perf_counter() - started)


async def baseline_aiohttp(url: str, requests: int, concurrency: int) -> float:
    """Sends/s of a bare aiohttp session, `concurrency` requests in flight on one event loop."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def post() -> None:
            async with session.post(url, json=BODY) as response:
                response.raise_for_status()
                await response.read()
        return await _bounded_rate(post, requests, concurrency)


async def baseline_httpx_async(url: str, requests: int, concurrency: int) -> float:
    """Sends/s of a bare httpx AsyncClient, `concurrency` requests in flight on one event loop."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def post() -> None:
            (await client.post(url, json=BODY)).raise_for_status()
        return await _bounded_rate(post, requests, concurrency)


async def _bounded_rate(post: Any, requests: int, concurrency: int) -> float:
    in_flight = asyncio.Semaphore(concurrency)

    async def bounded() -> None:
        async with in_flight:
            await post()
    started = time.perf_counter()
    await asyncio.gather(*(bounded() for _ in range(requests)))
    return requests / (time.perf_counter() - started)


def plan(database_url: str, count: int) -> None:
    store = Store(database_url)
    store.migrate()
    now = utcnow()
    rows = [
        PlannedDelivery(
            delivery_id=derived_id("bench", str(n)), decision_id=derived_id("bench-decision", str(n)),
            profile_id=f"P{n:025d}", channel="webhook", destination_id=DESTINATION, target=f"P{n:025d}",
            content={"body": "Still deciding? Here is 10% off.", "template": "bench.j2", "rule_id": "bench", "params": {}},
        )
        for n in range(count)
    ]
    with store.write() as connection:
        outbox.plan(connection, rows, now)
    store.dispose()


def work(settings: dict[str, Any], url: str, secret: str, ready: Any, go: Any) -> None:
    """One worker process: the hub's delivery engine, looping until no delivery is due."""
    hub_settings = HubSettings(_env_file=None, **settings)  # type: ignore[call-arg]
    destination = OutboundWebhookDestination(
        DESTINATION,
        OutboundWebhookDestination.validate_config("bench", {"url": url, "secret": secret, "allowed_networks": ["127.0.0.1"]}),
    )
    engine = DeliveryEngine(
        Store(hub_settings.database_url), {DESTINATION: destination}, PolicyBook(DeliveryPolicyFile(), hub_settings),
        batch_size=hub_settings.delivery_batch_size, lease=timedelta(seconds=60), concurrency=hub_settings.delivery_concurrency,
    )
    ready.wait()
    go.wait()
    while engine.run_once() or _retrying(engine.store):
        pass
    engine.close()


def _retrying(store: Store) -> bool:
    """Deliveries still waiting for a retry: keep the worker alive until they are due and sent."""
    with store.read() as connection:
        return outbox.unfinished(connection, utcnow()) > 0


def run_hub(database_url: str, url: str, secret: str, batch: int, concurrency: int, workers: int) -> tuple[float, int]:
    """Seconds `workers` engine processes take to drain the outbox, and how many attempts failed and were retried."""
    context = multiprocessing.get_context("spawn")
    ready, go = context.Barrier(workers + 1), context.Event()
    # Short retry delays: a rare dropped connection under load must cost a retry, not the default minutes of backoff.
    settings = {"database_url": database_url, "delivery_batch_size": batch, "delivery_concurrency": concurrency,
                "retry_base_delay_seconds": 0.05, "retry_max_delay_seconds": 0.5, "log_level": "WARNING"}
    processes = [context.Process(target=work, args=(settings, url, secret, ready, go)) for _ in range(workers)]
    for process in processes:
        process.start()
    ready.wait()  # every process has imported and built its engine: spawn cost is not measured
    started = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started
    store = Store(database_url)
    with store.read() as connection:
        left = outbox.unfinished(connection, utcnow())
        retried = connection.exec_driver_sql("SELECT count(*) FROM attempts WHERE outcome != 'sent'").scalar_one()
    store.dispose()
    if left:
        raise SystemExit(f"{left} deliveries were not sent")
    return elapsed, retried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--batch", type=int, default=1000, help="rows an engine claims at once (HUB_DELIVERY_BATCH_SIZE)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 128], help="sends in flight per process")
    parser.add_argument("--baseline-requests", type=int, default=3000, help="requests each bare client sends")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="engine processes")
    args = parser.parse_args()

    with receiver_process(args.latency_ms / 1000) as origin:
        url, secret = f"{origin}/hooks/bench", new_secret()
        print(f"{args.deliveries} deliveries, provider latency {args.latency_ms:g} ms, claim batch {args.batch}")
        print(f"{'concurrency':>11} {'workers':>7} {'aiohttp/s':>9} {'httpx async/s':>13} {'threads/s':>9} "
              f"{'hub/s':>8} {'ratio':>6} {'in flight':>9} {'retried':>7}")
        for concurrency in args.concurrency:
            requests = args.baseline_requests
            base = asyncio.run(baseline_aiohttp(url, requests, concurrency))
            # httpx's async pool is slow enough at this concurrency that fewer requests make the same point.
            httpx_async = asyncio.run(baseline_httpx_async(url, max(requests // 4, concurrency), concurrency))
            threads = baseline_threads(url, requests, concurrency)
            for workers in args.workers:
                with tempfile.TemporaryDirectory() as folder:
                    database_url = f"sqlite:///{folder}/bench.db"
                    plan(database_url, args.deliveries)
                    httpx.post(f"{origin}/_sandbox/reset").raise_for_status()
                    elapsed, retried = run_hub(database_url, url, secret, args.batch, concurrency, workers)
                    summary = httpx.get(f"{origin}/_sandbox/summary").json()
                assert summary["distinct_ids"] == args.deliveries, f"not every delivery arrived: {summary}"
                rate = args.deliveries / elapsed
                print(f"{concurrency:>11} {workers:>7} {base:>9.0f} {httpx_async:>13.0f} {threads:>9.0f} {rate:>8.0f} {rate / base:>6.2f} "
                      f"{summary['max_in_flight']:>9} {retried:>7}", flush=True)


if __name__ == "__main__":
    main()
