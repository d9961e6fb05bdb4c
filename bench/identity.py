"""Identity resolution throughput, and how it holds up as the graph grows.

    .venv/bin/python bench/identity.py [--touchpoints 1000000] [--people 200000] [--batch 5000]
    .venv/bin/python bench/identity.py --touchpoints 100000 --baseline 100000 --sql-only

Synthetic people with realistic link patterns: one to three devices (each an
anonymous id plus a device id), most log in at some point (user_id), many
give an email, some a phone, and a few share a family device with someone
else (the case per-type limits exist for). Their touchpoints arrive
interleaved, new people arriving at a steady pace so every tenth of the run
has the same mix of first visits and returns. Every touchpoint goes through `hub.identity.resolve` with the
shipped rules, on a SQLite store, committed in batches.

Two runs in the same process. The baseline, on the first `--baseline`
touchpoints, is a pair taking each chunk in turn on two stores: the
per-statement `SqlIdentityGraph`, and `EpochCachedGraph` over one
`IdentityCache` for the whole run, checking the graph epoch per transaction
(what a pipeline worker uses, `hub.identity_epoch`). The second run is
`CachedIdentityGraph` (graph in memory, batched writes, single writer only)
on all of them. Both are reported per tenth, so growth in graph size shows.
Touchpoint generation is outside the timed sections. `--sql-only` stops
after the baseline pair.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from hub.identity import resolve
from hub.identity_cache import CachedIdentityGraph
from hub.identity_config import load_identity_config
from hub.identity_epoch import EpochCachedGraph, IdentityCache
from hub.model import Identifier, Touchpoint, derived_id
from hub.settings import PROJECT_MAPPINGS
from hub.store import Store
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import counts

NOW = datetime(2026, 11, 25, tzinfo=timezone.utc)
CONFIG = load_identity_config(PROJECT_MAPPINGS / "identity.yaml")


@dataclass
class Person:
    number: int
    devices: list[tuple[Identifier, Identifier]]  # (anonymous_id, device_id)
    user_id: Identifier | None
    email: Identifier | None
    phone: Identifier | None
    logged_in: set[int] = field(default_factory=set)


def people(count: int, rng: random.Random) -> list[Person]:
    crowd = []
    for n in range(count):
        devices = [(Identifier("anonymous_id", f"anon-{n}-{d}"), Identifier("device_id", f"dev-{n}-{d}"))
                   for d in range(rng.choices((1, 2, 3), (50, 35, 15))[0])]
        crowd.append(Person(
            n, devices,
            Identifier("user_id", f"user-{n}") if rng.random() < 0.7 else None,
            Identifier("email", f"person{n}@example.com") if rng.random() < 0.6 else None,
            Identifier("phone", f"+1415{n:07d}") if rng.random() < 0.3 else None,
        ))
    for person in rng.sample(crowd, count // 50):  # 2% use a family member's device too
        other = crowd[rng.randrange(count)]
        if other is not person:
            person.devices.append(other.devices[0])
    return crowd


def touchpoints(crowd: list[Person], total: int, rng: random.Random) -> Iterator[Touchpoint]:
    """People arrive at a steady pace over the run and come back at random, so the mix of new and
    returning visitors is the same in every tenth and only the size of the graph changes."""
    pace = total / len(crowd)
    for n in range(total):
        person = crowd[rng.randrange(min(len(crowd), int(n / pace) + 1))]
        device = rng.randrange(len(person.devices))
        idents = list(person.devices[device])
        if person.user_id and (device in person.logged_in or rng.random() < 0.3):
            person.logged_in.add(device)
            idents.append(person.user_id)
            if person.email and rng.random() < 0.5:
                idents.append(person.email)
            if person.phone and rng.random() < 0.3:
                idents.append(person.phone)
        elif person.email and rng.random() < 0.05:  # a newsletter sign-up before any login
            idents.append(person.email)
        yield Touchpoint(
            touchpoint_id=derived_id("bench", str(n)), source_id="bench", message_id=str(n), kind="track",
            event="Product Viewed", stage="consideration", moment="product_view", occurred_at=NOW, received_at=NOW,
            identifiers=tuple(idents),
        )


def chunks(stream: Iterator[Touchpoint], size: int) -> Iterator[list[Touchpoint]]:
    while chunk := [tp for _, tp in zip(range(size), stream)]:
        yield chunk


@dataclass
class Clock:
    """Wall time and this process's CPU time spent in timed sections.

    The bench box is shared; CPU time shows what resolution costs when a
    neighbour takes the core, wall time includes waiting for fsync and the CPU.
    """

    wall: float = 0.0
    cpu: float = 0.0

    def timing(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu


def sql_graph(store: Store) -> Callable[[list[Touchpoint]], None]:
    """The per-statement graph: every question asked of the store in the write transaction."""
    def resolve_chunk(chunk: list[Touchpoint]) -> None:
        with store.write() as connection:
            graph = SqlIdentityGraph(connection)
            for tp in chunk:
                resolve(tp, graph, NOW, CONFIG)
    return resolve_chunk


def pipeline_graph(store: Store) -> Callable[[list[Touchpoint]], None]:
    """The pipeline's graph: one identity cache across the run's transactions, each taking the profiles
    lock and checking the graph epoch as `Pipeline.run_once` does, and a graph per touchpoint as per row."""
    cache = IdentityCache()

    def resolve_chunk(chunk: list[Touchpoint]) -> None:
        with cache.cleared_on_error(), store.write() as connection, cache.locked(connection):
            for tp in chunk:
                resolve(tp, EpochCachedGraph(connection, cache), NOW, CONFIG)
    return resolve_chunk


def cached_graph(store: Store) -> Callable[[list[Touchpoint]], None]:
    """The in-memory graph, flushed once per write transaction."""
    with store.read() as connection:
        graph = CachedIdentityGraph(connection)

    def resolve_chunk(chunk: list[Touchpoint]) -> None:
        with store.write() as connection:
            for tp in chunk:
                resolve(tp, graph, NOW, CONFIG)
            graph.flush(connection)
    return resolve_chunk


def timed_tenths(stream: Iterator[Touchpoint], batch: int, total: int,
                 graphs: dict[str, Callable[[list[Touchpoint]], None]]) -> dict[str, list[tuple[int, Clock]]]:
    """(touchpoints resolved in the tenth, its clock) for each tenth of the run and each graph, printed as
    they end, so growth in graph size shows. Several graphs take each chunk in turn, each on its own
    store, so a neighbour's load on the box falls on all of them alike."""
    tenths: dict[str, list[tuple[int, Clock]]] = {name: [] for name in graphs}
    done, in_tenth, mark = 0, 0, total / 10
    clocks = {name: Clock() for name in graphs}
    for chunk in chunks(stream, batch):
        for name, resolve_chunk in graphs.items():
            for _ in clocks[name].timing():
                resolve_chunk(chunk)
        done += len(chunk)
        in_tenth += len(chunk)
        if done >= mark or done == total:
            rates = "; ".join(f"{name} {in_tenth / clock.wall:>7,.0f} /s wall, {in_tenth / clock.cpu:>7,.0f} /s per CPU s"
                              for name, clock in clocks.items())
            print(f"  {done:>9,} touchpoints  last tenth: {rates}", flush=True)
            for name, clock in clocks.items():
                tenths[name].append((in_tenth, clock))
            in_tenth, mark = 0, mark + total / 10
            clocks = {name: Clock() for name in graphs}
    return tenths


