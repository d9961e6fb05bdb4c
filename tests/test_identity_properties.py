"""Properties of identity resolution that must hold for every input, and under concurrency.

Hypothesis generates linking events over a small pool of identifiers so that
merges, chains and re-links are frequent. One SQLite store serves a whole
test; each example works in its own identifier namespace.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from hub.identity import resolve
from hub.identity_cache import CachedIdentityGraph
from hub.identity_config import IdentityConfig
from hub.identity_epoch import EpochCachedGraph, IdentityCache
from hub.mapping import load_mapping
from hub.model import Identifier, RawEvent, Resolution, Touchpoint, derived_id
from hub.pipeline import Pipeline, PipelineConfig
from hub.respond import Responder
from hub.routes_file import load_routes
from hub.routing import Router
from hub.rulebook import RuleBook
from hub.settings import PROJECT_MAPPINGS
from hub.store import Store, inbox
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import live_profile_id
from hub.store import schema
from hub.store.schema import identifiers, profiles
from hub.templates import TemplateRenderer

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
UNLIMITED = IdentityConfig.model_validate(
    {"identifier_types": [{"type": t, "limit": 10_000} for t in ("user_id", "email", "device_id", "anonymous_id")]}
)
TIGHT = IdentityConfig.model_validate(
    {"identifier_types": [{"type": "user_id", "limit": 1}, {"type": "email", "limit": 2},
                          {"type": "device_id", "limit": 2}, {"type": "anonymous_id", "limit": 3}]}
)
# TIGHT, with devices that follow the last sign-in: the cached graphs must move identifiers as SQL does.
MOVING = IdentityConfig.model_validate(
    {"identifier_types": [{"type": "user_id", "limit": 1}, {"type": "email", "limit": 2},
                          {"type": "device_id", "limit": 2, "follows_last_login": True}, {"type": "anonymous_id", "limit": 3}]}
)
POOL = [Identifier(t, str(n)) for t in ("user_id", "email", "device_id", "anonymous_id") for n in range(4)]
events_strategy = st.lists(st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True), min_size=1, max_size=12)
namespaces = itertools.count()
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('properties')}/graph.db")
    store.migrate()
    return store


def as_touchpoint(namespace: str, n: int, idents: list[Identifier]) -> Touchpoint:
    return Touchpoint(
        touchpoint_id=derived_id(namespace, str(n)), source_id="prop", message_id=str(n), kind="track", event="x",
        stage="awareness", moment="other", occurred_at=T0, received_at=T0,
        identifiers=tuple(Identifier(i.type, namespace + i.value) for i in idents),
    )


def run(store: Store, events: list[list[Identifier]], config: IdentityConfig) -> tuple[str, list]:
    """Resolve the events in order under a fresh namespace; returns it and the resolutions."""
    namespace = f"ns{next(namespaces)}-"
    resolutions = []
    for n, idents in enumerate(events):
        with store.write() as connection:
            resolutions.append(resolve(as_touchpoint(namespace, n, idents), SqlIdentityGraph(connection), T0, config))
    return namespace, resolutions


def graph_of(store: Store, namespace: str) -> dict[str, set[Identifier]]:
    """Live profile -> its identifiers, for one namespace; asserts each identifier's profile is live."""
    with store.read() as connection:
        rows = connection.execute(
            select(identifiers.c.type, identifiers.c.value, profiles.c.profile_id, profiles.c.merged_into)
            .join(profiles, profiles.c.profile_id == identifiers.c.profile_id, isouter=True)
            .where(identifiers.c.value.startswith(namespace))
        ).all()
    grouped: dict[str, set[Identifier]] = defaultdict(set)
    for type_, value, profile_id, merged_into in rows:
        assert profile_id is not None and merged_into is None, f"{type_}={value} points at a dead profile"
        grouped[profile_id].add(Identifier(type_, value[len(namespace):]))
    return grouped


def components(events: list[list[Identifier]]) -> set[frozenset[Identifier]]:
    """The expected partition: connected components of 'seen on one touchpoint together'."""
    parent: dict[Identifier, Identifier] = {}

    def find(x: Identifier) -> Identifier:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for idents in events:
        for other in idents[1:]:
            parent[find(other)] = find(idents[0])
        find(idents[0])
    groups: dict[Identifier, set[Identifier]] = defaultdict(set)
    for ident in parent:
        groups[find(ident)].add(ident)
    return {frozenset(group) for group in groups.values()}


@FAST
@given(events=events_strategy, data=st.data())
def test_any_order_of_the_same_events_gives_the_same_partition(store: Store, events, data) -> None:
    shuffled = data.draw(st.permutations(events))
    first = {frozenset(group) for group in graph_of(store, run(store, events, UNLIMITED)[0]).values()}
    second = {frozenset(group) for group in graph_of(store, run(store, shuffled, UNLIMITED)[0]).values()}
    assert first == second == components(events)


@FAST
@given(events=events_strategy)
def test_limits_are_never_exceeded_and_every_identifier_has_one_live_profile(store: Store, events) -> None:
    namespace, resolutions = run(store, events, TIGHT)
    graph = graph_of(store, namespace)
    for members in graph.values():
        for type_, count in Counter(ident.type for ident in members).items():
            assert count <= TIGHT.limit(type_)
    placed = set().union(*graph.values()) if graph else set()
    refused = {Identifier(r.identifier.type, r.identifier.value[len(namespace):]) for res in resolutions for r in res.refused}
    assert set().union(*map(set, events)) <= placed | refused  # nothing silently lost
    assert sum(len(members) for members in graph.values()) == len(placed)  # no identifier in two profiles


