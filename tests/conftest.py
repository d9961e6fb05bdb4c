"""Shared fixtures: a real hub on a free port, real fake providers, a fresh database per test.

The database is a SQLite file unless a test parametrizes `database_url`
indirectly with "postgresql": then it is a new database on a throwaway
PostgreSQL cluster started once per session (see tests/postgres.py).

A hub's database (`make_settings`) and the `store` fixture start as a copy of
one migrated once a session: running the migrations took 0.15 s on SQLite
and 0.25 s on PostgreSQL, for each of about a thousand tests. `database_url`
alone stays empty, for the tests of the migrations themselves.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

import httpx
import pytest
import structlog
from starlette.types import ASGIApp
from structlog.testing import capture_logs

from connectors.sandbox.providers import SandboxProviders
from hub.api import create_app
from hub.runtime import Hub
from hub.serving import BackgroundServer, bind_socket, socket_url
from hub.settings import PROJECT_MAPPINGS, HubSettings
from hub.store import Store
from tests.postgres import PostgresCluster, find_bindir

WRITE_KEY = "test-write-key"
ADMIN_TOKEN = "test-admin-token"


@dataclass
class RunningHub:
    hub: Hub
    url: str
    client: httpx.Client
    sandbox: SandboxProviders

    def send(self, *messages: dict[str, Any], write_key: str = WRITE_KEY) -> httpx.Response:
        return self.client.post("/v1/batch", json={"batch": list(messages)}, auth=(write_key, ""))

    def admin(self, path: str, **params: Any) -> Any:
        answer = self.client.get(path, params=params, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        answer.raise_for_status()
        return answer.json()

    def settle(self) -> None:
        assert self.hub.wait_until_idle(timeout=20), "hub did not finish its work in 20 s"


@contextmanager
def logs_of(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> Iterator[list[dict[str, Any]]]:
    """What `module` logs, through a logger of the test's own: the module's is cached on first use with the
    processors of whatever hub an earlier test started, which would hide the capture."""
    with capture_logs() as logs:
        monkeypatch.setattr(module, "log", structlog.get_logger(module.__name__))
        yield logs


def pytest_configure(config: pytest.Config) -> None:
    """Before the test modules import the CLI: its rich consoles, made at import, keep for good a COLUMNS they
    find then (pytest-xdist's workers have COLUMNS=80); without one they read it as they print, and each CLI test
    sets the width its output needs."""
    os.environ.pop("COLUMNS", None)


@cache
def _migrated_sqlite() -> Path:
    """A SQLite store migrated to head, made once a process (an xdist worker is one)."""
    folder = Path(tempfile.mkdtemp(prefix="hub-migrated-"))
    atexit.register(shutil.rmtree, folder, True)
    store = Store(f"sqlite:///{folder}/hub.db")
    store.migrate()
    store.dispose()
    return folder / "hub.db"


def migrated_sqlite(path: Path) -> str:
    """The URL of a SQLite store at `path`, a copy of a migrated one unless a file is there already."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)  # as the store engine makes a SQLite file's folder
        shutil.copyfile(_migrated_sqlite(), path)
    return f"sqlite:///{path}"


def make_settings(tmp_path: Path, **overrides: Any) -> HubSettings:
    """Settings for a hub in `tmp_path`: its SQLite store there, unless `database_url` is given."""
    values: dict[str, Any] = {
        "database_url": overrides.get("database_url") or migrated_sqlite(tmp_path / "hub.db"),
        "default_write_key": WRITE_KEY,
        "admin_token": ADMIN_TOKEN,
        "worker_poll_seconds": 0.05,
        "retry_base_delay_seconds": 0.01,
        "retry_max_delay_seconds": 0.05,
        **overrides,
    }
    return HubSettings(_env_file=None, **values)  # type: ignore[call-arg]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL server for the whole session, started on first use; its files are removed at the end."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install '.[postgres]'")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in pg_config --bindir, /usr/lib/postgresql/*/bin or PATH")
    for attempt in range(3):  # the free port may be taken before the server binds it (xdist workers start theirs at once)
        cluster = PostgresCluster(bindir, free_port())
        try:
            cluster.start()
            break
        except RuntimeError:
            cluster.stop()
            if attempt == 2:
                raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: SQLite in `tmp_path`, or PostgreSQL when parametrized indirectly with "postgresql"."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return request.getfixturevalue("postgres").create_database()
    return f"sqlite:///{tmp_path}/hub.db"


@pytest.fixture
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[Store]:
    """A migrated store on `database_url`; modules with a store of their own override it."""
    if database_url.startswith("sqlite:///"):
        migrated_sqlite(Path(database_url.removeprefix("sqlite:///")))
    else:
        request.getfixturevalue("postgres").refill_migrated(database_url)
    opened = Store(database_url)
    opened.migrate()
    yield opened
    opened.dispose()


@pytest.fixture
def sandbox() -> Iterator[SandboxProviders]:
    with SandboxProviders() as providers:
        yield providers


@pytest.fixture
def running_hub(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders, request: pytest.FixtureRequest
) -> Iterator[RunningHub]:
    """A hub with workers, served over HTTP; mark a test `@pytest.mark.hub_settings(key=value)` to change settings."""
    marker = request.node.get_closest_marker("hub_settings")
    overrides = dict(marker.kwargs) if marker else {}
    sock = bind_socket()  # bound first: callbacks and unsubscribe links need the hub's URL in its settings
    settings = {
        **sandbox.settings_overrides(), "database_url": database_url, "public_base_url": socket_url(sock), **overrides
    }
    with serve_hub(make_settings(tmp_path, **settings), sandbox, sock) as running:
        yield running


@contextmanager
def serve_hub(settings: HubSettings, sandbox: SandboxProviders, sock: socket.socket | None = None) -> Iterator[RunningHub]:
    """A hub built from `settings`, served over HTTP (on `sock` when given) with its workers running, stopped on exit."""
    hub = Hub(settings)
    with BackgroundServer(create_app(hub), sock=sock) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield RunningHub(hub, server.url, client, sandbox)


@contextmanager
def hub_with_source(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch,
    entry: str, secrets: dict[str, str], **settings: Any,
) -> Iterator[RunningHub]:
    """`serve_hub` over `mappings_dir` with sources.yaml holding one source, `entry` (a flow mapping), its secrets'
    variables set to `secrets`."""
    (mappings_dir / "sources.yaml").write_text(f"sources:\n  - {entry}\n")
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides(), **settings),
                   sandbox) as hub:
        yield hub


