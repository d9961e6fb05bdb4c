"""How announcements of new work travel between hub processes (`hub.wakeups`).

- PostgreSQL: `NOTIFY hub_work`; each listening process LISTENs on a
  connection of its own. Reaches processes on every node.
- SQLite: a datagram to each UNIX socket in a folder beside the database
  file (`<database>-wakeups/<pid>-<random>.sock`), one per listening hub. SQLite
  processes share one machine, so a folder is as far as they need to reach.
  A socket whose process died refuses the datagram and is removed.

Both only shorten waits: a lost announcement leaves the work to the next
poll, so senders never wait for or retry a receiver.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger(__name__)
NOTIFY_CHANNEL = "hub_work"
LISTEN_TIMEOUT_SECONDS = 1.0  # how often a listener checks whether it should stop
RECONNECT_SECONDS = 1.0
UNIX_PATH_MAX = 107  # sun_path on Linux, less its NUL
PEERS_RELISTED_SECONDS = 1.0  # the socket folder is listed again at least this often, whatever its mtime says


class Channel(Protocol):
    def publish(self, payload: str) -> None: ...

    def listen(self, heard: Callable[[str], None], stopping: threading.Event) -> None:
        """Call `heard` with each other process's payload until `stopping` is set (runs on its own thread)."""

    def interrupt(self) -> None:
        """Make `listen` look at `stopping` now rather than at its next timeout."""

    def close(self) -> None: ...


def channel_for(database_url: str) -> Channel | None:
    """The channel between the processes of this store, or None where there are no other processes (in memory)."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return PostgresChannel(url.set(drivername="postgresql").render_as_string(hide_password=False))
    if url.database and url.database != ":memory:":
        return SocketFolder(Path(f"{url.database}-wakeups"))
    return None


class PostgresChannel:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._publisher: Any = None  # a psycopg connection, opened on first use
        self._publishing = threading.Lock()

    def publish(self, payload: str) -> None:
        with self._publishing:
            try:
                if self._publisher is None:
                    self._publisher = self._connect()
                self._publisher.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
            except Exception:
                log.warning("could not announce work to other hub processes", exc_info=True)
                self._publisher = None

    def listen(self, heard: Callable[[str], None], stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                with self._connect() as connection:
                    connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not stopping.is_set():
                        for notice in connection.notifies(timeout=LISTEN_TIMEOUT_SECONDS, stop_after=1):
                            if notice.payload and notice.pid != self._own_backend():  # ours woke our workers already
                                heard(notice.payload)
            except Exception:
                log.warning("lost the connection that hears other hub processes; reconnecting", exc_info=True)
                stopping.wait(RECONNECT_SECONDS)

    def interrupt(self) -> None:
        self.publish("")

    def close(self) -> None:
        with self._publishing:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None

    def _own_backend(self) -> int | None:
        publisher = self._publisher
        return publisher.info.backend_pid if publisher is not None else None

    def _connect(self) -> Any:
        import psycopg  # the PostgreSQL extra; only a PostgreSQL store gets here

        return psycopg.connect(self._dsn, autocommit=True)


class SocketFolder:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._own = folder / f"{os.getpid()}-{secrets.token_hex(4)}.sock"  # one per hub: tests run several in a process
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._listed: tuple[int, float, list[Path]] = (-1, 0.0, [])  # the folder's mtime, when, and the peers then
        self._folder_fd: int | None = None  # opened when a socket's path is too long to bind or send to (`_address`)
        self._opening = threading.Lock()

    def publish(self, payload: str) -> None:
        try:
            peers = self._peers()
        except FileNotFoundError:  # no process listens yet
            return
        for peer in peers:
            try:
                self._sender.sendto(payload.encode(), self._address(peer))
            except (ConnectionRefusedError, FileNotFoundError):  # its process is gone
                peer.unlink(missing_ok=True)
            except BlockingIOError:  # its queue is full: that process has announcements to wake on already
                pass

    def _peers(self) -> list[Path]:
        """The other listeners' sockets, listed again when the folder changed (a hub came or went) or a second
        has passed (a file system with a coarse mtime). Every pipeline batch publishes, and listing the folder
        each time cost 5% of the pipeline thread at 1,000 events/s."""
        changed, listed_at, peers = self._listed
        stamp, now = os.stat(self.folder).st_mtime_ns, time.monotonic()
        if stamp != changed or now - listed_at >= PEERS_RELISTED_SECONDS:
            peers = [path for path in self.folder.iterdir() if path.suffix == ".sock" and path != self._own]
            self._listed = (stamp, now, peers)
        return peers

    def _address(self, path: Path) -> str:
        """Where to bind or send to the socket at `path`: the path, or, when it is longer than an AF_UNIX address
        holds (a deep install folder; a test's temporary one), the same file reached through a descriptor of the
        folder (`/proc/self/fd/N/name`, Linux). Without it such a hub heard no other process: their work waited
        for the poll."""
        spelled = str(path)
        if len(spelled) <= UNIX_PATH_MAX:
            return spelled
        with self._opening:
            if self._folder_fd is None:
                self._folder_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._folder_fd}/{path.name}"

    def listen(self, heard: Callable[[str], None], stopping: threading.Event) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            try:
                self.folder.mkdir(mode=0o700, exist_ok=True)
                receiver.bind(self._address(self._own))
            except OSError:
                log.warning("cannot listen for other hub processes; their work waits for the poll", exc_info=True)
                return
            receiver.settimeout(LISTEN_TIMEOUT_SECONDS)
            try:
                while not stopping.is_set():
                    try:
                        payload = receiver.recv(1024).decode()
                    except TimeoutError:
                        continue
                    if payload:
                        heard(payload)
            finally:
                self._own.unlink(missing_ok=True)

    def interrupt(self) -> None:
        try:
            self._sender.sendto(b"", self._address(self._own))
        except OSError:  # not listening (yet): it sees `stopping` before it would
            pass

    def close(self) -> None:
        self._sender.close()
        with self._opening:
            if self._folder_fd is not None:
                os.close(self._folder_fd)
                self._folder_fd = None
