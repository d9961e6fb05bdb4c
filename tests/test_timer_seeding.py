"""bench/timers.py seeds 1M timers as copies of the pipeline's rows: the copies must be what the pipeline writes,
or the bench measures another store than the hub's, and the timer engine must fire them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import select

from hub.clock import utcnow
from hub.store.schema import decisions, timers

BENCH = Path(__file__).resolve().parents[1] / "bench"
PROCESSING_TIMES = {"created_at", "updated_at", "first_seen_at", "received_at"}  # when the pipeline ran, not the event


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    import timers as bench_timers  # bench/timers.py, run as a script from bench/

    return bench_timers


def _comparable(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows without their profile ids (a new ULID per profile) and the times the pipeline ran."""
    return {table: {column: value for column, value in row.items()
                    if column not in PROCESSING_TIMES and not column.endswith("profile_id")}
            for table, row in rows.items()}


def test_seeded_rows_are_the_rows_the_pipeline_writes_for_the_same_event(bench: ModuleType, tmp_path: Path) -> None:
    hub = bench.hub_with(tmp_path, [bench.ABSENCE_RULE])
    template = bench.template(hub)
    written = bench.pipeline_rows(hub, "seed-3", "seed-cart-3")
    seeded = bench.seeded_rows(template, "seed-3", "seed-cart-3", written["touchpoints"]["inbox_id"],
                               written["timers"]["due_at"])

    assert _comparable(seeded) == _comparable(written)
    profile_ids = {value for row in seeded.values() for column, value in row.items() if column.endswith("profile_id")}
    assert len(profile_ids) == 1 and profile_ids != {written["profiles"]["profile_id"]}
    hub.store.dispose()


def test_the_timer_engine_fires_seeded_timers(bench: ModuleType, tmp_path: Path) -> None:
    hub = bench.hub_with(tmp_path, [bench.ABSENCE_RULE])
    first_due = utcnow() - timedelta(seconds=10)
    bench.seed(hub, bench.template(hub), 3, first_due, window=3)

    assert hub.timers.run_once(first_due + timedelta(seconds=5)) == 3
    with hub.store.read() as connection:
        fired = connection.execute(select(timers.c.status, timers.c.decision_id)).all()
        decided = set(connection.execute(select(decisions.c.decision_id)).scalars())
    assert {status for status, _ in fired} == {"fired"} and {decision for _, decision in fired} == decided
    assert len(decided) == 3
    hub.store.dispose()
