"""Timers at 1M pending: do due timers still fire within 1 s of due when a million wait (issue 5)?

    .venv/bin/python bench/timers.py [--pending 1000000] [--window 600] [--measure 60]
                                     [--baseline 10000] [--burst 10000] [--lead 5] [--seed-rate 5000]

The store is seeded with `--pending` absence timers of bench/triggers.py's
`ABSENCE_RULE`, one per person (the rule keeps one pending timer per profile:
a second cart event supersedes the first), coming due evenly over `--window`
seconds, the first `--lead` seconds after seeding ends. A running hub (as
`Hub.start()` runs it, as in bench/triggers.py's `timer_lag`) fires them;
for the first `--measure` seconds after the first is due the bench reports
timers fired per second, due -> fired lag (to `settled_at`) p50/p99/max, the
CPU each fired timer cost the process (all its workers), and the backlog:
timers due by the end of the sample and not fired by then. Most of the
`--pending` timers are still pending when the sample ends.

Then, the hub's workers stopped, the timer engine alone fires the next
`--burst` timers at once in a loop on one thread (bench/triggers.py's
`fire_due`, as its `timer_capacity` runs it, on this store): timers/s and CPU per timer.

The baseline, in the same run and first: `--baseline` timers at the same due
rate (all of them come due within its sample) and its burst after them,
fired by a hub whose store holds nothing else. The two side by side say what
1M pending costs: index depth, the claim, the worker's idle read of the next
due time, the pipeline's cancel.

Arming 1M timers through the pipeline would take about ten minutes, so the
rows the pipeline writes for a cart event are seeded instead, in chunks of
driver-level executemany on the store's connection (`precompiled.Precompiled`, with
the columns' own conversions): the profile, its `user_id` identifier, the
anchor touchpoint and the pending timer. They are copies of the rows the
pipeline wrote for one real cart event in the same store (the template, then
deleted), with what differs per event set as the pipeline sets it: message
id, user id, touchpoint id (`derived_id(source, message id)`), profile id (a
new ULID), timer id (`derived_id("timer", rule, touchpoint)`), event time
(due time less the rule's `within`, so due_at - anchor_at is the rule's wait)
and inbox id. Inbox rows are not seeded: the timer engine never reads them.
tests/test_timer_seeding.py checks a seeded event's rows against the rows the
pipeline writes for the same event, and that the timer engine fires them.

Finally the timer engine's statements are run under EXPLAIN QUERY PLAN on the
seeded store and printed: each should search an index, never scan the table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.progress import Progress
from sqlalchemy import Connection, Table, delete, func, insert, select
from ulid import ULID

from triggers import ABSENCE_RULE, StatementLog, append, fire_due, hub_with, percentiles, workers_process
from hub.clock import utcnow
from hub.logs import configure_logging
from hub.model import derived_id
from hub.runtime import Hub
from hub.settings import WORKER_ROLES
from hub.store import precompiled, sql
from hub.store.schema import identifiers, profiles, timers, touchpoints

SEEDED = (profiles, identifiers, touchpoints, timers)  # parents first, as the pipeline writes them
CHUNK = 20_000  # events seeded per transaction
SEED_RATE = 5_000  # events seeded per second, with room to spare (6,700-11,000 on the bench box): sets the first due time


def cart_event(user: str, message_id: str) -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "userId": user, "event": "Bench Cart",
            "timestamp": utcnow().isoformat()}


def pipeline_rows(hub: Hub, user: str, message_id: str) -> dict[str, dict[str, Any]]:
    """The rows (by table name) the pipeline writes for one cart event of a new person, as stored."""
    append(hub, [cart_event(user, message_id)])
    while hub.pipeline.run_once():
        continue
    with hub.store.read() as connection:
        touchpoint = connection.execute(select(touchpoints).where(touchpoints.c.message_id == message_id)).mappings().one()
        profile_id, touchpoint_id = touchpoint["profile_id"], touchpoint["touchpoint_id"]
        return {
            "profiles": _one(connection, profiles, profiles.c.profile_id == profile_id),
            "identifiers": _one(connection, identifiers, identifiers.c.touchpoint_id == touchpoint_id),
            "touchpoints": dict(touchpoint),
            "timers": _one(connection, timers, timers.c.touchpoint_id == touchpoint_id),
        }


def _one(connection: Connection, table: Table, where: Any) -> dict[str, Any]:
    return dict(connection.execute(select(table).where(where)).mappings().one())


def template(hub: Hub) -> dict[str, dict[str, Any]]:
    """The pipeline's rows for one cart event, which seeded rows copy; removed from the store again."""
    rows = pipeline_rows(hub, "template", str(uuid.uuid4()))
    with hub.store.write() as connection:
        for table in SEEDED:
            key = table.primary_key.columns.values()[0]
            connection.execute(delete(table).where(key == rows[table.name][key.name]))
    return rows


