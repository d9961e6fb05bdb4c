"""A throwaway PostgreSQL cluster for the multi-node tests: initdb into a temp dir, serve, remove.

The cluster is built from the server binaries of the machine (Debian keeps
them in /usr/lib/postgresql/<version>/bin, outside PATH). initdb refuses to
run as root, so under root the server runs as an unprivileged account that
owns the temp dir. Durability settings are off: the data dies with the test
session anyway, and fsync would only make the tests slow.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from hub.store import Store

SUPERUSER = "hub"
# Unprivileged accounts the server may run as when the tests run as root, in order of preference.
SERVER_ACCOUNTS = ("postgres", "nobody")


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when this machine has no PostgreSQL server."""
    candidates = []
    if pg_config := shutil.which("pg_config"):
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        candidates.append(found)
    # Newest version first: the glob sorts "9.6" after "15", so sort on the number.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_of, reverse=True)
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(str(Path(pg_ctl).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _version_of(bindir: str) -> float:
    try:
        return float(Path(bindir).parent.name)
    except ValueError:
        return 0.0


class PostgresCluster:
    """One server on 127.0.0.1:`port` with its unix socket in its own temp dir; `create_database` per test."""

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir = bindir
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="hub-pg-"))
        self.data = self.root / "data"
        self._account = _server_account()
        self._names = itertools.count(1)
        self._migrated: str | None = None  # the database `refill_migrated` copies

    def start(self) -> None:
        if self._account is not None:
            entry = pwd.getpwnam(self._account)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options)

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it is worth a checkpoint) and remove its files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        self._autocommit(f"CREATE DATABASE {name}")
        return self.url(name)

    def refill_migrated(self, url: str) -> None:
        """Make the database at `url`, new and not yet connected to, a copy of one migrated once a session."""
        if self._migrated is None:
            self._migrated = self.create_database().rsplit("/", 1)[1]
            store = Store(self.url(self._migrated))
            store.migrate()
            store.dispose()
        name = url.rsplit("/", 1)[1]
        self._autocommit(f"DROP DATABASE {name}", f"CREATE DATABASE {name} TEMPLATE {self._migrated}")

    @contextmanager
    def refusing_connections(self, url: str) -> Iterator[None]:
        """The database at `url` down as its clients see it: new connections refused, open ones ended; back after."""
        name = url.rsplit("/", 1)[1]
        self._autocommit(
            f"ALTER DATABASE {name} ALLOW_CONNECTIONS false",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )
        try:
            yield
        finally:
            self._autocommit(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")

    def _autocommit(self, *statements: str) -> None:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                for statement in statements:
                    connection.execute(text(statement))
        finally:
            engine.dispose()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self._account is not None:
            command = ["runuser", "-u", self._account, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=self.root)
        if result.returncode != 0:
            log = self.root / "server.log"
            detail = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}\n{detail}")


def _server_account() -> str | None:
    """None when we may run the server ourselves; under root, an unprivileged account that exists."""
    if os.geteuid() != 0:
        return None
    for account in SERVER_ACCOUNTS:
        try:
            pwd.getpwnam(account)
        except KeyError:
            continue
        return account
    raise RuntimeError(f"running as root and none of the accounts {SERVER_ACCOUNTS} exists to run PostgreSQL")
