"""A background loop that does one unit of work at a time and naps when there is none.

Pipeline and delivery workers share this loop. Producers set the `wake`
event after they commit work, so an idle worker reacts in milliseconds
instead of at its next poll; the poll still catches work committed by other
processes and retries that come due.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Worker:
    def __init__(self, name: str, step: Callable[[], int], wake: threading.Event, poll_seconds: float) -> None:
        """`step` does a batch of work and returns how many items it handled (0 = idle)."""
        self.name = name
        self._step = step
        self._wake = wake
        self._poll_seconds = poll_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():  # a hub built for a one-off command (replay) never started its workers
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                handled = self._step()
            except Exception:  # a worker must outlive a bad batch; the rows come back after their lease
                log.exception("worker step failed", worker=self.name)
                handled = 0
            if handled == 0:
                self._wake.wait(self._poll_seconds)
                self._wake.clear()
