"""Readiness (/readyz) of a hub whose database answers reads but refuses every write."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from connectors.sandbox.providers import SandboxProviders
from hub.store.readiness import LEAST_FREE_BYTES, short_of_room
from tests.conftest import RunningHub, make_settings, message, migrated_sqlite, serve_hub
from tests.postgres import PostgresCluster

POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def quiet(running_hub: RunningHub) -> None:
    """Stop the workers: the tests are about what the probe and ingest answer, not about workers that fail."""
    for worker in running_hub.hub._workers:
        worker.stop()


def ingest_is_told_to_retry(running_hub: RunningHub) -> str:
    """A batch the store cannot take: a 503 with Retry-After, what SDKs and webhook senders retry, naming the
    problem (before: a 500 with no reason, and uvicorn dropped the connection, so the next request got no answer).
    Returns the error."""
    answer = running_hub.send(message(userId="u-1", event="x"))
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) > 0
    assert "send it again" in answer.json()["error"]
    assert running_hub.send(message(userId="u-1", event="x")).status_code == 503  # the connection is still served
    return answer.json()["error"]


def not_ready_because(running_hub: RunningHub) -> str:
    answer = running_hub.client.get("/readyz")
    assert answer.status_code == 503, answer.text
    assert answer.json()["ready"] is False
    return answer.json()["reason"]


@POSTGRESQL
def test_readyz_is_a_503_when_the_postgresql_sessions_are_read_only(
    tmp_path: Path, postgres: PostgresCluster, database_url: str, sandbox: SandboxProviders
) -> None:
    """Before: a database whose sessions default to read-only (as an operator sets one aside, or a URL with that
    option) answered the probe's read, so /readyz said ready while every ingest request was a 500."""
    postgres.refill_migrated(database_url)
    name = database_url.rsplit("/", 1)[1]
    admin = create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"ALTER DATABASE {name} SET default_transaction_read_only = on"))
    admin.dispose()
    with serve_hub(make_settings(tmp_path, database_url=database_url, **sandbox.settings_overrides()), sandbox) as running:
        quiet(running)
        reason = not_ready_because(running)
        error = ingest_is_told_to_retry(running)
    assert reason.startswith("database: ") and "default_transaction_read_only" in reason
    assert "read-only transaction" in error
    assert "HUB_DATABASE_URL" in reason and "primary" in reason


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A migrated SQLite file that this process cannot write (its folder can be: the hub makes its lock file there).

    Under root, file modes stop nothing, so the file is made immutable (`chattr +i`), which stops root too; where
    that cannot be done (no chattr, no CAP_LINUX_IMMUTABLE, a file system without the flag) the test is skipped,
    as only root gets there."""
    database = tmp_path / "store" / "hub.db"
    migrated_sqlite(database)
    if os.geteuid() != 0:
        database.chmod(0o444)
        yield database
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root, where chmod does not stop writes, and there is no chattr to make the file immutable")
    made = subprocess.run(["chattr", "+i", str(database)], capture_output=True, text=True, check=False)
    try:
        if made.returncode != 0:
            pytest.skip(f"running as root, where chmod does not stop writes, and chattr +i failed: {made.stderr.strip()}")
        yield database
    finally:
        subprocess.run(["chattr", "-i", str(database)], capture_output=True, check=False)


def test_readyz_is_a_503_when_the_sqlite_file_cannot_be_written(
    tmp_path: Path, unwritable: Path, sandbox: SandboxProviders
) -> None:
    """Before: a database file the hub's user cannot write (a read-only mount, another owner) still answered the
    probe's read, so /readyz said ready while every ingest request was a 500."""
    settings = make_settings(tmp_path, database_url=f"sqlite:///{unwritable}", **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        quiet(running)
        reason = not_ready_because(running)
        ingest_is_told_to_retry(running)
    assert reason.startswith(f"database: cannot write {unwritable}")
    assert "write access" in reason


def test_a_sqlite_store_is_short_of_room_under_the_floor_of_free_space(tmp_path: Path) -> None:
    """Before: a disk with no room left still answered reads, so /readyz said ready while every write failed.
    The judge is given the numbers `shutil.disk_usage` reports, as /readyz gives it those of the store's folder."""
    assert short_of_room(tmp_path, LEAST_FREE_BYTES) is None
    assert short_of_room(tmp_path, LEAST_FREE_BYTES - 1) is not None
    reason = short_of_room(tmp_path, 5 * 1024 * 1024 + 1)
    assert reason == (
        f"database: only 5 MiB free in {tmp_path}, under the 143 MiB the hub needs to take events; "
        "free space on that disk or move the database to a larger one"
    )