class Resettable(Protocol):
    def reset(self) -> None: ...


FakeT = TypeVar("FakeT", bound=Resettable)


def vendor_fake_fixtures(name: str, make_fake: Callable[[], FakeT], make_app: Callable[[FakeT], ASGIApp]) -> tuple[Any, ...]:
    """The fixtures of a module testing against one sandbox fake, e.g. ``fake, server, fresh = vendor_fake_fixtures(...)``.

    `name` is the fake and ``server`` serves it over HTTP, both once per module
    (starting a server per test is slow); the autouse ``fresh`` resets the fake
    before each test so no request, fault or record leaks between tests.
    """

    @pytest.fixture(scope="module", name=name)
    def fake() -> FakeT:
        return make_fake()

    @pytest.fixture(scope="module", name="server")
    def server(request: pytest.FixtureRequest) -> Iterator[BackgroundServer]:
        with BackgroundServer(make_app(request.getfixturevalue(name))) as running:
            yield running

    @pytest.fixture(autouse=True, name="fresh")
    def fresh(request: pytest.FixtureRequest) -> None:
        request.getfixturevalue(name).reset()

    return fake, server, fresh


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped mappings/ that a test may edit (sources.yaml, mapping files)."""
    folder = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, folder)
    return folder


def message(type_: str = "track", **fields: Any) -> dict[str, Any]:
    """A Segment-spec message with a fresh messageId unless one is given."""
    return {"type": type_, "messageId": fields.pop("messageId", str(uuid.uuid4())), **fields}


def support_ticket(user_id: str, traits: dict[str, Any], at: datetime | None = None) -> list[dict[str, Any]]:
    """A customer who bought yesterday opens a ticket `at` (now): what sets off the post_purchase_support rule.

    `traits` (a phone, an email) decide which of the rule's channels can reach them.
    """
    at = at or datetime.now(timezone.utc)
    return [
        message("identify", userId=user_id, traits=traits, timestamp=(at - timedelta(days=2)).isoformat()),
        message(userId=user_id, event="Order Completed", timestamp=(at - timedelta(days=1)).isoformat()),
        message(userId=user_id, event="Ticket Submitted", timestamp=at.isoformat()),
    ]


def cart_nudge_rules(actions: str) -> str:
    """triggers.yaml with one rule, `cart_nudge`: a Cart Viewed answered at once by `actions` (the YAML items
    of its `respond` list, each starting `      - `)."""
    return (
        "\nrules:\n  - id: cart_nudge\n    stage: decision\n    moment: cart_activity\n    urgency: immediate\n"
        "    when: {event: Cart Viewed}\n    respond:\n" + actions
    )


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait until `condition()` holds, failing the test after `timeout` seconds: what workers do happens on their
    threads, a few milliseconds after the call that set it off."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
