"""The pipeline's identity cache answers only what the database would: the graph epoch moves on every
identity write, another writer's change empties the cache, and a rollback never leaves a rolled-back
profile behind in it. Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Executable, delete, event, insert, inspect, select, update

from hub.identity import resolve
from hub.identity_epoch import EpochCachedGraph, IdentityCache
from hub.mapping import load_mapping
from hub.model import Identifier, RawEvent, Touchpoint
from hub.pipeline import Pipeline, PipelineConfig
from hub.respond import Responder
from hub.routes_file import load_routes
from hub.routing import Router
from hub.rulebook import RuleBook
from hub.settings import PROJECT_MAPPINGS
from hub.store import Store, _alembic_config, inbox
from hub.store import touchpoints as touchpoints_store
from hub.store.identity_graph import SqlIdentityGraph, graph_epoch_value
from hub.store.profile_views import find_profile_id
from hub.store.forget import forget
from hub.store.identity_repair import unmerge
from hub.store.schema import forgotten_identifiers, identifiers, kept_apart, profiles, touchpoints
from hub.store.sql import lock_profiles
from hub.templates import TemplateRenderer

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
messages = itertools.count()


@pytest.fixture
def pipeline(store: Store, tmp_path: Path) -> Pipeline:
    """The hub's pipeline without rules: identity and touchpoints only, ten rows a batch."""
    no_rules = tmp_path / "no-rules.yaml"
    no_rules.write_text("rules: []\n")
    router = Router(load_routes(PROJECT_MAPPINGS / "routes.yaml"), TemplateRenderer(PROJECT_MAPPINGS / "templates"))
    return Pipeline(
        store, {"default": load_mapping(PROJECT_MAPPINGS / "segment.yaml")}, RuleBook(no_rules), Responder(router),
        PipelineConfig(10, timedelta(seconds=60), 3, "US"), lambda: None, timers_armed=lambda due_at: None,
    )


def identify(anonymous_id: str | None = None, user_id: str | None = None, email: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "identify", "timestamp": T0.isoformat(), "traits": {"email": email} if email else {}}
    return payload | ({"anonymousId": anonymous_id} if anonymous_id else {}) | ({"userId": user_id} if user_id else {})


def feed(store: Store, pipeline: Pipeline, *payloads: dict[str, Any]) -> list[str | None]:
    """Run the events through the pipeline in one batch; the profile each touchpoint was stored with (None: none)."""
    ids = [f"m{next(messages)}" for _ in payloads]
    with store.write() as connection:
        inbox.append(connection, [RawEvent("default", message_id, payload) for message_id, payload in zip(ids, payloads)], T0)
    while pipeline.run_once():
        pass
    with store.read() as connection:
        stored = dict(connection.execute(select(touchpoints.c.message_id, touchpoints.c.profile_id)).all())
    return [stored.get(message_id) for message_id in ids]


def owner(store: Store, type_: str, value: str) -> str | None:
    with store.read() as connection:
        return find_profile_id(connection, Identifier(type_, value))


def assert_every_touchpoint_has_a_stored_profile(store: Store) -> None:
    with store.read() as connection:
        stored = set(connection.execute(select(profiles.c.profile_id)).scalars())
        assert set(connection.execute(select(touchpoints.c.profile_id)).scalars()) <= stored
        assert set(connection.execute(select(identifiers.c.profile_id)).scalars()) <= stored


def epoch(store: Store) -> int:
    with store.read() as connection:
        return graph_epoch_value(connection)


def identity_writes(first: str, second: str) -> dict[str, Executable]:
    """One statement per kind of identity write, over two stored profiles."""
    return {
        "attach": insert(identifiers).values(type="email", value="e@x.io", profile_id=second, first_seen_at=T0, touchpoint_id="t"),
        "move": update(identifiers).values(profile_id=first),
        "detach": delete(identifiers),
        "forget": insert(forgotten_identifiers).values(digest="d", forgotten_at=T0),
        "refresh forgotten": update(forgotten_identifiers).values(forgotten_at=T0 + timedelta(days=1)),
        "drop forgotten": delete(forgotten_identifiers),
        "keep apart": insert(kept_apart).values(profile_a=first, profile_b=second, since=T0),
        "repoint kept apart": update(kept_apart).values(profile_b="P3"),
        "drop kept apart": delete(kept_apart),
        "merge": update(profiles).where(profiles.c.profile_id == second).values(merged_into=first),
        "delete profile": delete(profiles).where(profiles.c.profile_id == second),
    }


