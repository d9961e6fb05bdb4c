"""Run an ASGI app on a free loopback port in a background thread.

The demo, `touchhub serve --sandbox` and the tests all need real HTTP servers
(the hub itself and the fake providers) that start fast, bind a port the OS
chose (so parallel runs never collide) and stop cleanly without leaving a
process behind. Binding the socket ourselves and handing it to uvicorn avoids
the race of "find a free port, then bind it".
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound TCP socket; port 0 lets the OS choose a free one. An IPv6 address (`::`, as HUB_HOST may be) gets an
    IPv6 socket: `touchhub serve` binds through here before uvicorn starts."""
    bound = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound.bind((host, port))
    return bound


def http_url(host: str, port: int) -> str:
    """The http URL of `host`:`port`; an IPv6 address is bracketed (RFC 3986), or its colons read as the port's."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def socket_url(bound: socket.socket) -> str:
    return http_url(*bound.getsockname()[:2])


class BackgroundServer:
    """An uvicorn server in a daemon thread; use as a context manager.

    Attributes:
        url: base URL such as ``http://127.0.0.1:54321`` (no trailing slash).
    """

    def __init__(self, app: object, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> None:
        """Pass `sock` (from `bind_socket`) when the URL must be known before the app can be built."""
        self._socket = sock or bind_socket(host, port)
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = socket_url(self._socket)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True,
            name=f"server-{self.port}",
        )

    def start(self, timeout: float = 10.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
