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
back after their lease. Only an exit (`EXITS`) ends the thread other than
`stop()`; the worker then records why (`death`), which the hub's liveness
probe and `touchhub worker` report, so a supervisor restarts the process
instead of leaving its events unprocessed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from hub.clock import utcnow

log = structlog.get_logger(__name__)
# What ends a worker's thread instead of failing one step: the interpreter or a caller asking to end. Anything else
# a step raises, BaseExceptions included (asyncio.CancelledError out of a send task), fails that step only.
EXITS = (SystemExit, KeyboardInterrupt, GeneratorExit)


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
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.death: str | None = None  # why the thread ended without `stop()`; None while it runs, or after a stop

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the worker to end after its step and wait `timeout` for it; whether the thread has ended (False: it
        is still in its step, using what it was given)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():  # a hub built for a one-off command (replay) never started its workers
            self._thread.join(timeout)
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
                if nap == 0:
                    continue
            except EXITS:
                raise
            except BaseException:  # a worker must outlive a bad batch; the rows come back after their lease
                log.exception("worker step failed", worker=self.name)
                nap = self._poll_seconds
            self._looks_at = utcnow() + timedelta(seconds=nap)
            self._wake.wait(nap)
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