def test_every_kind_of_identity_or_trait_write_moves_the_epoch_and_a_new_profile_does_not(store: Store) -> None:
    def moved_by(change: Callable[[Connection], Any]) -> int:
        before = epoch(store)
        with store.write() as connection:
            change(connection)
        return epoch(store) - before

    made: list[str] = []
    assert moved_by(lambda connection: made.extend(SqlIdentityGraph(connection).create_profile(T0) for _ in range(2))) == 0
    assert moved_by(lambda connection: SqlIdentityGraph(connection).update_traits(made[0], {"plan": "pro"}, T0)) > 0
    assert moved_by(lambda connection: connection.execute(update(profiles).values(updated_at=T0))) == 0
    for name, statement in identity_writes(*sorted(made)).items():
        assert moved_by(lambda connection: connection.execute(statement)) > 0, name


def traits_seen(store: Store, cache: IdentityCache, profile_id: str) -> tuple[dict[str, Any], list[str]]:
    """A profile's traits as the pipeline's next transaction with `cache` sees them, and the statements it sent
    to read them."""
    sent: list[str] = []
    with store.write() as connection, cache.locked(connection):
        event.listen(connection, "before_cursor_execute", lambda _connection, _cursor, statement, *_: sent.append(statement))
        return EpochCachedGraph(connection, cache).traits(profile_id), [s for s in sent if "profiles.traits" in s]


@contextmanager
def free_plan_profile(store: Store, cache: IdentityCache) -> Iterator[tuple[Connection, str]]:
    """A pipeline transaction with `cache` that made a profile on the free plan; the block runs before it commits."""
    with store.write() as connection, cache.locked(connection):
        graph = EpochCachedGraph(connection, cache)
        profile_id = graph.create_profile(T0)
        graph.update_traits(profile_id, {"plan": "free"}, T0)
        yield connection, profile_id


def test_traits_are_read_once_and_another_writers_change_reaches_the_next_transaction(store: Store) -> None:
    cache = IdentityCache()
    with free_plan_profile(store, cache) as (_, profile_id):
        pass
    assert traits_seen(store, cache, profile_id) == ({"plan": "free"}, [])  # kept from the transaction that wrote them
    with store.write() as connection:
        lock_profiles(connection)
        SqlIdentityGraph(connection).update_traits(profile_id, {"plan": "pro", "sms_opt_out": True}, T0 + timedelta(days=1))
    traits, reads = traits_seen(store, cache, profile_id)
    assert traits == {"plan": "pro", "sms_opt_out": True} and len(reads) == 1


def test_traits_written_in_a_rolled_back_savepoint_are_not_seen_afterwards(store: Store) -> None:
    cache = IdentityCache()
    with free_plan_profile(store, cache) as (connection, profile_id):
        savepoint = connection.begin_nested()
        EpochCachedGraph(connection, cache).update_traits(profile_id, {"plan": "rolled back"}, T0 + timedelta(days=1))
        savepoint.rollback()
        assert EpochCachedGraph(connection, cache).traits(profile_id) == {"plan": "free"}
    assert traits_seen(store, cache, profile_id)[0] == {"plan": "free"}


def test_the_epoch_migration_downgrades_to_the_schema_before_it(store: Store) -> None:
    with store.write() as connection:
        command.downgrade(_alembic_config(connection), "i5_trigger_timers")
    with store.write() as connection:
        assert not inspect(connection).has_table("graph_epoch")
        SqlIdentityGraph(connection).create_profile(T0)  # and the profile writes run without the triggers
        connection.execute(update(profiles).values(merged_into=None))
    store.migrate("i7_graph_epoch")
    assert epoch(store) == 0  # later migrations may raise it (i18's UPDATE fires PostgreSQL's per-statement trigger)
    store.migrate()


def test_another_writers_unmerge_reaches_the_next_event(store: Store, pipeline: Pipeline) -> None:
    feed(store, pipeline, identify("ana-phone", user_id="ana"))
    feed(store, pipeline, identify("bo-laptop", email="bo@x.io"))
    [survivor] = feed(store, pipeline, identify(user_id="ana", email="bo@x.io"))  # the bad link
    merged = ({owner(store, "anonymous_id", "ana-phone")} | {owner(store, "anonymous_id", "bo-laptop")})
    assert merged == {survivor}
    with store.read() as connection:
        [merged_id] = connection.execute(select(profiles.c.profile_id).where(profiles.c.merged_into == survivor)).scalars()
    with store.write() as connection:
        unmerge(connection, survivor, merged_id, T0)
    after = feed(store, pipeline, identify("ana-phone"), identify("bo-laptop"))
    assert after == [owner(store, "anonymous_id", "ana-phone"), owner(store, "anonymous_id", "bo-laptop")]
    assert set(after) == {survivor, merged_id}


