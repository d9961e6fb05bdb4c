"""A background loop that does one unit of work at a time and naps when there is none.

Pipeline, timer and delivery workers share this loop. Producers set the
`wake` event after they commit work, so an idle worker reacts in
milliseconds instead of at its next poll; the poll still catches work
committed by other processes and retries that come due. A worker whose work
comes due at a known time (timers) naps only until then, and producers of
such work wake it through `wake_by` only when it would otherwise sleep past
the new work's time.

A worker may also gather: after a step that found less than a full batch it
waits `gather_seconds` before the next, so work that trickles in is done in
fewer, larger sets, and producers do not wake it for work due within that
slack. The timer worker gathers: its timers only need to fire within a
second of due, and each set it fires has costs of its own (its claim, its
shared reads, its commit) and holds the write lock while it runs.

A step that fails is logged and the worker goes on: the rows it claimed come
back after their lease. A run of failures (a database outage) backs off, the
nap doubling from the poll up to `BACKOFF_CAP_SECONDS`, and is logged as a
run (`Failures`): one traceback, then a count, then a line when the step works
again, so an outage neither spins the CPU nor buries the log. Only an exit
(`EXITS`) ends the thread other than a stop; the worker then records why
(`death`), which the hub's liveness probe and `touchhub worker` report, so a
supervisor restarts the process instead of leaving its events unprocessed.

A hub stops its workers together (`stop_workers`): all are asked first, then
joined against one deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog

from hub.clock import utcnow

log = structlog.get_logger(__name__)
# What ends a worker's thread instead of failing one step: the interpreter or a caller asking to end. Anything else
# a step raises, BaseExceptions included (asyncio.CancelledError out of a send task), fails that step only.
EXITS = (SystemExit, KeyboardInterrupt, GeneratorExit)
# The longest nap between the tries of a step that keeps failing (unless the worker's poll is longer).
BACKOFF_CAP_SECONDS = 30.0
# How often a run of the same failure is summed up in the log, after the first, which is logged with its traceback.
STILL_FAILING_EVERY_SECONDS = 60.0


def stop_workers(workers: Sequence[Worker], join_seconds: float) -> list[Worker]:
    """Ask every worker to stop, then wait for them all against one deadline; those still in their step after it.

    Asking all first means no worker claims new work while another is joined,
    and the whole stop takes `join_seconds` at most, not that much per worker:
    a supervisor's grace period (Kubernetes: 30 s, then SIGKILL) covers it.
    """
    for worker in workers:
        worker.request_stop()
    deadline = time.monotonic() + join_seconds
    return [worker for worker in workers if not worker.join(deadline)]


def failure_kind(exc: BaseException) -> str:
    """What makes two failures the same: the exception's type and the first line of its message (SQLAlchemy puts
    the statement and its parameters, which differ at every try, on the lines after)."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class Failures:
    """A worker's run of failed steps: the nap before the next try, and what the log says about the run.

    The first failure of a kind is logged with its traceback; repeats of it are
    counted and summed up every `STILL_FAILING_EVERY_SECONDS`, without one; the
    first step that works again ends the run with a line of its own.
    """

    def __init__(self, worker: str, poll_seconds: float) -> None:
        self._worker = worker
        self._poll = poll_seconds
        self._failed = 0  # steps failed in a row, of any kind, since `_run_since`
        self._run_since = utcnow()
        self._backoff = 0.0  # the nap after the last of them
        self._kind: str | None = None  # the kind of the last failure: `_repeats` of it since `_since`
        self._repeats = 0
        self._since = utcnow()
        self._said_at = 0.0  # time.monotonic() of the last line about this kind

    def failed(self, exc: BaseException) -> float:
        """Log the failure `exc` as a new kind or a repeat; the nap before the next try, doubled from the last."""
        if not self._failed:
            self._run_since = utcnow()
        self._failed += 1
        self._backoff = min(max(self._poll, BACKOFF_CAP_SECONDS), self._backoff * 2) if self._backoff else self._poll
        kind = failure_kind(exc)
        if kind == self._kind:
            self._repeated()
        else:
            self._kind, self._repeats, self._since, self._said_at = kind, 1, utcnow(), time.monotonic()
            log.error("worker step failed", worker=self._worker, retry_in_seconds=self._backoff, exc_info=exc)
        return self._backoff

    def _repeated(self) -> None:
        """Count a repeat of the last failure; sum the run up if its last line is `STILL_FAILING_EVERY_SECONDS` old."""
        self._repeats += 1
        if time.monotonic() - self._said_at < STILL_FAILING_EVERY_SECONDS:
            return
        self._said_at = time.monotonic()
        log.error(
            "worker step still failing", worker=self._worker, error=self._kind, failures=self._repeats,
            since=self._since.isoformat(), retry_in_seconds=self._backoff,
        )

    def ended(self) -> None:
        """A step worked: if it ends a run of failures, say so and start the next run afresh."""
        if not self._failed:
            return
        log.info("worker step works again", worker=self._worker, failures=self._failed, since=self._run_since.isoformat())
        self._failed, self._backoff, self._kind = 0, 0.0, None


