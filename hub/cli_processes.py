"""Running a hub process from the command line: `serve`'s port and server, `worker`'s wait and metrics, and what
both do on SIGINT and SIGTERM: stop gracefully on the first, exit at once on a second."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import structlog
import typer
import uvicorn

from hub.cli_support import config_problems_exit, console, fail, plain
from hub.errors import ConfigError

if TYPE_CHECKING:
    from hub.runtime import Hub

log = structlog.get_logger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SignalHandler = Callable[[int, FrameType | None], None]


def exit_at_once(signum: int) -> NoReturn:
    """End the process now, skipping the stop under way: an operator's second Ctrl-C, or a supervisor's repeated
    SIGTERM, will not wait out a worker's step. Nothing acknowledged is lost, so only the wait is skipped."""
    try:
        log.warning(
            "second stop signal: exiting at once, without waiting for the workers' steps; nothing acknowledged is lost: "
            "the events and deliveries they had claimed stay in the inbox and the outbox and are claimed again after "
            "HUB_LEASE_SECONDS",
            signal=signal.Signals(signum).name,
        )
        sys.stderr.flush()
        sys.stdout.flush()
    finally:  # logging from a handler may find stderr mid-write (a reentrant call): the exit must happen all the same
        os._exit(128 + signum)  # what a shell reports for a process the signal ended


def stop_handler(ask_stop: Callable[[int], None]) -> SignalHandler:
    """A SIGINT / SIGTERM handler: the first signal calls `ask_stop` (a graceful stop), any later one exits at once,
    as uvicorn, gunicorn and celery do on a second Ctrl-C."""
    asked = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if asked.is_set():
            exit_at_once(signum)
        asked.set()
        ask_stop(signum)

    return handle


def stop_on_signals(stopping: threading.Event) -> None:
    """`touchhub worker`'s handlers: the first SIGINT or SIGTERM sets `stopping`, a second exits at once."""
    handle = stop_handler(lambda _signum: stopping.set())
    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)


class HubServer(uvicorn.Server):
    """uvicorn's server, exiting at once on a second SIGINT or SIGTERM as `touchhub worker` does.

    uvicorn's own second Ctrl-C (`force_exit`) only skips the wait for open
    connections: the hub's stop, already running in the lifespan shutdown, is
    waited out, and a second SIGTERM does nothing at all.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._on_signal = stop_handler(lambda signum: super(HubServer, self).handle_exit(signum, None))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_signal(sig, frame)


def run_server(app: Any, sock: socket.socket, log_level: str) -> None:
    """uvicorn on a socket bound before the hub was built, ending as `uvicorn.run` does: Ctrl-C is the way to stop
    it (a second one exits at once), and an app whose start-up failed exits 3."""
    host, port = sock.getsockname()[:2]  # for uvicorn's "running on" line
    # log_config=None: uvicorn's lines go to the root handler configure_logging set up (JSON, masked).
    server = HubServer(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), log_config=None))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it stopped on again once it has shut down
        pass
    if not server.started:
        raise typer.Exit(3)


def wait_while_workers_live(hub: Hub, stopping: threading.Event, poll_seconds: float = 1.0) -> None:
    """Return once `stopping` is set; exit 1 naming the dead worker once one dies, so that a supervisor (systemd,
    Kubernetes) restarts a process whose work would otherwise pile up while it waits for a signal."""
    from hub.runtime import dead_workers_line

    while not stopping.wait(poll_seconds):
        if dead := hub.dead_workers():
            fail(plain(f"{dead_workers_line(dead)}; exiting with status 1 so a supervisor restarts it"))


@contextmanager
def metrics_served(hub: Hub) -> Iterator[None]:
    """/metrics on HUB_HOST:HUB_METRICS_PORT while the block runs, when that port is set; a port in use exits 2
    naming the setting."""
    from hub.metrics import metrics_app
    from hub.serving import BackgroundServer

    settings = hub.settings
    if settings.metrics_port is None:
        yield
        return
    sock = listening_socket(settings.host, settings.metrics_port, "HUB_METRICS_PORT")
    with BackgroundServer(metrics_app(hub.store), sock=sock) as server:
        console.print(f"Metrics on {server.url}/metrics")
        yield


def listening_socket(host: str, port: int, setting: str) -> socket.socket:
    """A socket bound to `host`:`port` before anything else starts, so a port in use exits 2 naming `setting`,
    not after the hub's workers started (uvicorn's own bind failure was only a log line and exit 3)."""
    from hub.serving import bind_socket

    with config_problems_exit():
        try:
            return bind_socket(host, port)
        except OSError as exc:
            raise ConfigError(
                f"{setting}: cannot listen on {host}:{port} ({exc.strerror}); pick a free port or stop what listens there"
            ) from None