def test_another_writers_merge_reaches_the_next_event(store: Store, pipeline: Pipeline) -> None:
    first, second = feed(store, pipeline, identify("ana-phone"), identify("bo-laptop"))
    with store.write() as connection:
        lock_profiles(connection)
        SqlIdentityGraph(connection).merge(min(first, second), [max(first, second)], "repair", [], T0)
    assert feed(store, pipeline, identify("ana-phone"), identify("bo-laptop")) == [min(first, second)] * 2


def test_a_forget_reaches_the_next_event(store: Store, pipeline: Pipeline) -> None:
    [profile_id] = feed(store, pipeline, identify("ana-phone", user_id="ana"))
    assert feed(store, pipeline, identify("ana-phone")) == [profile_id]  # cached by now
    with store.write() as connection:
        forget(connection, profile_id, T0, block_identifiers=True)
    assert feed(store, pipeline, identify("ana-phone")) == [None]
    with store.read() as connection:
        assert inbox.count_by_status(connection) == {"done": 3}  # dropped as a forgotten person's, not failed


def test_a_row_rolled_back_after_resolution_leaves_no_profile_behind(
    store: Store, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored_insert = touchpoints_store.insert

    def failing_insert(connection: Connection, touchpoint: Touchpoint, profile_id: str, inbox_id: int) -> bool:
        if Identifier("anonymous_id", "doomed") in touchpoint.identifiers:
            raise RuntimeError("a step after identity resolution failed")
        return stored_insert(connection, touchpoint, profile_id, inbox_id)

    monkeypatch.setattr(touchpoints_store, "insert", failing_insert)
    # The batch fails and runs again row by row; the doomed row fails alone and is postponed.
    fine, doomed = feed(store, pipeline, identify("fine", email="fine@x.io"), identify("doomed", email="doomed@x.io"))
    assert doomed is None and owner(store, "anonymous_id", "doomed") is None
    assert fine is not None and fine == owner(store, "anonymous_id", "fine")  # its neighbour committed
    monkeypatch.undo()
    again = feed(store, pipeline, identify("doomed", email="doomed@x.io"), identify("fine"))
    assert again == [owner(store, "anonymous_id", "doomed"), fine]
    assert_every_touchpoint_has_a_stored_profile(store)


def test_a_batch_that_fails_as_a_whole_leaves_no_profile_behind(
    store: Store, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_mark_done(*args: Any) -> None:
        raise RuntimeError("the batch failed after every row was processed")

    monkeypatch.setattr(inbox, "mark_done", failing_mark_done)
    with pytest.raises(RuntimeError):
        feed(store, pipeline, identify("lost", email="lost@x.io"))
    monkeypatch.undo()
    [profile_id] = feed(store, pipeline, identify("lost", email="lost@x.io"))
    assert profile_id == owner(store, "anonymous_id", "lost") is not None
    assert_every_touchpoint_has_a_stored_profile(store)


def identifier_reads_of_a_second_visit(store: Store, cache: IdentityCache) -> list[str]:
    """Resolve a visitor twice, in two transactions with one cache; the statements the second visit
    sent about identifiers. Both visits must land on the same profile."""
    touchpoint = Touchpoint(
        touchpoint_id="t", source_id="s", message_id="m", kind="track", event="x", stage="awareness", moment="other",
        occurred_at=T0, received_at=T0, identifiers=(Identifier("anonymous_id", "a"), Identifier("user_id", "u")),
    )
    with store.write() as connection, cache.locked(connection):
        created = resolve(touchpoint, EpochCachedGraph(connection, cache), T0).profile_id
    sent: list[str] = []
    with store.write() as connection, cache.locked(connection):
        event.listen(connection, "before_cursor_execute", lambda _connection, _cursor, statement, *_: sent.append(statement))
        assert resolve(touchpoint, EpochCachedGraph(connection, cache), T0).profile_id == created
    return [statement for statement in sent if "identifiers" in statement]


def test_the_cache_answers_a_known_visitor_without_sql_with_what_sql_said(store: Store) -> None:
    assert identifier_reads_of_a_second_visit(store, IdentityCache()) == []


@pytest.mark.parametrize("size", [0, 1])
def test_a_cache_too_small_for_the_visitor_asks_sql(store: Store, size: int) -> None:
    """`HUB_IDENTITY_CACHE_SIZE` 0 turns the cache off; one smaller than a touchpoint's identifiers never holds them."""
    assert len(identifier_reads_of_a_second_visit(store, IdentityCache(size))) == 1
