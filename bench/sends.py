"""The delivery worker's CPU per webhook attempt, in small batches as a running hub claims them.

    .venv/bin/python bench/sends.py [--deliveries 3000] [--batch 8] [--latency-ms 5] [--empty 2000] [--rounds 3]

`bench/triggers.py` reports the same figure from a running hub (CPU per
attempt on the delivery thread), but there it moves with the box, the
pipeline's commits and the batch sizes they lead to. Here one
`DeliveryEngine` drains `--deliveries` webhooks planned in the outbox
(SQLite), `--batch` at a time (a hub below saturation claims about 7), to
the sandbox receiver in another process, and the figure is this thread's
CPU (`time.thread_time`) per attempt: claim, sign, SSRF guard, send, record.
Also reported: the CPU of a `run_once` that finds nothing due, which about
half a running hub's claims are. Several rounds, each on a fresh outbox,
so their spread shows the noise.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta

from delivery import DESTINATION, plan, receiver_process

from connectors.destinations.webhook import OutboundWebhookDestination
from connectors.sandbox.webhooks import new_secret
from hub.delivery import DeliveryEngine
from hub.delivery_policy import DeliveryPolicyFile, PolicyBook
from hub.settings import HubSettings
from hub.store import Store


def engine_for(database_url: str, url: str, batch: int) -> DeliveryEngine:
    """The hub's delivery engine with one `outbound_webhook` destination (loopback allowlisted)."""
    settings = HubSettings(_env_file=None, database_url=database_url, log_level="WARNING")  # type: ignore[call-arg]
    config = {"url": url, "secret": new_secret(), "allowed_networks": ["127.0.0.1"]}
    destination = OutboundWebhookDestination(DESTINATION, OutboundWebhookDestination.validate_config("bench", config))
    return DeliveryEngine(
        Store(database_url), {DESTINATION: destination}, PolicyBook(DeliveryPolicyFile(), settings),
        batch_size=batch, lease=timedelta(seconds=60), concurrency=settings.delivery_concurrency,
    )


def cpu_ms_per_call(step: object, calls: int) -> float:
    """This thread's CPU per call of `step` until it returns 0 (`calls` < 0) or for `calls` calls."""
    started, done = time.thread_time(), 0
    while calls < 0 or done < calls:
        handled = step()  # type: ignore[operator]
        if calls < 0 and not handled:
            break
        done += handled if calls < 0 else 1
    return (time.thread_time() - started) * 1000 / max(1, done)


def one_round(url: str, deliveries: int, batch: int, empty: int) -> tuple[float, float]:
    """(CPU ms per attempt, CPU ms per empty `run_once`) on a fresh outbox."""
    with tempfile.TemporaryDirectory() as folder:
        database_url = f"sqlite:///{folder}/bench.db"
        plan(database_url, deliveries)
        engine = engine_for(database_url, url, batch)
        try:
            per_attempt = cpu_ms_per_call(engine.run_once, -1)
            per_empty = cpu_ms_per_call(engine.run_once, empty)
        finally:
            engine.close()
            engine.store.dispose()
    return per_attempt, per_empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8, help="deliveries claimed at once")
    parser.add_argument("--latency-ms", type=float, default=5, help="how long the receiver takes to answer")
    parser.add_argument("--empty", type=int, default=2000, help="empty claims timed after each drain")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with receiver_process(args.latency_ms / 1000) as origin:
        print(f"{args.deliveries} webhooks in batches of {args.batch}, receiver latency {args.latency_ms:g} ms")
        for _ in range(args.rounds):
            per_attempt, per_empty = one_round(f"{origin}/hooks/bench", args.deliveries, args.batch, args.empty)
            print(f"  {per_attempt:.3f} ms CPU per attempt   {per_empty:.3f} ms CPU per empty run_once", flush=True)


if __name__ == "__main__":
    main()
