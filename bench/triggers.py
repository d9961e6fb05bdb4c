"""Trigger engine: pipeline throughput with 100 rules, accept -> first attempt latency, timer firing lag.

    .venv/bin/python bench/triggers.py [--events 5000] [--profiles 1000] [--rules 100]
                                       [--rate 200] [--seconds 10] [--timers 2000]

1. Throughput: the same events (spread over `--profiles` people) go through
   the whole pipeline (mapping, identity, triggers, routing, outbox) once
   with `--rules` generated rules and once with none; the ratio is what the
   trigger engine costs on top of the rest of the pipeline.
2. Latency: a running hub (pipeline, timer and delivery workers, the sandbox
   Twilio) is fed at a fixed `--rate` for `--seconds`; 5% of the events fire
   an SMS rule. Reported: time from the inbox commit (the 2xx) to the first
   delivery attempt, p50/p99/max.
3. Timers: `--timers` absence timers are armed by real events, then made due
   over the next few seconds; the timer worker fires them. Reported: lag
   from due time to fired, p50/p99/max, and timers fired per second.
4. Timer capacity: the same number of timers (of a rule with a cap) all due
   at once, fired by the timer engine in a loop on one thread, with no
   worker naps in between. Reported: timers fired per second and SQL
   statements per timer.

Throughput also reports SQL statements per event: on this store the time
goes mostly into running statements, so their count explains the rate.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import yaml
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.model import RawEvent
from hub.runtime import DEFAULT_SOURCE_ID, Hub
from hub.settings import PROJECT_MAPPINGS, HubSettings
from hub.store import inbox
from hub.store.schema import attempts, decisions, deliveries, timers, touchpoints
from hub.store.schema import inbox as inbox_table

EVENT_NAMES = [f"Bench Event {n:02d}" for n in range(50)]
PING_RULE = {"id": "bench_ping", "when": {"event": "Bench Ping"}, "respond": [{"channel": "sms", "template": "bench.j2"}]}


def generated_rules(count: int) -> list[dict]:
    """A mix of the rule kinds: event + where, count with distinct_by, recent, absence; the last is an SMS rule."""
    rules = []
    respond = [{"channel": "webhook", "template": "bench.j2", "endpoint": "bench"}]
    for i in range(count - 1):
        event, other = EVENT_NAMES[i % 50], EVENT_NAMES[(i + 7) % 50]
        when = [
            {"event": event, "where": [{"field": "properties.value", "op": "gte", "value": 90}]},
            {"count": {"event": event, "at_least": 3, "within": "10m", "distinct_by": "properties.sku"}},
            {"all": [{"event": event}, {"recent": {"event": other, "within": "1h"}}]},
            {"absence": {"after": {"event": event}, "without": {"event": other}, "within": "2m"}},
        ][i % 4]
        rules.append({"id": f"bench_{i:03d}", "when": when, "respond": respond, "cap": {"max": 1, "within": "1h"}})
    return [*rules, PING_RULE][:count]


def hub_with(folder: Path, rules: list[dict], **overrides: object) -> Hub:
    mappings = folder / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "templates" / "bench.j2").write_text("Bench message for {{ touchpoint.event }}")
    (mappings / "triggers.yaml").write_text(yaml.safe_dump({"rules": rules}))
    settings = HubSettings(_env_file=None, database_url=f"sqlite:///{folder}/bench.db", mappings_dir=str(mappings),  # type: ignore[call-arg]
                           log_level="WARNING", quiet_hours="", daily_message_cap=1000)
    return Hub(settings.with_overrides(**overrides))


def synthetic_event(profiles: int, rng: random.Random, ping_share: float = 0.0) -> dict:
    person = rng.randrange(profiles)
    at = (utcnow() - timedelta(seconds=rng.uniform(0, 3600))).isoformat()
    if rng.random() < ping_share:
        return {"type": "track", "messageId": str(uuid.uuid4()), "userId": f"user-{person}", "event": "Bench Ping",
                "context": {"traits": {"phone": f"+1415555{person % 10000:04d}"}}, "timestamp": utcnow().isoformat()}
    return {"type": "track", "messageId": str(uuid.uuid4()), "userId": f"user-{person}", "event": rng.choice(EVENT_NAMES),
            "properties": {"value": rng.randrange(100), "sku": f"sku-{rng.randrange(20)}"}, "timestamp": at}


def append(hub: Hub, events: list[dict]) -> None:
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent(DEFAULT_SOURCE_ID, e["messageId"], e) for e in events], utcnow())


class StatementCount:
    """Counts SQL statements sent to any database while the block runs."""

    def __enter__(self) -> "StatementCount":
        self.count = 0
        sqlalchemy_event.listen(Engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        sqlalchemy_event.remove(Engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: object) -> None:
        self.count += 1


@dataclass(frozen=True)
class Throughput:
    per_second: float
    cpu_ms: float  # process CPU per event: steadier than the rate on a shared box
    statements: float  # SQL statements per event


def throughput(rules: list[dict], events: list[dict]) -> Throughput:
    """Events through the pipeline on one thread, as `touchhub worker` runs it."""
    with tempfile.TemporaryDirectory() as folder:
        hub = hub_with(Path(folder), rules)
        for start in range(0, len(events), 500):
            append(hub, events[start:start + 500])
        with StatementCount() as statements:
            started, cpu = time.perf_counter(), time.process_time()
            while hub.pipeline.run_once():
                continue
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        hub.delivery.close()
        hub.store.dispose()
    return Throughput(len(events) / elapsed, cpu * 1000 / len(events), statements.count / len(events))


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms  (n={len(ordered)})"


def latency(rules: list[dict], profiles: int, rate: int, seconds: float) -> tuple[list[float], float]:
    """Accept -> first attempt for SMS deliveries at a fixed event rate; also the rate actually fed."""
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as folder, SandboxProviders() as sandbox:
        hub = hub_with(Path(folder), rules, worker_poll_seconds=0.05, **sandbox.settings_overrides())
        hub.start()
        per_tick = max(1, round(rate * 0.02))  # events fed every 20 ms
        started, sent = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            append(hub, [synthetic_event(profiles, rng, ping_share=0.05) for _ in range(per_tick)])
            hub.pipeline_wake.set()
            sent += per_tick
            time.sleep(max(0.0, started + sent / rate - time.perf_counter()))
        fed = sent / (time.perf_counter() - started)
        hub.wait_until_idle(timeout=300)
        with hub.store.read() as connection:
            rows = connection.execute(
                select(attempts.c.started_at, inbox_table.c.received_at)
                .join(deliveries, deliveries.c.delivery_id == attempts.c.delivery_id)
                .join(decisions, decisions.c.decision_id == deliveries.c.decision_id)
                .join(touchpoints, touchpoints.c.touchpoint_id == decisions.c.touchpoint_id)
                .join(inbox_table, inbox_table.c.id == touchpoints.c.inbox_id)
                .where(attempts.c.attempt_no == 1, deliveries.c.channel == "sms")
            ).all()
        hub.stop()
    return [(first - accepted).total_seconds() for first, accepted in rows], fed


ABSENCE_RULE = {"id": "bench_absence", "respond": [{"channel": "webhook", "template": "bench.j2"}],
                "when": {"absence": {"after": {"event": "Bench Cart"}, "without": "any", "within": "2m"}}}


def armed_hub(folder: Path, count: int, rule: dict) -> Hub:
    """A hub whose pipeline has armed `count` absence timers, one per person (arming is measured by throughput)."""
    hub = hub_with(folder, [rule])
    events = [{"type": "track", "messageId": str(uuid.uuid4()), "userId": f"cart-{n}", "event": "Bench Cart",
               "timestamp": utcnow().isoformat()} for n in range(count)]
    for start in range(0, count, 500):
        append(hub, events[start:start + 500])
    while hub.pipeline.run_once():
        continue
    return hub


def timer_lag(count: int, spread_seconds: float) -> tuple[list[float], float]:
    """Due -> fired for absence timers that come due over `spread_seconds`; and timers fired per second."""
    with tempfile.TemporaryDirectory() as folder:
        hub = armed_hub(Path(folder), count, ABSENCE_RULE)
        first_due = utcnow() + timedelta(seconds=1)
        with hub.store.write() as connection:  # here only when they come due matters
            ids = connection.execute(select(timers.c.timer_id).order_by(timers.c.timer_id)).scalars().all()
            for n, timer_id in enumerate(ids):
                due = first_due + timedelta(seconds=spread_seconds * n / max(1, len(ids)))
                connection.execute(update(timers).where(timers.c.timer_id == timer_id).values(due_at=due))
        hub.start()
        deadline = time.monotonic() + spread_seconds + 120
        while time.monotonic() < deadline:
            with hub.store.read() as connection:
                left = connection.execute(select(timers.c.timer_id).where(timers.c.status == "pending").limit(1)).first()
            if left is None:
                break
            time.sleep(0.2)
        with hub.store.read() as connection:
            rows = connection.execute(select(timers.c.due_at, timers.c.settled_at).where(timers.c.status == "fired")).all()
        hub.stop()
    lags = [(settled - due).total_seconds() for due, settled in rows]
    window = (max(settled for _, settled in rows) - min(due for due, _ in rows)).total_seconds() if rows else 1.0
    return lags, len(rows) / window


def timer_capacity(count: int) -> tuple[float, float]:
    """Timers fired per second by the engine alone, all due at once (a rule with a cap); and statements per timer."""
    with tempfile.TemporaryDirectory() as folder:
        hub = armed_hub(Path(folder), count, {**ABSENCE_RULE, "cap": {"max": 1, "within": "1h"}})
        with hub.store.write() as connection:
            connection.execute(update(timers).values(due_at=utcnow() - timedelta(seconds=1)))
        with StatementCount() as statements:
            started = time.perf_counter()
            while hub.timers.run_once():
                continue
            elapsed = time.perf_counter() - started
        hub.delivery.close()
        hub.store.dispose()
    return count / elapsed, statements.count / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--rate", type=int, default=200, help="events/s fed in the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--timers", type=int, default=2000)
    parser.add_argument("--timer-spread", type=float, default=5.0, help="timers come due over this many seconds")
    parser.add_argument("--only", choices=["throughput"], help="run only this measurement (short runs while tuning)")
    args = parser.parse_args()
    rng = random.Random(42)
    rules = generated_rules(args.rules)
    events = [synthetic_event(args.profiles, rng) for _ in range(args.events)]

    baseline, with_rules = throughput([], events), throughput(rules, events)
    for label, run in (("no rules ", baseline), (f"{len(rules):3d} rules", with_rules)):
        print(f"pipeline, {label}     : {run.per_second:8.0f} events/s   {run.cpu_ms:.2f} ms CPU/event"
              f"   {run.statements:.1f} statements/event")
    print(f"  ratio {with_rules.per_second / baseline.per_second:.2f}  ({args.events} events over {args.profiles} profiles)")
    if args.only == "throughput":
        return
    lags, fed = latency(rules, args.profiles, args.rate, args.seconds)
    print(f"accept -> first attempt : {percentiles(lags)}  at {fed:.0f} events/s fed")
    timer_lags, fired_per_second = timer_lag(args.timers, args.timer_spread)
    print(f"timer due -> fired      : {percentiles(timer_lags)}  ({fired_per_second:.0f} timers/s)")
    capacity, timer_statements = timer_capacity(args.timers)
    print(f"timer capacity          : {capacity:8.0f} timers/s   {timer_statements:.1f} statements/timer  (all due at once)")


if __name__ == "__main__":
    main()
