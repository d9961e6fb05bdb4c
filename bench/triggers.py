"""Trigger engine: pipeline throughput with 100 rules, accept -> first attempt latency, timer firing lag.

    .venv/bin/python bench/triggers.py [--events 5000] [--profiles 1000] [--rules 100]
                                       [--rate 200] [--seconds 10] [--webhook-delay-ms 0] [--timers 2000]

1. Throughput: the same events (spread over `--profiles` people) go through
   the whole pipeline (mapping, identity, triggers, routing, outbox) once
   with `--rules` generated rules and once with none; the ratio is what the
   trigger engine costs on top of the rest of the pipeline.
2. Latency: a running hub (pipeline, timer and delivery workers) is fed at a
   fixed `--rate` for `--seconds` by a feeder process that commits prebuilt
   events 20 to a transaction, as /v1/batch requests commit them; the sandbox
   providers answer from a third process. 5% of the events fire an SMS rule.
   Reported: time from the inbox commit (the 2xx) to the first delivery
   attempt, p50/p99/max, the rate actually fed, and that time cut into
   stages (queued before the pipeline claims the event, its batch until
   commit, until the delivery worker's claim, the claim, until the send);
   and the attempts the delivery worker made per event fed, by channel: the
   99 generated rules' webhooks outnumber the SMS about ten to one, so the
   delivery threads' CPU is per send, not per SMS.
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
import bisect
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.heap import freeze_startup_objects
from hub.logs import configure_logging
from hub.model import RawEvent
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS, WORKER_ROLES, HubSettings
from hub.sources import DEFAULT_SOURCE_ID
from hub.store import Store, inbox
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


class StatementLog:
    """The SQL statements sent to any database while the block runs: how many, and each text with its
    first set of parameters."""

    def __enter__(self) -> "StatementLog":
        self.count = 0
        self.statements: dict[str, Any] = {}
        sqlalchemy_event.listen(Engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        sqlalchemy_event.remove(Engine, "before_cursor_execute", self._seen)

    def _seen(self, connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        self.count += 1
        self.statements.setdefault(statement, parameters[0] if many else parameters)

    def on(self, table: str) -> list[tuple[str, Any]]:
        """The statements naming `table`, other than EXPLAIN's own."""
        return [(text, parameters) for text, parameters in self.statements.items()
                if f" {table}" in text and not text.startswith("EXPLAIN")]


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
        with StatementLog() as statements:
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


REQUEST_EVENTS = 20  # events per /v1/batch request in the latency run, committed in one inbox transaction
STAGES = ("inbox -> pipeline claim", "pipeline batch -> commit", "commit -> delivery claim", "delivery claim",
          "claim -> send starts")
SPLIT_STAGES = (*STAGES[:2], "commit -> send starts")  # `--split` delivery: its claims happen in another process


def requests_of(profiles: int, rate: int, seconds: float) -> list[list[RawEvent]]:
    """The latency run's events, built before its clock starts, cut into /v1/batch-sized requests; 5% ping by SMS."""
    rng = random.Random(7)
    events = [synthetic_event(profiles, rng, ping_share=0.05) for _ in range(round(rate * seconds))]
    raw = [RawEvent(DEFAULT_SOURCE_ID, event["messageId"], event) for event in events]
    return [raw[start:start + REQUEST_EVENTS] for start in range(0, len(raw), REQUEST_EVENTS)]


def feed(database_url: str, requests: list[list[RawEvent]], rate: int, to_hub: Connection) -> None:
    """The feeder process: each request's events committed in one transaction at its time, as ingest commits them.

    It runs apart from the hub, as an HTTP front end would (`touchhub serve`
    beside `touchhub worker`), so building and committing requests takes no
    GIL time from the hub's workers. It tells the hub after each commit (the
    hub wakes its pipeline, as the ingest route does), and last sends the rate
    it achieved: behind schedule it catches up, so a rate short of the one
    asked means it could not commit faster.
    """
    store = Store(database_url)
    started = time.perf_counter()
    for n, events in enumerate(requests):
        time.sleep(max(0.0, started + n * REQUEST_EVENTS / rate - time.perf_counter()))
        with store.write() as connection:
            inbox.append(connection, events, utcnow())
        to_hub.send(None)
    to_hub.send(sum(map(len, requests)) / (time.perf_counter() - started))
    store.dispose()


def fed_rate(from_feeder: Connection, wake: threading.Event) -> float:
    """Wake the pipeline after each of the feeder's commits; the rate it fed at, when it is done."""
    while (message := from_feeder.recv()) is None:
        wake.set()
    return message


