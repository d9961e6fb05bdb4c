"""Identity resolution against a real SQLite store: create, attach, merge (oldest survives), traits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub.identifiers import normalize_identifier
from hub.identity import resolve
from hub.model import Identifier, Touchpoint, derived_id
from hub.store import Store
from hub.store.identity_graph import (
    SqlIdentityGraph,
    counts,
    live_profile_id,
    profile_view,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path}/identity.db")
    store.migrate()
    return store


def touchpoint(n: int, *idents: tuple[str, str], traits: dict | None = None, minutes: int = 0) -> Touchpoint:
    return Touchpoint(
        touchpoint_id=derived_id("test", str(n)), source_id="test", message_id=str(n), kind="track", event="x",
        stage="awareness", moment="other", occurred_at=T0 + timedelta(minutes=minutes), received_at=T0,
        identifiers=tuple(Identifier(t, v) for t, v in idents), traits=traits or {},
    )


def resolve_in(store: Store, tp: Touchpoint):
    with store.write() as connection:
        graph = SqlIdentityGraph(connection)
        resolution = resolve(tp, graph, T0)
        graph.update_traits(resolution.profile_id, tp.traits, tp.occurred_at)
        return resolution


@pytest.mark.parametrize(
    ("type_", "raw", "expected"),
    [
        ("email", "  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("phone", "(415) 555-0123", "+14155550123"),
        ("phone", "+44 20 7946 0958", "+442079460958"),
        ("user_id", 42, "42"),
        ("anonymous_id", " abc ", "abc"),
    ],
)
def test_values_are_normalized(type_: str, raw: object, expected: str) -> None:
    assert normalize_identifier(type_, raw, "US") == Identifier(type_, expected)


@pytest.mark.parametrize(
    ("type_", "raw"),
    [("user_id", "null"), ("anonymous_id", "undefined"), ("user_id", "0"), ("email", ""), ("email", "test@test.com"),
     ("email", "not-an-email"), ("phone", "12"), ("user_id", None), ("user_id", True), ("user_id", {"a": 1})],
)
def test_junk_values_are_refused(type_: str, raw: object) -> None:
    assert normalize_identifier(type_, raw, "US") is None


def test_unknown_identifiers_create_a_profile_and_known_ones_reuse_it(store: Store) -> None:
    first = resolve_in(store, touchpoint(1, ("anonymous_id", "a1")))
    second = resolve_in(store, touchpoint(2, ("anonymous_id", "a1"), ("email", "x@example.com")))
    assert first.created and not second.created
    assert second.profile_id == first.profile_id
    with store.read() as connection:
        view = profile_view(connection, first.profile_id)
    assert view is not None
    assert view["identifiers"] == {"anonymous_id": ["a1"], "email": ["x@example.com"]}


def test_linking_two_profiles_merges_them_and_the_oldest_survives(store: Store) -> None:
    older = resolve_in(store, touchpoint(1, ("anonymous_id", "mobile"), traits={"plan": "free"}, minutes=1))
    newer = resolve_in(store, touchpoint(2, ("email", "sam@example.com"), traits={"plan": "pro", "city": "Oslo"}, minutes=2))
    assert older.profile_id < newer.profile_id
    link = resolve_in(store, touchpoint(3, ("anonymous_id", "mobile"), ("email", "sam@example.com"), minutes=3))
    assert link.profile_id == older.profile_id
    assert link.merged_profile_ids == (newer.profile_id,)
    with store.read() as connection:
        assert live_profile_id(connection, newer.profile_id) == older.profile_id  # the old id still resolves
        view = profile_view(connection, newer.profile_id)
        assert counts(connection) == {"profiles": 1, "merges": 1}
    assert view is not None
    assert view["profile_id"] == older.profile_id
    assert view["merged_profile_ids"] == [newer.profile_id]
    assert view["traits"] == {"plan": "pro", "city": "Oslo"}  # newest event wins per trait


def test_traits_are_last_write_wins_by_event_time_not_arrival(store: Store) -> None:
    resolve_in(store, touchpoint(1, ("user_id", "u"), traits={"plan": "pro"}, minutes=10))
    late_arrival = resolve_in(store, touchpoint(2, ("user_id", "u"), traits={"plan": "free", "age": 30}, minutes=5))
    with store.read() as connection:
        view = profile_view(connection, late_arrival.profile_id)
    assert view is not None and view["traits"] == {"plan": "pro", "age": 30}


def test_chain_of_merges_leaves_every_old_id_one_hop_from_the_survivor(store: Store) -> None:
    a = resolve_in(store, touchpoint(1, ("anonymous_id", "a"))).profile_id
    b = resolve_in(store, touchpoint(2, ("anonymous_id", "b"))).profile_id
    c = resolve_in(store, touchpoint(3, ("anonymous_id", "c"))).profile_id
    resolve_in(store, touchpoint(4, ("anonymous_id", "b"), ("anonymous_id", "c")))
    resolve_in(store, touchpoint(5, ("anonymous_id", "a"), ("anonymous_id", "c")))
    with store.read() as connection:
        assert {live_profile_id(connection, p) for p in (a, b, c)} == {a}
        assert counts(connection) == {"profiles": 1, "merges": 2}
