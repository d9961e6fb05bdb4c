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
from typing import Any, NoReturn

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine

from hub import cli_processes, runtime, workers
from hub.api import create_app
from hub.cli_processes import STOP_SIGNALS, HubServer, stop_on_signals
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


class Exited(Exception):
    """Raised by the stand-in for `exit_at_once`, which never returns: the test's own process goes on."""


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The signals the hub's stop handlers exited at once for (`exit_at_once`, recorded, not run)."""
    called: list[int] = []

    def record(signum: int) -> NoReturn:
        called.append(signum)
        raise Exited(signum)

    monkeypatch.setattr(cli_processes, "exit_at_once", record)
    return called


@pytest.fixture
def own_stop_handlers() -> Iterator[None]:
    """The test process's SIGINT and SIGTERM handlers, put back after a test installed the hub's."""
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("own_stop_handlers")
def test_a_second_stop_signal_to_a_worker_process_exits_at_once(exits: list[int]) -> None:
    """Before, a second SIGTERM to `touchhub worker` while it stopped did nothing: it waited out the delivery
    worker's send."""
    stopping = threading.Event()
    stop_on_signals(stopping)
    signal.raise_signal(signal.SIGTERM)
    assert stopping.is_set() and exits == []  # the first asks the graceful stop
    with pytest.raises(Exited):
        signal.raise_signal(signal.SIGTERM)
    assert exits == [signal.SIGTERM]


async def no_app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
    """An ASGI app for a server that is never run: only its signal handling is tested."""


def test_a_second_ctrl_c_to_serve_exits_at_once_not_only_uvicorns_wait_for_connections(exits: list[int]) -> None:
    """Before, uvicorn's own second Ctrl-C (`force_exit`) only skipped its wait for open connections: the hub's
    stop, running in the lifespan shutdown, was waited out all the same."""
    server = HubServer(uvicorn.Config(no_app))
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit and exits == []  # the first is uvicorn's graceful stop
    with pytest.raises(Exited):
        server.handle_exit(signal.SIGINT, None)
    assert exits == [signal.SIGINT] and not server.force_exit


class Output:
    """A process's output, read on a thread as it comes: a test waits for one line and still gets all of it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self.lines.extend, args=(process.stdout,), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Return once a line holding `text` was written; fail after `timeout` seconds."""
        wait_for(lambda: any(text in line for line in self.lines), timeout)

    def text(self) -> str:
        """All of it, once the process closed its output."""
        self._reader.join(5)
        return "".join(self.lines)


def test_a_second_sigterm_to_serve_exits_the_process_at_once_saying_when_the_claimed_rows_come_back(
    tmp_path: Path,
) -> None:
    """Before, a second SIGTERM while `touchhub serve` stopped did nothing: it waited out the delivery worker's
    send (10 s here). The real process, for the exit status and the log line the handlers' tests stand in for."""
    scratch = tmp_path / "work"
    scratch.mkdir()
    with a_text_queued(tmp_path), stalled_provider() as twilio:
        process = subprocess.Popen(
            [TOUCHHUB, "serve"], cwd=scratch, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=hub_env(tmp_path, HUB_PORT=str(free_port()), HUB_TWILIO_API_BASE_URL=socket_url(twilio),
                        HUB_SEND_TIMEOUT_SECONDS="60", HUB_QUIET_HOURS="", HUB_WORKER_POLL_SECONDS="0.05"),
        )
        output = Output(process)
        try:
            sending, _ = twilio.accept()  # the delivery worker is in its step, waiting for the provider
            process.send_signal(signal.SIGTERM)
            output.wait_for("Waiting for application shutdown")  # the hub's graceful stop is under way
            process.send_signal(signal.SIGTERM)
            process.wait(5)
            sending.close()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert process.returncode == 128 + signal.SIGTERM
    assert "second stop signal: exiting at once" in output.text()
    assert "HUB_LEASE_SECONDS" in output.text()


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