class Transactions:
    """When each hub thread began and committed its transactions: the store keeps no commit or claim times.

    A begin is seen once the transaction holds the write lock (after SQLite's BEGIN IMMEDIATE).
    """

    def __init__(self, engine: Engine) -> None:
        self.times: dict[tuple[str, str], list[datetime]] = defaultdict(list)
        for moment in ("begin", "commit"):
            sqlalchemy_event.listen(engine, moment, partial(self._seen, moment))

    def _seen(self, moment: str, _connection: object) -> None:
        self.times[threading.current_thread().name, moment].append(utcnow())

    def stages(self, received: datetime, processed: datetime, started: datetime) -> tuple[float, ...]:
        """`STAGES` of one SMS: its pipeline batch's claim (`processed_at`) and commit, the delivery claim it was in."""
        committed = _after(self.times["pipeline", "commit"], processed)
        if self.times["delivery", "commit"]:
            claimed = _before(self.times["delivery", "commit"], started)
            claiming = _before(self.times["delivery", "begin"], claimed)
            moments = (received, processed, committed, claiming, claimed, started)
        else:  # the delivery worker runs in another process: `SPLIT_STAGES`
            moments = (received, processed, committed, started)
        return tuple((later - earlier).total_seconds() for earlier, later in zip(moments, moments[1:]))


def _after(times: list[datetime], moment: datetime) -> datetime:
    return times[bisect.bisect_left(times, moment)]


def _before(times: list[datetime], moment: datetime) -> datetime:
    return times[bisect.bisect_right(times, moment) - 1]


@dataclass(frozen=True)
class LatencyRun:
    lags: list[float]  # inbox commit -> first SMS attempt starts
    fed: float  # events/s the feeder achieved
    cpu_ms: Counter[str]  # the hub's CPU per event fed, until it is idle again, by thread (`thread_cpu`)
    stages: dict[str, list[float]]  # the lags cut at STAGES
    answers: list[float]  # how long the sandbox Twilio took to answer (after the interval)
    sends: Counter[str]  # attempts made, by channel


def thread_cpu() -> Counter[str]:
    """CPU seconds this process's threads have used, by worker (sends: the delivery engine's send threads).

    Read from /proc (Linux): the split says which worker a GIL-bound hub
    process spends its one core on, which the process total cannot.
    """
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    used: Counter[str] = Counter()
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(task.name), "other")
        worker = "sends" if name.startswith("send") else name if name in ("pipeline", "timers", "delivery") else "other"
        used[worker] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return used


def serve_sandbox(to_hub: Connection, webhook_delay_seconds: float) -> None:
    """The sandbox providers' process: a real provider answers from elsewhere, not on the hub's GIL."""
    with SandboxProviders() as sandbox:
        sandbox.webhooks.delay_seconds = webhook_delay_seconds
        to_hub.send(sandbox.settings_overrides())
        to_hub.recv()  # the run is over


@contextmanager
def sandbox_process(spawn: SpawnContext, webhook_delay_seconds: float) -> Iterator[dict]:
    """Run the sandbox providers in a process of their own; yields the settings that point the hub at them."""
    here, there = spawn.Pipe()
    providers = spawn.Process(target=serve_sandbox, args=(there, webhook_delay_seconds))
    providers.start()
    try:
        yield here.recv()
    finally:
        here.send(None)
        providers.join()


def serve_workers(settings: dict[str, Any], to_bench: Connection) -> None:
    """A second hub process running the workers in `settings` (`--split`); sends back its threads' CPU when told to stop."""
    hub = Hub(HubSettings(_env_file=None, **settings))  # type: ignore[call-arg]
    freeze_startup_objects()  # as `touchhub worker` does
    hub.start()
    cpu = thread_cpu()
    to_bench.send(None)  # running
    to_bench.recv()  # the run is over and the store idle
    to_bench.send(thread_cpu() - cpu)
    hub.stop()


@contextmanager
def workers_process(spawn: SpawnContext, settings: HubSettings) -> Iterator[Callable[[], Counter[str]]]:
    """Run `settings`' workers in a process of their own; yields what tells it to stop and returns its threads' CPU."""
    here, there = spawn.Pipe()
    process = spawn.Process(target=serve_workers, args=(settings.model_dump(), there))
    process.start()
    here.recv()
    stopped: list[Counter[str]] = []

    def stop() -> Counter[str]:
        here.send(None)
        stopped.append(here.recv())
        return stopped[0]

    try:
        yield stop
    finally:
        if not stopped:  # the run failed before its end
            stop()
        process.join()


