"""Objects built at start-up leave the garbage collector's full passes.

A hub process holds a few hundred thousand long-lived objects from start-up:
SQLAlchemy, the provider SDKs, aiohttp, the mappings and rules. CPython's
full collection walks every one of them each time it runs, with the GIL held,
and a worker inside a write transaction holds the SQLite write lock through
it too. In the latency bench at 1,000 events/s these passes took 45-86 ms,
three times in 10 s in each process, and landed in the p99 of accept ->
first attempt. `gc.freeze()` after start-up moves them to a generation no
pass walks, so full passes cost what the objects made since cost. Frozen
objects that later become unreachable garbage in a cycle are never freed;
start-up objects live as long as the process, so none of note.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Call once the hub is built, before its workers start (`touchhub serve`, `touchhub worker`)."""
    gc.collect()  # what start-up already dropped is freed, not frozen
    gc.freeze()
