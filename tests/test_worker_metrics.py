"""`touchhub worker` serves its own /metrics when HUB_METRICS_PORT is set: the counters of the work it did are in
its memory only, seen by no other process's /metrics."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.api import create_app
from hub.runtime import Hub
from hub.serving import BackgroundServer
from tests.conftest import WRITE_KEY, free_port, make_settings, message, migrated_sqlite

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def worker_process(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """`touchhub worker --only pipeline` on the test's SQLite store, run from a folder without a .env."""
    scratch = tmp_path / "work"
    scratch.mkdir(exist_ok=True)
    return subprocess.Popen(
        [TOUCHHUB, "worker", "--only", "pipeline"], cwd=scratch, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "", "HUB_DATABASE_URL": migrated_sqlite(tmp_path / "hub.db"),
             "HUB_WORKER_POLL_SECONDS": "0.05", **env},
    )


def samples(url: str) -> dict[str, float]:
    """Each unlabelled sample at `url`, by name."""
    families = text_string_to_metric_families(httpx.get(url, timeout=5).text)
    return {sample.name: sample.value for family in families for sample in family.samples if not sample.labels}


def scraped_when(url: str, name: str, value: float, timeout: float = 30.0) -> dict[str, float]:
    """The samples at `url` once `name` reads `value` (the server may still be starting, the work still going)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = samples(url)
        except httpx.TransportError:
            found = {}
        if found.get(name) == value or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def ended(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int | None, str]:
    """Exit code and output of the process once it ends; None if it did not within `timeout` (it is killed)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return None, process.communicate()[0]
    return process.returncode, output


def stopped(process: subprocess.Popen[str]) -> tuple[int | None, str]:
    """Exit code and output of the process after a Ctrl-C."""
    process.send_signal(signal.SIGINT)
    return ended(process, timeout=30)


@pytest.fixture
def ingest_only(tmp_path: Path) -> Iterator[httpx.Client]:
    """The HTTP API of a hub that runs no worker on the same store: its events wait for the worker process."""
    hub = Hub(make_settings(tmp_path, workers=""))
    with BackgroundServer(create_app(hub, run_workers=False)) as server, httpx.Client(base_url=server.url) as client:
        yield client
    hub.stop()


def test_a_worker_process_serves_its_counters_and_the_store_gauges(tmp_path: Path, ingest_only: httpx.Client) -> None:
    """Before, the touchpoints a `touchhub worker` processed were counted in its memory and served nowhere."""
    batch = {"batch": [message(userId=f"u-{n}", event="Product Viewed") for n in range(3)]}
    assert ingest_only.post("/v1/batch", json=batch, auth=(WRITE_KEY, "")).json()["accepted"] == 3
    port = free_port()
    process = worker_process(tmp_path, HUB_METRICS_PORT=str(port))
    try:
        found = scraped_when(f"http://127.0.0.1:{port}/metrics", "hub_touchpoints_processed_total", 3)
    finally:
        code, output = stopped(process)
    assert found.get("hub_touchpoints_processed_total") == 3, output
    assert found["hub_inbox_pending"] == 0  # the store's gauges, as `touchhub serve` serves them
    assert code == 0 and f"http://127.0.0.1:{port}/metrics" in output, output


def test_a_metrics_port_in_use_exits_2_naming_the_setting(tmp_path: Path) -> None:
    """A port another program listens on must read as what to fix, not end in a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, output = ended(worker_process(tmp_path, HUB_METRICS_PORT=str(taken.getsockname()[1])))
    flat = " ".join(output.split())
    assert code == 2, flat
    assert "HUB_METRICS_PORT" in flat and "pick a free port" in flat and "Traceback" not in flat


@pytest.mark.parametrize("port", ["0", "65536"])
def test_a_metrics_port_outside_1_to_65535_exits_2(tmp_path: Path, port: str) -> None:
    code, output = ended(worker_process(tmp_path, HUB_METRICS_PORT=port))
    assert code == 2 and "HUB_METRICS_PORT" in output, output