def latency(
    rules: list[dict], profiles: int, rate: int, seconds: float, split: Sequence[str] = (), webhook_delay_seconds: float = 0.0,
) -> LatencyRun:
    """Accept -> first attempt for SMS deliveries at a fixed event rate, fed by another process.

    `split`: groups of workers ("timers,delivery") that each run in a hub
    process of their own (HUB_WORKERS), woken by the bench hub's pipeline
    through `hub.wakeups`; the bench's hub runs the workers left. With the
    delivery worker elsewhere the stages are `SPLIT_STAGES`. The sandbox's
    webhook receivers answer after `webhook_delay_seconds`, as real ones take
    their time.
    """
    requests = requests_of(profiles, rate, seconds)
    spawn = multiprocessing.get_context("spawn")  # a fork would copy the locks of the hub's running threads
    elsewhere = {name for group in split for name in group.split(",")}
    with (
        tempfile.TemporaryDirectory() as folder,
        sandbox_process(spawn, webhook_delay_seconds) as sandbox,
        ExitStack() as processes,
    ):
        here = ",".join(name for name in WORKER_ROLES if name not in elsewhere)
        hub = hub_with(Path(folder), rules, worker_poll_seconds=0.05, workers=here, **sandbox)
        stops = [
            processes.enter_context(workers_process(spawn, hub.settings.with_overrides(workers=group)))
            for group in split
        ]
        transactions = Transactions(hub.store.engine)
        freeze_startup_objects()  # as `touchhub serve` does
        hub.start()
        from_feeder, to_hub = spawn.Pipe(duplex=False)
        feeder = spawn.Process(target=feed, args=(hub.settings.database_url, requests, rate, to_hub))
        feeder.start()
        cpu = thread_cpu()
        fed = fed_rate(from_feeder, hub.pipeline_wake)
        feeder.join()
        hub.wait_until_idle(timeout=300)
        cpu = sum((stop() for stop in stops), thread_cpu() - cpu)
        with hub.store.read() as connection:
            rows = connection.execute(
                select(inbox_table.c.received_at, inbox_table.c.processed_at, attempts.c.started_at, attempts.c.duration_ms)
                .join(deliveries, deliveries.c.delivery_id == attempts.c.delivery_id)
                .join(decisions, decisions.c.decision_id == deliveries.c.decision_id)
                .join(touchpoints, touchpoints.c.touchpoint_id == decisions.c.touchpoint_id)
                .join(inbox_table, inbox_table.c.id == touchpoints.c.inbox_id)
                .where(attempts.c.attempt_no == 1, deliveries.c.channel == "sms")
                .order_by(inbox_table.c.received_at)
            ).all()
            sends = Counter(dict(connection.execute(
                select(deliveries.c.channel, func.count())
                .join(attempts, attempts.c.delivery_id == deliveries.c.delivery_id).group_by(deliveries.c.channel)
            ).all()))
        hub.stop()
    cut = [transactions.stages(received, processed, started) for received, processed, started, _ in rows]
    return LatencyRun(
        lags=[(started - received).total_seconds() for received, _, started, _ in rows],
        fed=fed,
        cpu_ms=Counter({name: seconds * 1000 / sum(map(len, requests)) for name, seconds in cpu.items()}),
        stages={name: [stages[n] for stages in cut] for n, name in enumerate(SPLIT_STAGES if "delivery" in elsewhere else STAGES)},
        answers=[duration / 1000 for *_, duration in rows],
        sends=sends,
    )


ABSENCE_WAIT = timedelta(minutes=2)
ABSENCE_RULE = {"id": "bench_absence", "respond": [{"channel": "webhook", "template": "bench.j2"}],
                "when": {"absence": {"after": {"event": "Bench Cart"}, "without": "any",
                                     "within": f"{ABSENCE_WAIT.total_seconds():.0f}s"}}}


def armed_hub(folder: Path, due: list[datetime], rule: dict) -> Hub:
    """A hub whose pipeline has armed an absence timer per person, due at each of `due` (arming is measured by
    throughput). The carts are dated a wait before: the timer engine judges a timer due when its anchor and
    the rule in force say, so a due time written over afterwards would be put back."""
    hub = hub_with(folder, [rule])
    events = [{"type": "track", "messageId": str(uuid.uuid4()), "userId": f"cart-{n}", "event": "Bench Cart",
               "timestamp": (at - ABSENCE_WAIT).isoformat()} for n, at in enumerate(due)]
    count = len(events)
    for start in range(0, count, 500):
        append(hub, events[start:start + 500])
    while hub.pipeline.run_once():
        continue
    return hub