def seeded_rows(rows: dict[str, dict[str, Any]], user: str, message_id: str, inbox_id: int,
                due_at: datetime) -> dict[str, dict[str, Any]]:
    """The rows the pipeline would write for a cart event of a new person `user` whose timer is due at `due_at`,
    made from the `rows` it wrote for another."""
    timer, touchpoint = rows["timers"], rows["touchpoints"]
    profile_id = str(ULID())
    touchpoint_id = derived_id(touchpoint["source_id"], message_id)
    anchor_at = due_at - (timer["due_at"] - timer["anchor_at"])
    return {
        "profiles": {**rows["profiles"], "profile_id": profile_id},
        "identifiers": {**rows["identifiers"], "value": user, "profile_id": profile_id, "origin_profile_id": profile_id,
                        "touchpoint_id": touchpoint_id},
        "touchpoints": {**touchpoint, "touchpoint_id": touchpoint_id, "message_id": message_id, "inbox_id": inbox_id,
                        "profile_id": profile_id, "occurred_at": anchor_at,
                        "identifiers": [[type_, user] for type_, _ in touchpoint["identifiers"]]},
        "timers": {**timer, "timer_id": derived_id("timer", timer["rule_id"], touchpoint_id), "profile_id": profile_id,
                   "touchpoint_id": touchpoint_id, "anchor_at": anchor_at, "due_at": due_at},
    }


def seed(hub: Hub, rows: dict[str, dict[str, Any]], count: int, first_due: datetime, window: float) -> None:
    """`count` people's cart events' rows, their timers due evenly over `window` seconds from `first_due`."""
    inserts = {table.name: precompiled.Precompiled(insert(table), list(rows[table.name])) for table in SEEDED}
    with Progress(transient=True) as progress:
        task = progress.add_task(f"seeding {count:,} timers", total=count)
        for chunk in _chunks(count):
            events = [
                seeded_rows(rows, f"seed-{n}", f"seed-cart-{n}", rows["touchpoints"]["inbox_id"] + 1 + n,
                            first_due + timedelta(seconds=window * n / count))
                for n in chunk
            ]
            with hub.store.write() as connection:
                for table in SEEDED:
                    inserts[table.name].execute(connection, [event[table.name] for event in events])
            progress.advance(task, len(chunk))


def _chunks(count: int) -> Iterator[range]:
    return (range(start, min(count, start + CHUNK)) for start in range(0, count, CHUNK))


@dataclass(frozen=True)
class Sample:
    pending: int
    due_per_second: float
    fired_per_second: float
    lags: list[float]
    backlog: int  # due by the end of the sample, not fired by then
    overdue: int  # of the backlog, due more than 1 s before the end
    cpu_ms: float  # process CPU per fired timer, all workers
    seeding: float  # seconds the seeding took
    margin: float  # seconds from the end of seeding to the first due time
    capacity: tuple[float, float]  # the engine alone, all due at once: timers/s, CPU ms per timer
    plans: dict[str, list[str]]  # statement -> its query plan, on the seeded store


