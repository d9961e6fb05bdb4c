"""Ingest throughput as a ratio against a no-op endpoint on the same server, in the same run.

    .venv/bin/python bench/ingest.py [--requests 2000] [--batch 20] [--concurrency 16]

Both endpoints receive the same Basic-auth'd JSON batches from the same
client pool; the no-op endpoint reads the body and answers 200, so the ratio
isolates what durable ingest costs (parse, validate, fsync'd commit) on top
of HTTP and JSON handling. The pipeline workers run meanwhile, as in
production, competing for the SQLite write lock.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

from hub.api import create_app
from hub.runtime import Hub
from hub.serving import BackgroundServer
from hub.settings import HubSettings

WRITE_KEY = "bench-key"


def batch(size: int) -> dict:
    return {
        "batch": [
            {"type": "track", "messageId": str(uuid.uuid4()), "userId": f"user-{i % 500}", "event": "Product Viewed",
             "properties": {"product_id": f"sku-{i}", "price": 19.99}}
            for i in range(size)
        ]
    }


def drive(url: str, path: str, requests: int, size: int, concurrency: int) -> float:
    """Requests per second for `requests` POSTs of `size`-event batches."""
    bodies = [batch(size) for _ in range(requests)]
    with httpx.Client(base_url=url, auth=(WRITE_KEY, ""), timeout=30,
                      limits=httpx.Limits(max_connections=concurrency)) as client:
        def post(body: dict) -> None:
            answer = client.post(path, json=body)
            answer.raise_for_status()

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, bodies))
        return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-workers", action="store_true", help="measure ingest alone, without the pipeline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        settings = HubSettings(_env_file=None, database_url=f"sqlite:///{folder}/bench.db",  # type: ignore[call-arg]
                               default_write_key=WRITE_KEY, log_level="WARNING")
        app = create_app(Hub(settings), run_workers=not args.no_workers)

        @app.post("/bench/noop")
        async def noop(request: Request) -> JSONResponse:
            await request.body()
            return JSONResponse({"success": True})

        with BackgroundServer(app) as server:
            drive(server.url, "/bench/noop", 100, args.batch, args.concurrency)  # warm-up
            noop_rps = drive(server.url, "/bench/noop", args.requests, args.batch, args.concurrency)
            ingest_rps = drive(server.url, "/v1/batch", args.requests, args.batch, args.concurrency)
    print(f"no-op endpoint : {noop_rps:8.0f} req/s  ({noop_rps * args.batch:9.0f} events/s)")
    print(f"/v1/batch      : {ingest_rps:8.0f} req/s  ({ingest_rps * args.batch:9.0f} events/s)")
    print(f"ratio ingest / no-op: {ingest_rps / noop_rps:.2f}  (batch {args.batch}, concurrency {args.concurrency})")


if __name__ == "__main__":
    main()