def summary(tenths: list[tuple[int, Clock]]) -> tuple[float, float, float]:
    """Rate per wall second, per CPU second, and the last tenth's CPU rate over the first's."""
    done = sum(count for count, _ in tenths)
    wall = sum(clock.wall for _, clock in tenths)
    cpu = sum(clock.cpu for _, clock in tenths)
    first, last = (count / clock.cpu for count, clock in (tenths[0], tenths[-1]))
    return done / wall, done / cpu, last / first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--touchpoints", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, help="Distinct people (default: touchpoints / 5).")
    parser.add_argument("--batch", type=int, default=5000, help="Touchpoints per write transaction.")
    parser.add_argument("--baseline", type=int, default=20_000, help="Touchpoints for the uncached baseline run.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sql-only", action="store_true", help="Run only the baseline pair (SqlIdentityGraph, EpochCachedGraph).")
    args = parser.parse_args()
    population = args.people or args.touchpoints // 5
    with tempfile.TemporaryDirectory() as folder:
        stores = {name: Store(f"sqlite:///{Path(folder)}/{name}.db") for name in ("SqlIdentityGraph", "EpochCachedGraph")}
        for store in stores.values():
            store.migrate()
        rng = random.Random(args.seed)
        print(f"baseline, chunk by chunk: {args.baseline:,} touchpoints")
        side_by_side = timed_tenths(
            touchpoints(people(population, rng), args.baseline, rng), args.batch, args.baseline,
            {"SqlIdentityGraph": sql_graph(stores["SqlIdentityGraph"]), "EpochCachedGraph": pipeline_graph(stores["EpochCachedGraph"])},
        )
        rates = {name: report(name, args.baseline, tenths, stores[name]) for name, tenths in side_by_side.items()}
        baseline = rates["SqlIdentityGraph"]
        print(f"EpochCachedGraph / SqlIdentityGraph: {rates['EpochCachedGraph'] / baseline:.2f}x wall")
        if args.sql_only:
            return

        store = Store(f"sqlite:///{Path(folder)}/cached.db")
        store.migrate()
        rng = random.Random(args.seed)
        print(f"CachedIdentityGraph: {args.touchpoints:,} touchpoints over {population:,} people")
        cached = timed_tenths(touchpoints(people(population, rng), args.touchpoints, rng), args.batch, args.touchpoints,
                              {"CachedIdentityGraph": cached_graph(store)})["CachedIdentityGraph"]
        rate = report("CachedIdentityGraph", args.touchpoints, cached, store)
        print(f"CachedIdentityGraph: {rate / baseline:.1f}x the SqlIdentityGraph baseline")


def report(name: str, total: int, tenths: list[tuple[int, Clock]], store: Store) -> float:
    """Print a graph's run; returns its rate per wall second."""
    rate, per_cpu, flatness = summary(tenths)
    with store.read() as connection:
        graph = counts(connection)
    print(f"{name}: {total:,} touchpoints, {rate:,.0f} /s wall, {per_cpu:,.0f} /s per CPU second; last tenth per CPU "
          f"second {flatness:.2f}x the first; {graph['profiles']:,} live profiles, {graph['merges']:,} merges")
    return rate


if __name__ == "__main__":
    main()