class Worker:
    def __init__(
        self, name: str, step: Callable[[], int], wake: threading.Event, poll_seconds: float,
        next_due: Callable[[], datetime | None] | None = None, full_batch: int = 1, gather_seconds: float = 0.0,
    ) -> None:
        """`step` does a batch of work and returns how many items it handled (0 = idle).

        `next_due`, asked after an idle step, says when work comes due next (None: nothing waits);
        the worker naps until then, or `poll_seconds` at most. After a step that handled fewer than
        `full_batch` items it waits `gather_seconds` (after a full one it goes on at once: a backlog).
        """
        self.name = name
        self._step = step
        self._wake = wake
        self._poll_seconds = poll_seconds
        self._next_due = next_due
        self._full_batch = full_batch
        self._gather = timedelta(seconds=gather_seconds)
        self._looks_at: datetime | None = None  # when the napping worker looks for work next; None while it works
        self._failures = Failures(name, poll_seconds)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.death: str | None = None  # why the thread ended without `stop()`; None while it runs, or after a stop

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the worker to end after its step and wait `timeout` for it; whether the thread has ended (False: it
        is still in its step, using what it was given)."""
        return not stop_workers([self], timeout)

    def request_stop(self) -> None:
        """Ask the worker to end after its step: it starts no other, and a nap ends at once."""
        self._stopping.set()
        self._wake.set()

    def join(self, deadline: float) -> bool:
        """Wait until `deadline` (a `time.monotonic()`) for the thread to end; whether it has ended."""
        if self._thread.is_alive():  # a hub built for a one-off command (replay) never started its workers
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def wake_by(self, at: datetime) -> None:
        """Work due at `at` was committed: wake the worker unless it looks for work by then anyway.

        `_looks_at` is cleared before each step reads the store: a producer
        that finds it cleared wakes the worker (its step may have read before
        the commit), one that finds it set compares with when it looks next.
        """
        looks_at = self._looks_at
        if looks_at is None or at + self._gather < looks_at:
            self._wake.set()

    def _run(self) -> None:
        """The loop, and the record of its end when anything but `stop()` ended it: a thread that dies says nothing."""
        try:
            self._loop()
        except BaseException as exc:  # an exit, or a failure outside the step (the loop fails a step on the rest)
            self.death = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.error("worker died; restart the process", worker=self.name, reason=self.death, exc_info=exc)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._looks_at = None
            try:
                nap = self._nap_after(self._step())
            except EXITS:
                raise
            except BaseException as exc:  # a worker must outlive a bad batch; the rows come back after their lease
                self._back_off(self._failures.failed(exc))
                continue
            self._failures.ended()
            if nap:
                self._nap(nap)

    def _nap(self, seconds: float) -> None:
        """Wait `seconds`, or until a producer wakes the worker for new work (or a stop)."""
        self._looks_at = utcnow() + timedelta(seconds=seconds)
        self._wake.wait(seconds)
        self._wake.clear()

    def _back_off(self, seconds: float) -> None:
        """Wait `seconds` after a failed step, ended early by a stop only: a producer's wake would try the failing
        step again at once and undo the backoff."""
        self._looks_at = utcnow() + timedelta(seconds=seconds)
        self._stopping.wait(seconds)
        self._wake.clear()

    def _nap_after(self, handled: int) -> float:
        """How long to wait after a step that handled `handled` items (0: step again at once)."""
        if handled >= self._full_batch:
            return 0.0
        if handled:
            return self._gather.total_seconds()
        return self._idle_nap()

    def _idle_nap(self) -> float:
        due = self._next_due() if self._next_due is not None else None
        if due is None:
            return self._poll_seconds
        return min(self._poll_seconds, max(0.0, (due - utcnow()).total_seconds()))
