"""A 2xx means durable: kill -9 the server right after the last acknowledgement, restart, lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hub.store import Store, inbox, touchpoints
from tests.conftest import ADMIN_TOKEN, WRITE_KEY, free_port, message

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def start_server(database_url: str, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "HUB_DATABASE_URL": database_url,
        "HUB_PORT": str(port),
        "HUB_DEFAULT_WRITE_KEY": WRITE_KEY,
        "HUB_ADMIN_TOKEN": ADMIN_TOKEN,
        "HUB_WORKER_POLL_SECONDS": "0.05",
        "HUB_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([TOUCHHUB, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode() if process.stderr else ''}")
    process.kill()
    raise RuntimeError("server did not become healthy in 30 s")


@pytest.fixture
def server_processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_acknowledged_events_survive_kill_9_and_are_processed_after_restart(
    tmp_path: Path, server_processes: list[subprocess.Popen]
) -> None:
    database_url = f"sqlite:///{tmp_path}/hub.db"
    port = free_port()
    server_processes.append(start_server(database_url, port))
    total = 300
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(WRITE_KEY, ""), timeout=10) as client:
        for start in range(0, total, 20):
            batch = [message(userId=f"user-{i % 37}", event="Product Viewed") for i in range(start, start + 20)]
            answer = client.post("/v1/batch", json={"batch": batch})
            assert answer.status_code == 200 and answer.json()["accepted"] == 20
    server_processes[0].send_signal(signal.SIGKILL)
    server_processes[0].wait(10)

    store = Store(database_url)
    with store.read() as connection:
        assert sum(inbox.count_by_status(connection).values()) == total
    store.dispose()

    server_processes.append(start_server(database_url, port))
    store = Store(database_url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with store.read() as connection:
            done = inbox.count_by_status(connection).get("done", 0)
            stored = touchpoints.count(connection)
        if done == total:
            break
        time.sleep(0.1)
    store.dispose()
    assert (done, stored) == (total, total)
