"""Webhook ingest against Segment batch ingest, same server, same run.

    .venv/bin/python bench/webhooks.py [--requests 1000] [--batch 20] [--concurrency 16]

Both paths commit 20-event requests durably; the webhook path additionally
checks a HubSpot v3 signature (HMAC-SHA256 over URL and body, replay window)
and parses HubSpot's event array. The ratio shows what signature checking and
the connector framework cost on top of the Segment path. Workers are off, so
the figure is ingest alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from hub.api import create_app
from hub.runtime import Hub
from hub.serving import BackgroundServer
from hub.settings import PROJECT_MAPPINGS, HubSettings

WRITE_KEY = "bench-key"
SECRET = "bench-hubspot-secret"


def hubspot_request(url: str, size: int) -> tuple[bytes, dict[str, str]]:
    events = [
        {"eventId": i, "subscriptionId": 25, "portalId": 33, "appId": 1160452, "occurredAt": int(time.time() * 1000),
         "subscriptionType": "contact.propertyChange", "attemptNumber": 0, "objectId": uuid.uuid4().int % 10**9,
         "propertyName": "lifecyclestage", "propertyValue": "lead", "changeSource": "CRM_UI"}
        for i in range(size)
    ]
    body = json.dumps(events).encode()
    timestamp = str(int(time.time() * 1000))
    digest = hmac.new(SECRET.encode(), b"POST" + url.encode() + body + timestamp.encode(), hashlib.sha256).digest()
    return body, {"X-HubSpot-Signature-v3": base64.b64encode(digest).decode(), "X-HubSpot-Request-Timestamp": timestamp,
                  "Content-Type": "application/json"}


def segment_request(size: int) -> tuple[bytes, dict[str, str]]:
    messages = [{"type": "track", "messageId": str(uuid.uuid4()), "userId": f"user-{i}", "event": "Product Viewed"}
                for i in range(size)]
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return json.dumps({"batch": messages}).encode(), {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}


def drive(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int) -> float:
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        def post(request: tuple[bytes, dict[str, str]]) -> None:
            client.post(url, content=request[0], headers=request[1]).raise_for_status()

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, requests))
        return len(requests) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        mappings = Path(folder) / "mappings"
        shutil.copytree(PROJECT_MAPPINGS, mappings)
        (mappings / "sources.yaml").write_text(
            "sources:\n  - {id: crm, connector: hubspot, secrets: {client_secret: HUB_BENCH_HUBSPOT_SECRET}}\n"
        )
        os.environ["HUB_BENCH_HUBSPOT_SECRET"] = SECRET
        settings = HubSettings(_env_file=None, database_url=f"sqlite:///{folder}/bench.db",  # type: ignore[call-arg]
                               default_write_key=WRITE_KEY, mappings_dir=mappings, log_level="WARNING")
        with BackgroundServer(create_app(Hub(settings), run_workers=False)) as server:
            webhook_url = f"{server.url}/v1/webhooks/crm"
            drive(f"{server.url}/v1/batch", [segment_request(args.batch) for _ in range(100)], args.concurrency)  # warm-up
            batch_rps = drive(f"{server.url}/v1/batch", [segment_request(args.batch) for _ in range(args.requests)],
                              args.concurrency)
            webhook_rps = drive(webhook_url, [hubspot_request(webhook_url, args.batch) for _ in range(args.requests)],
                                args.concurrency)
    print(f"/v1/batch (Segment)     : {batch_rps:8.0f} req/s  ({batch_rps * args.batch:9.0f} events/s)")
    print(f"/v1/webhooks (HubSpot)  : {webhook_rps:8.0f} req/s  ({webhook_rps * args.batch:9.0f} events/s)")
    print(f"ratio webhook / batch: {webhook_rps / batch_rps:.2f}  (batch {args.batch}, concurrency {args.concurrency})")


if __name__ == "__main__":
    main()