@FAST
@given(events=events_strategy, split=st.integers(min_value=0, max_value=12))
def test_the_cached_graph_stores_what_the_sql_graph_would(store: Store, events, split) -> None:
    """Two cached runs, the second loading what the first flushed, give the same graph as resolving in SQL."""
    namespace = f"ns{next(namespaces)}-"
    for part, offset in ((events[:split], 0), (events[split:], split)):
        with store.read() as connection:
            graph = CachedIdentityGraph(connection)
        for n, idents in enumerate(part, start=offset):
            resolve(as_touchpoint(namespace, n, idents), graph, T0, MOVING)
        with store.write() as connection:
            graph.flush(connection)
    cached = {frozenset(group) for group in graph_of(store, namespace).values()}
    expected = {frozenset(group) for group in graph_of(store, run(store, events, MOVING)[0]).values()}
    assert cached == expected


@FAST
@given(events=events_strategy, split=st.integers(min_value=0, max_value=12))
def test_the_pipelines_cached_graph_resolves_as_the_sql_graph_does(store: Store, events, split) -> None:
    """One identity cache across transactions, as a pipeline keeps it (a first batch of `split` events, then
    one event a batch): every touchpoint resolves alike and the stored graph is the same as resolving in SQL."""
    namespace = f"ns{next(namespaces)}-"
    cache = IdentityCache()
    batches = [list(enumerate(events))[:split], *([pair] for pair in list(enumerate(events))[split:])]
    resolutions = []
    for batch in batches:
        with cache.cleared_on_error(), store.write() as connection, cache.locked(connection):
            for n, idents in batch:
                resolution = resolve(as_touchpoint(namespace, n, idents), EpochCachedGraph(connection, cache), T0, MOVING)
                assert live_profile_id(connection, resolution.profile_id) == resolution.profile_id  # stored, not an alias
                resolutions.append(resolution)
    sql_namespace, sql_resolutions = run(store, events, MOVING)

    def shape(resolution: Resolution, prefix: str) -> tuple:
        refused = [(link.identifier.value[len(prefix):], link.rule) for link in resolution.refused]
        return resolution.created, len(resolution.merged_profile_ids), refused

    assert [shape(r, namespace) for r in resolutions] == [shape(r, sql_namespace) for r in sql_resolutions]
    cached = {frozenset(group) for group in graph_of(store, namespace).values()}
    assert cached == {frozenset(group) for group in graph_of(store, sql_namespace).values()}


def process_inbox(database_url: str, no_rules: Path, start: threading.Barrier) -> None:
    """A pipeline worker process: claims one inbox row at a time until none are left."""
    store = Store(database_url)
    mapping = load_mapping(PROJECT_MAPPINGS / "segment.yaml")
    router = Router(load_routes(PROJECT_MAPPINGS / "routes.yaml"), TemplateRenderer(PROJECT_MAPPINGS / "templates"))
    pipeline = Pipeline(
        store, {"default": mapping}, RuleBook(no_rules), Responder(router), PipelineConfig(1, timedelta(seconds=60), 3, "US"),
        lambda: None, timers_armed=lambda due_at: None,  # no rules, so no timers
    )
    start.wait()
    while pipeline.run_once():
        pass
    store.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_two_worker_processes_resolving_linked_events_make_one_profile_per_person(tmp_path: Path, database_url: str) -> None:
    store = Store(database_url)
    store.migrate()
    no_rules = tmp_path / "no-rules.yaml"
    no_rules.write_text("rules: []\n")
    people = 40
    # Each person arrives twice at once, from two devices, linked only by their email.
    events = [
        RawEvent("default", f"{person}-{device}", {
            "type": "identify", "anonymousId": f"{device}-{person}", "traits": {"email": f"p{person}@example.com"},
            "timestamp": T0.isoformat(),
        })
        for person in range(people)
        for device in ("phone", "laptop")
    ]
    with store.write() as connection:
        inbox.append(connection, events, T0)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=process_inbox, args=(database_url, no_rules, start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=90)
        assert worker.exitcode == 0
    with store.read() as connection:
        assert inbox.count_by_status(connection) == {"done": 2 * people}
        # Each event went through once: no worker tripped over the other's writes and had to retry.
        assert connection.execute(select(schema.inbox.c.id).where(schema.inbox.c.attempts > 1)).all() == []
        live = connection.execute(select(profiles.c.profile_id).where(profiles.c.merged_into.is_(None))).scalars().all()
        owners = connection.execute(
            select(identifiers.c.value, identifiers.c.profile_id).where(identifiers.c.type == "anonymous_id")
        ).all()
    assert len(live) == people
    by_person = defaultdict(set)
    for value, profile_id in owners:
        by_person[value.split("-")[1]].add(profile_id)
    assert all(len(ids) == 1 for ids in by_person.values()) and len(by_person) == people
    store.dispose()


def test_cached_graph_writes_rows_exactly_as_core_does(tmp_path: Path) -> None:
    """The bulk insert bypasses Core's parameter handling; the stored text must not differ."""
    store = Store(f"sqlite:///{tmp_path}/rows.db")
    store.migrate()
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    with store.read() as connection:
        cached = CachedIdentityGraph(connection)
    cached.attach(cached.create_profile(at), [Identifier("email", "a@x.io")], "tp", at)
    with store.write() as connection:
        cached.flush(connection)
        sql = SqlIdentityGraph(connection)
        sql.attach(sql.create_profile(at), [Identifier("email", "b@x.io")], "tp", at)
    with store.read() as connection:
        raw = connection.exec_driver_sql("SELECT first_seen_at, origin_profile_id = profile_id FROM identifiers").all()
        profile_rows = connection.exec_driver_sql("SELECT created_at, traits, trait_times FROM profiles").all()
    assert raw[0] == raw[1]
    assert profile_rows[0] == profile_rows[1]