def timer_lag(count: int, spread_seconds: float) -> tuple[list[float], float]:
    """Due -> fired for absence timers that come due over `spread_seconds`; and timers fired per second."""
    with tempfile.TemporaryDirectory() as folder:
        first_due = utcnow() + timedelta(seconds=1 + count / 2000)  # after arming them (a few thousand a second)
        spread = [first_due + timedelta(seconds=spread_seconds * n / max(1, count)) for n in range(count)]
        hub = armed_hub(Path(folder), spread, ABSENCE_RULE)
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
        hub = armed_hub(Path(folder), [utcnow() - timedelta(seconds=1)] * count, {**ABSENCE_RULE, "cap": {"max": 1, "within": "1h"}})
        with StatementLog() as statements:
            per_second, _cpu_ms = fire_due(hub)
        hub.delivery.close()
        hub.store.dispose()
    return per_second, statements.count / count


def fire_due(hub: Hub, at: datetime | None = None) -> tuple[float, float]:
    """Timers/s and CPU ms per timer of the timer engine firing every timer due by `at` (now), in a loop on
    this thread with no workers and no naps."""
    fired, started, cpu = 0, time.perf_counter(), time.process_time()
    while handled := hub.timers.run_once(at):
        fired += handled
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return fired / elapsed, cpu * 1000 / max(1, fired)


def report_throughput(rules: list[dict], events: list[dict], profiles: int) -> None:
    baseline, with_rules = throughput([], events), throughput(rules, events)
    for label, run in (("no rules ", baseline), (f"{len(rules):3d} rules", with_rules)):
        print(f"pipeline, {label}     : {run.per_second:8.0f} events/s   {run.cpu_ms:.2f} ms CPU/event"
              f"   {run.statements:.1f} statements/event")
    print(f"  ratio {with_rules.per_second / baseline.per_second:.2f}  ({len(events)} events over {profiles} profiles)")


def main() -> None:
    configure_logging("WARNING")  # the hubs' per-event info lines would bury the figures
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--rate", type=int, default=200, help="events/s fed in the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--timers", type=int, default=2000)
    parser.add_argument("--timer-spread", type=float, default=5.0, help="timers come due over this many seconds")
    parser.add_argument("--only", choices=["throughput", "latency"], help="run only this measurement (short runs while tuning)")
    parser.add_argument("--webhook-delay-ms", type=float, default=0.0,
                        help="latency: the sandbox webhook receivers answer after this long (real receivers take 20-300 ms)")
    parser.add_argument("--split", action="append", default=[], metavar="WORKERS",
                        help="latency: run these workers (e.g. timers,delivery) in a hub process of their own (HUB_WORKERS);"
                             " repeat for more processes")
    args = parser.parse_args()
    rng = random.Random(42)
    rules = generated_rules(args.rules)

    if args.only != "latency":
        report_throughput(rules, [synthetic_event(args.profiles, rng) for _ in range(args.events)], args.profiles)
    if args.only == "throughput":
        return
    run = latency(rules, args.profiles, args.rate, args.seconds, split=args.split,
                  webhook_delay_seconds=args.webhook_delay_ms / 1000)
    print(f"accept -> first attempt : {percentiles(run.lags)}  at {run.fed:.0f} events/s fed")
    print(f"  hub CPU per event fed   : {sum(run.cpu_ms.values()):.2f} ms ("
          + ", ".join(f"{name} {ms:.2f}" for name, ms in run.cpu_ms.most_common()) + ")")
    events_fed = round(args.rate * args.seconds)
    per_attempt = (run.cpu_ms["delivery"] + run.cpu_ms["sends"]) * events_fed / max(1, sum(run.sends.values()))
    print("  attempts per event fed  : "
          + ", ".join(f"{channel} {count / events_fed:.3f}" for channel, count in run.sends.most_common())
          + f"  (delivery + sends CPU {per_attempt:.2f} ms per attempt)")
    for name, lags in run.stages.items():
        print(f"  {name:24s}: {percentiles(lags)}")
    print(f"  (Twilio sandbox answers : {percentiles(run.answers)})")
    if args.only == "latency":
        return
    timer_lags, fired_per_second = timer_lag(args.timers, args.timer_spread)
    print(f"timer due -> fired      : {percentiles(timer_lags)}  ({fired_per_second:.0f} timers/s)")
    capacity, timer_statements = timer_capacity(args.timers)
    print(f"timer capacity          : {capacity:8.0f} timers/s   {timer_statements:.1f} statements/timer  (all due at once)")


if __name__ == "__main__":
    main()
