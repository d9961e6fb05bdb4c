"""Running a hub process from the command line: `serve`'s port and server, `worker`'s wait and metrics."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
import uvicorn

from hub.cli_support import config_problems_exit, console, fail, plain
from hub.errors import ConfigError

if TYPE_CHECKING:
    from hub.runtime import Hub



def run_server(app: Any, sock: socket.socket, log_level: str) -> None:
    """uvicorn on a socket bound before the hub was built, ending as `uvicorn.run` does: Ctrl-C is the way to stop
    it, and an app whose start-up failed exits 3."""
    host, port = sock.getsockname()[:2]  # for uvicorn's "running on" line
    # log_config=None: uvicorn's lines go to the root handler configure_logging set up (JSON, masked).
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), log_config=None))
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
