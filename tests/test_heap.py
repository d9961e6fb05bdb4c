"""Start-up objects are frozen out of full collections; start-up garbage is freed first, not frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from hub.heap import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process goes on making and dropping hubs


def test_garbage_is_freed_and_the_rest_frozen(unfrozen: None) -> None:
    kept, dropped = Node(), Node()
    dropped.other, kept.other = dropped, kept  # cycles: only a collection frees them
    gone = weakref.ref(dropped)
    del dropped
    freeze_startup_objects()
    assert gone() is None
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects())  # frozen objects leave the generations a pass walks
