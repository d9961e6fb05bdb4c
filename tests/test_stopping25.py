"""Stopping and outages: a stop bounded by one join period, a second signal that exits at once, and a database
outage that backs off and is logged as one run, not a traceback per poll."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from hub import runtime, workers
from hub.api import create_app
from hub.runtime import Hub
from hub.serving import BackgroundServer, bind_socket, socket_url
from hub.workers import Worker, stop_workers
from tests.conftest import WRITE_KEY, free_port, logs_of, make_settings, support_ticket, wait_for
from tests.postgres import PostgresCluster
from tests.test_json_logs19 import TOUCHHUB, hub_env

ROLES = ("pipeline", "timers", "delivery")


def held(entered: threading.Event, release: threading.Event) -> Callable[[], int]:
    """A step that stays in its work until `release` (a slow send, a long batch), saying when it began."""

    def step() -> int:
        entered.set()
        release.wait()
        return 0

    return step


def counted(began: list[float]) -> Callable[[], int]:
    """An idle step that notes when each of its steps began."""

    def step() -> int:
        began.append(time.monotonic())
        return 0

    return step


@contextmanager
def hub_running(tmp_path: Path, steps: dict[str, Callable[[], int]]) -> Iterator[Hub]:
    """A real hub whose workers (named as the hub's own) run `steps`; the test stops it."""
    hub = Hub(make_settings(tmp_path))
    hub._workers = [Worker(name, step, threading.Event(), poll_seconds=0.01) for name, step in steps.items()]
    for worker in hub._workers:
        worker.start()
    try:
        yield hub
    finally:  # the test released the held steps: their threads end now, not during a later test
        stop_workers(hub._workers, join_seconds=10)


def test_a_stop_with_every_worker_mid_step_takes_one_join_period_not_one_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, `Hub.stop` joined its workers one after another, each for the whole period: three workers mid-step
    took three periods (30 s by default: Kubernetes' grace period, then SIGKILL)."""
    release = threading.Event()
    entered = {name: threading.Event() for name in ROLES}
    with hub_running(tmp_path, {name: held(entered[name], release) for name in ROLES}) as hub:
        assert all(event.wait(10) for event in entered.values())
        with logs_of(monkeypatch, runtime) as logs:
            began = time.monotonic()
            hub.stop(join_seconds=1.0)
            took = time.monotonic() - began
        release.set()
    assert took < 2.0, f"the stop took {took:.1f} s for a join period of 1 s"
    assert [entry["worker"] for entry in logs if entry["log_level"] == "warning"] == list(ROLES)


def test_no_worker_starts_a_step_once_the_stop_was_asked(tmp_path: Path) -> None:
    """Before, the workers stopped after the first went on claiming work while the first was joined."""
    release, entered = threading.Event(), threading.Event()
    began: dict[str, list[float]] = {"timers": [], "delivery": []}
    steps = {"pipeline": held(entered, release), **{name: counted(times) for name, times in began.items()}}
    with hub_running(tmp_path, steps) as hub:
        assert entered.wait(10)
        asked = time.monotonic()
        hub.stop(join_seconds=0.5)
        release.set()
    late = {name: sum(1 for at in times if at > asked + 0.05) for name, times in began.items()}
    assert late == {"timers": 0, "delivery": 0}


# --- a second stop signal --------------------------------------------------------------------------------------------


@contextmanager
def a_text_queued(tmp_path: Path) -> Iterator[None]:
    """An event in the SQLite store of `tmp_path` that makes the post_purchase_support rule text the customer,
    taken in by a hub that runs no worker (the process under test runs them)."""
    hub = Hub(make_settings(tmp_path, workers=""))
    with BackgroundServer(create_app(hub, run_workers=False)) as server:
        answer = httpx.post(f"{server.url}/v1/batch", json={"batch": support_ticket("u-1", {"phone": "+14155550100"})},
                            auth=(WRITE_KEY, ""))
        assert answer.status_code == 200, answer.text
        yield
    hub.stop()


@contextmanager
def stalled_provider() -> Iterator[socket.socket]:
    """A Twilio API on 127.0.0.1 that takes the connection and never answers: the send it gets stays in flight."""
    listening = bind_socket()
    listening.listen()
    listening.settimeout(60)
    try:
        yield listening
    finally:
        listening.close()


@pytest.mark.parametrize(("command", "signum"), [
    ("worker", signal.SIGTERM), ("serve", signal.SIGTERM), ("serve", signal.SIGINT),
])
def test_a_second_stop_signal_exits_at_once_saying_when_the_claimed_rows_come_back(
    tmp_path: Path, command: str, signum: signal.Signals
) -> None:
    """Before, a second SIGTERM or Ctrl-C while the process stopped did nothing: it waited out the delivery
    worker's send (10 s here; uvicorn's own second Ctrl-C does not cut the hub's stop short either)."""
    scratch = tmp_path / "work"
    scratch.mkdir()
    with a_text_queued(tmp_path), stalled_provider() as twilio:
        process = subprocess.Popen(
            [TOUCHHUB, command], cwd=scratch, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=hub_env(tmp_path, HUB_PORT=str(free_port()), HUB_TWILIO_API_BASE_URL=socket_url(twilio),
                        HUB_SEND_TIMEOUT_SECONDS="60", HUB_QUIET_HOURS="", HUB_WORKER_POLL_SECONDS="0.05"),
        )
        try:
            sending, _ = twilio.accept()  # the delivery worker is in its step, waiting for the provider
            process.send_signal(signum)
            time.sleep(1.0)  # the graceful stop is under way, waiting for that step
            process.send_signal(signum)
            output, _ = process.communicate(timeout=5)
            sending.close()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert process.returncode == 128 + signum
    assert "second stop signal: exiting at once" in output
    assert "HUB_LEASE_SECONDS" in output


# --- a database outage -----------------------------------------------------------------------------------------------


def test_a_run_of_database_failures_backs_off_and_logs_one_traceback_a_count_and_the_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a worker logged "worker step failed" with a full traceback at every poll of an outage, and tried
    again every poll: about 100 tracebacks in this one second."""
    monkeypatch.setattr(workers, "BACKOFF_CAP_SECONDS", 0.1)
    monkeypatch.setattr(workers, "STILL_FAILING_EVERY_SECONDS", 0.3)
    unreachable = create_engine(f"sqlite:///{tmp_path}/gone/hub.db")  # its folder is missing: every connect fails
    down = threading.Event()
    down.set()
    failed_at: list[float] = []

    def step() -> int:
        if down.is_set():
            failed_at.append(time.monotonic())
            unreachable.connect()
        return 0

    with logs_of(monkeypatch, workers) as logs:
        worker = Worker("pipeline", step, threading.Event(), poll_seconds=0.01)
        worker.start()
        time.sleep(1.0)
        down.clear()
        wait_for(lambda: any(entry["event"] == "worker step works again" for entry in logs))
        assert worker.stop()
    failed = len(failed_at)
    lines = [entry for entry in logs if entry.get("worker") == "pipeline"]
    first, *repeats, recovered = lines
    assert (first["event"], first["log_level"], "exc_info" in first) == ("worker step failed", "error", True)
    assert repeats and {(entry["event"], "exc_info" in entry) for entry in repeats} == {("worker step still failing", False)}
    assert "OperationalError" in repeats[0]["error"] and repeats[-1]["failures"] <= failed
    assert (recovered["event"], recovered["failures"]) == ("worker step works again", failed)
    assert failed < 20, f"{failed} tries in a second of outage: the retries did not back off"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_postgresql_outage_is_logged_as_a_run_per_worker_not_a_traceback_per_poll(
    tmp_path: Path, postgres: PostgresCluster, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, each worker logged a full traceback at every poll for the whole outage (about 40 each in these 2 s)."""
    hub = Hub(make_settings(tmp_path, database_url=database_url))
    with logs_of(monkeypatch, workers) as logs:
        hub.start()
        with postgres.refusing_connections(database_url):
            time.sleep(2.0)
        wait_for(lambda: {entry.get("worker") for entry in logs if entry["event"] == "worker step works again"} == set(ROLES))
        hub.stop()
    for role in ROLES:
        tracebacks = [entry for entry in logs if entry.get("worker") == role and "exc_info" in entry]
        assert 1 <= len(tracebacks) <= 2, f"{role}: {[entry['exc_info'] for entry in tracebacks]}"