def sample(pending: int, window: float, measure: float, lead: float, seed_rate: float, burst: int,
           split: Sequence[str] = ()) -> Sample:
    """Seed `pending` timers due over `window` seconds, run the hub, and measure its first `measure` seconds;
    then, the workers stopped, the engine alone firing the next `burst` timers at once.

    `split`: groups of workers run in hub processes of their own (as `bench/triggers.py --split`); CPU per
    fired timer then adds their threads' CPU from their start (they idle through the seeding)."""
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder, ExitStack() as processes:
        elsewhere = {name for group in split for name in group.split(",")}
        hub = hub_with(Path(folder), [ABSENCE_RULE], workers=",".join(n for n in WORKER_ROLES if n not in elsewhere))
        rows = template(hub)
        first_due = utcnow() + timedelta(seconds=pending / seed_rate + lead)
        seeding = time.perf_counter()
        seed(hub, rows, pending, first_due, window)
        seeding, margin = time.perf_counter() - seeding, (first_due - utcnow()).total_seconds()
        stops = [processes.enter_context(workers_process(spawn, hub.settings.with_overrides(workers=group)))
                 for group in split]
        hub.start()
        _sleep_until(first_due)
        cpu = time.process_time()
        _sleep_until(first_due + timedelta(seconds=measure))
        cpu, end = time.process_time() - cpu, utcnow()
        cpu += sum(sum(stop().values()) for stop in stops)
        with hub.store.read() as connection:
            settled = connection.execute(
                select(timers.c.due_at, timers.c.settled_at)
                .where(timers.c.status == "fired", timers.c.due_at <= end, timers.c.settled_at <= end)
            ).all()
            due, overdue = (
                connection.execute(select(func.count()).select_from(timers).where(timers.c.due_at <= at)).scalar_one()
                for at in (end, end - timedelta(seconds=1))
            )
        hub.stop()
        burst_at = end + timedelta(seconds=burst * window / pending)
        capacity = fire_due(hub, burst_at)
        plans = query_plans(hub, burst_at + timedelta(seconds=1), f"seed-{pending - 1}")
    lags = [(settled_at - due_at).total_seconds() for due_at, settled_at in settled]
    on_time = sum(1 for due_at, settled_at in settled if due_at <= end - timedelta(seconds=1))
    return Sample(pending, pending / window, len(settled) / measure, lags, due - len(settled), overdue - on_time,
                  cpu * 1000 / max(1, len(settled)), seeding, margin, capacity, plans)


def _sleep_until(at: datetime) -> None:
    time.sleep(max(0.0, (at - utcnow()).total_seconds()))


def report(label: str, run: Sample) -> None:
    print(f"{label:>9} {run.pending:>9,} pending  due {run.due_per_second:6.0f}/s  fired {run.fired_per_second:6.0f}/s"
          f"  {run.cpu_ms:.2f} ms CPU/timer  backlog {run.backlog:,} ({run.overdue:,} over 1 s)"
          f"  (seeded in {run.seeding:.0f} s, {run.margin:.1f} s before due)")
    print(f"          due -> fired: {percentiles(run.lags)}")
    print(f"          engine alone, the next timers all due: {run.capacity[0]:6.0f} timers/s  {run.capacity[1]:.2f} ms CPU/timer")


def query_plans(hub: Hub, now: datetime, user: str) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of the statements on the timers table that the timer engine (idle read, claim, settle)
    and the pipeline (a follow-up event of `user` cancelling and re-arming a timer) run on the hub's store, as
    they ran them; the hub's workers stopped."""
    with StatementLog() as statements:
        hub.timers.run_once(now)
        append(hub, [cart_event(user, str(uuid.uuid4()))])
        while hub.pipeline.run_once():
            continue
    with hub.store.read() as connection:
        plans = {text: sql.query_plan(connection, text, parameters) for text, parameters in statements.on("timers")}
    hub.store.dispose()
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--window", type=float, default=600.0, help="the timers come due over this many seconds")
    parser.add_argument("--measure", type=float, default=60.0, help="seconds of firing measured")
    parser.add_argument("--baseline", type=int, default=10_000, help="pending timers of the baseline (same due rate)")
    parser.add_argument("--burst", type=int, default=10_000, help="timers the engine fires alone after the sample")
    parser.add_argument("--lead", type=float, default=5.0, help="seconds from the end of seeding to the first due")
    parser.add_argument("--seed-rate", type=float, default=SEED_RATE, help="events seeded/s, to set the first due time")
    parser.add_argument("--split", action="append", default=[], metavar="WORKERS",
                        help="run these workers (e.g. timers) in a hub process of their own; repeat for more processes")
    args = parser.parse_args()
    configure_logging("WARNING")  # a line per dead delivery would cost the workers more than firing
    rate = args.pending / args.window
    baseline = args.baseline + args.burst  # the burst comes due after the sample
    report("baseline", sample(baseline, baseline / rate, min(args.measure, args.baseline / rate), args.lead,
                              args.seed_rate, args.burst, args.split))
    run = sample(args.pending, args.window, args.measure, args.lead, args.seed_rate, args.burst, args.split)
    report("pending", run)
    for statement, plan in run.plans.items():
        print(f"plan: {' | '.join(plan)}\n      of {' '.join(statement.split())[:160]}")

if __name__ == "__main__":
    main()
