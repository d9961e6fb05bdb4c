"""SQLite writers in several processes take turns on a file lock, not in SQLite's sleeping busy handler."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from hub.store import Store, inbox


@pytest.fixture
def database(tmp_path: Path) -> str:
    Store(f"sqlite:///{tmp_path}/hub.db").migrate()
    return f"sqlite:///{tmp_path}/hub.db"


def lock_is_free(path: Path) -> bool:
    """Whether another open file description could take the lock now (another process's view)."""
    descriptor = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)  # closing also releases a lock it took
    return True


def test_a_write_transaction_holds_the_file_lock_beside_the_database(database: str, tmp_path: Path) -> None:
    store = Store(database)
    lock = tmp_path / "hub.db-writer.lock"
    with store.write() as connection:
        inbox.count_by_status(connection)
        assert not lock_is_free(lock)
    assert lock_is_free(lock)
    with store.read() as connection:  # readers never wait for writers (WAL)
        inbox.count_by_status(connection)
        assert lock_is_free(lock)
    store.dispose()


def test_a_second_store_on_the_file_waits_for_the_first_to_commit(database: str) -> None:
    first, second = Store(database), Store(database)  # as two processes would: separate connections and locks
    order: list[str] = []
    entered = threading.Event()

    def write_second() -> None:
        entered.set()
        with second.write():
            order.append("second")

    with first.write():
        waiter = threading.Thread(target=write_second)
        waiter.start()
        entered.wait()
        waiter.join(0.2)  # it stays blocked behind the first writer
        order.append("first")
    waiter.join()
    assert order == ["first", "second"]
    first.dispose()
    second.dispose()


def test_a_failed_transaction_releases_the_lock(database: str, tmp_path: Path) -> None:
    store = Store(database)
    with pytest.raises(RuntimeError), store.write():
        raise RuntimeError("the batch failed")
    assert lock_is_free(tmp_path / "hub.db-writer.lock")
    store.dispose()
