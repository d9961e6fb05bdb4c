"""Operating the hub on SQLite: a write waits a bounded time for another process's, and says who held it up."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from hub.errors import StoreBusyError
from hub.settings import HubSettings
from hub.store import Store
from hub.store.engine import create_store_engine
from hub.store.writer_lock import WriterLock, writer_lock
from tests.conftest import RunningHub, message, wait_for
from tests.test_writer_lock import lock_is_free

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
# Another process holding the hub's writer lock until told to let go (a line on its stdin), as a `touchhub`
# process hung inside a write transaction would.
HOLDER = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def database(tmp_path: Path) -> str:
    Store(f"sqlite:///{tmp_path}/hub.db").migrate()
    return f"sqlite:///{tmp_path}/hub.db"


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "hub.db-writer.lock")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


def let_go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("\n")
    process.stdin.flush()
    process.wait()


def lock_of(database: str, timeout: float) -> WriterLock:
    return writer_lock(create_store_engine(database, lock_timeout=timeout), timeout)


def test_a_write_behind_a_stuck_process_fails_naming_it(database: str, holder: subprocess.Popen[str]) -> None:
    """A write behind another process that held the writer lock and hung (stopped, in a debugger) waited in
    `flock` for ever with no word: a CLI command just hung. It fails after the timeout, naming the process."""
    lock = lock_of(database, 0.3)
    with pytest.raises(StoreBusyError) as busy, lock:
        pytest.fail("the write went ahead while another process held the lock")
    message = str(busy.value)
    assert f"process {holder.pid} (" in message and "-c" in message, message
    assert f"kill {holder.pid}" in message and "HUB_SQLITE_LOCK_TIMEOUT_SECONDS" in message, message
    lock.close()


def test_a_write_takes_the_lock_once_another_process_lets_go_within_the_timeout(
    database: str, tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """A long-running hub must not fail a write because another process held the lock for a moment: the writer
    gets it as soon as it is let go, and lets it go in turn."""
    lock = lock_of(database, 60)
    entered = threading.Event()

    def write() -> None:
        with lock:
            entered.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert not entered.wait(0.2)  # it waits behind the other process
    let_go(holder)
    writer.join()
    assert entered.is_set()
    assert lock_is_free(tmp_path / "hub.db-writer.lock")
    lock.close()


def test_a_wait_given_up_leaves_the_lock_free_for_others(
    database: str, tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """A writer that gave up must not take the lock later behind everyone's back: once the stuck process lets go,
    other processes can write, and so can this one."""
    lock = lock_of(database, 0.2)
    with pytest.raises(StoreBusyError), lock:
        pass
    let_go(holder)
    wait_for(lambda: lock_is_free(tmp_path / "hub.db-writer.lock"))  # its waiting thread took it and let it go
    with lock:
        assert not lock_is_free(tmp_path / "hub.db-writer.lock")
    assert lock_is_free(tmp_path / "hub.db-writer.lock")
    lock.close()


def test_a_thread_stuck_in_a_write_does_not_hold_the_others_for_ever(database: str) -> None:
    """Threads of one process queue on a thread lock before the file lock; it had no bound either."""
    lock = lock_of(database, 0.2)
    failed: list[BaseException] = []

    def write() -> None:
        try:
            with lock:
                pass
        except StoreBusyError as exc:
            failed.append(exc)

    with lock:
        other = threading.Thread(target=write)
        other.start()
        other.join()
    assert len(failed) == 1 and "another thread of this process" in str(failed[0])
    lock.close()


def test_the_busy_timeout_is_the_same_setting(database: str) -> None:
    """SQLite's busy timeout was a constant beside a setting-less writer lock: a writer outside the hub's lock
    (a sqlite3 shell left in a transaction) now holds a write up for HUB_SQLITE_LOCK_TIMEOUT_SECONDS too."""
    assert HubSettings(sqlite_lock_timeout_seconds=0.2).sqlite_lock_timeout_seconds == 0.2
    engine = create_store_engine(database, lock_timeout=0.2)
    shell = sqlite3.connect(engine.url.database or "", isolation_level=None)
    try:
        shell.execute("BEGIN IMMEDIATE")
        with pytest.raises(Exception, match="database is locked"), engine.begin() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        shell.execute("ROLLBACK")
        shell.close()
        engine.dispose()


def test_a_cli_write_behind_a_stuck_process_exits_naming_it_after_the_setting(
    database: str, tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """`touchhub keys create` behind a hung touchhub process waited for ever; it now gives up after
    HUB_SQLITE_LOCK_TIMEOUT_SECONDS and exits 2 naming the process, as a busy sqlite3 shell already did."""
    environment = {**os.environ, "HUB_DATABASE_URL": database, "HUB_SQLITE_LOCK_TIMEOUT_SECONDS": "0.3"}
    result = subprocess.run([TOUCHHUB, "keys", "create", "grafana", "--scope", "read"], capture_output=True,
                            text=True, timeout=60, env=environment, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"process {holder.pid} (" in result.stderr and f"kill {holder.pid}" in result.stderr, result.stderr


@pytest.mark.hub_settings(sqlite_lock_timeout_seconds=0.3)
def test_ingest_behind_a_stuck_process_answers_503_so_the_sdk_sends_again(running_hub: RunningHub) -> None:
    """Past the writer lock's timeout ingest met StoreBusyError, which is no store refusal it knew: a 500, which
    Segment's SDKs take as final. It is a 503 with Retry-After, as a locked database is, and nothing is half kept."""
    lock_file = f"{running_hub.hub.store.engine.url.database}-writer.lock"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, lock_file], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        answer = running_hub.send(message("track", userId="u-busy", event="Cart Viewed"))
        assert (answer.status_code, answer.headers.get("retry-after")) == (503, "5"), answer.text
        let_go(process)
        assert running_hub.send(message("track", userId="u-busy", event="Cart Viewed")).status_code == 200
    finally:
        process.kill()
        process.wait()
