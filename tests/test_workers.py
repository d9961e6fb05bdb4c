"""The worker loop's naps: idle, backlog, and the timer worker's gathering."""

from __future__ import annotations

import threading
from datetime import timedelta

from hub.clock import utcnow
from hub.workers import Worker


def worker(**options: object) -> Worker:
    return Worker("test", lambda: 0, threading.Event(), poll_seconds=0.5, **options)  # type: ignore[arg-type]


def test_a_plain_worker_goes_on_after_any_work_and_naps_the_poll_when_idle() -> None:
    plain = worker()
    assert plain._nap_after(1) == 0
    assert plain._nap_after(0) == 0.5


def test_a_gathering_worker_waits_after_a_partial_set_and_goes_on_after_a_full_one() -> None:
    gathering = worker(full_batch=100, gather_seconds=0.1)
    assert gathering._nap_after(100) == 0  # a backlog
    assert gathering._nap_after(3) == 0.1
    assert gathering._nap_after(0) == 0.5


def test_an_idle_worker_naps_until_the_next_due_time() -> None:
    soon = worker(next_due=lambda: utcnow() + timedelta(seconds=0.2))
    assert 0.1 < soon._nap_after(0) <= 0.2
    assert worker(next_due=lambda: utcnow() + timedelta(hours=1))._nap_after(0) == 0.5


def test_producers_wake_a_gathering_worker_only_for_work_due_before_its_slack() -> None:
    gathering = worker(full_batch=100, gather_seconds=0.1)
    now = utcnow()
    gathering._looks_at = now + timedelta(seconds=0.1)  # napping after a partial set
    gathering.wake_by(now)
    assert not gathering._wake.is_set()  # due now: fired with the next set, at most 0.1 s late
    gathering._looks_at = now + timedelta(seconds=0.5)  # idle, looking again at the poll
    gathering.wake_by(now)
    assert gathering._wake.is_set()


def test_producers_wake_a_plain_worker_for_work_due_before_it_looks() -> None:
    plain = worker()
    now = utcnow()
    plain._looks_at = now + timedelta(seconds=0.5)
    plain.wake_by(now + timedelta(seconds=1))
    assert not plain._wake.is_set()
    plain.wake_by(now + timedelta(seconds=0.4))
    assert plain._wake.is_set()
