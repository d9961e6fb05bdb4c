"""An alias that comes before the earlier login's own events: alias(previousId=X, userId=Y) says X and Y are one
person, and X may be an earlier userId. Arriving first, X was stored as an anonymous id for good, and X's first
event made a second profile. Through the pipeline, the in-memory graph, forget, explain and the migration."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, event, inspect, select

from hub.clock import utcnow
from hub.errors import ForgottenIdentityError
from hub.identity import resolve
from hub.identity_cache import CachedIdentityGraph
from hub.identity_epoch import EpochCachedGraph, IdentityCache
from hub.model import Identifier, Touchpoint, derived_id
from hub.store import Store, _alembic_config, touchpoints
from hub.store.identity_explain import explain
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import find_profile_id, live_profile_id, profile_view
from hub.store.schema import identifiers
from hub.store.sql import query_plan
from tests.conftest import message
from tests.test_absence_timers import accept, hub_on
from tests.test_forget_messages import forget
from tests.test_identity_edges import profile, stored_rows_holding

BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def alias_first(older: str = "old-login", newer: str = "new-login") -> dict[str, Any]:
    """The SDK's alias call on sign-up, before anything was sent under the older login."""
    return message("alias", userId=newer, previousId=older)


def touchpoint(n: int, *idents: tuple[str, str], kind: str = "track") -> Touchpoint:
    """A touchpoint as a mapping makes it (an alias's previousId typed `previous_id`)."""
    return Touchpoint(
        touchpoint_id=derived_id("alias-order", str(n)), source_id="test", message_id=str(n), kind=kind, event=f"event {n}",
        stage="awareness", moment="other", occurred_at=T0 + timedelta(minutes=n), received_at=T0,
        identifiers=tuple(Identifier(t, v) for t, v in idents),
    )


# --- the pipeline ----------------------------------------------------------------------------------------------

@BOTH_DATABASES
def test_a_user_id_first_seen_after_an_alias_named_it_joins_the_aliased_profile(tmp_path: Path, database_url: str) -> None:
    """The browsing on the old login's laptop, the alias on sign-up in the app, then the laptop's first login
    event: it found no profile by user_id "old-login" (the alias had stored it as an anonymous id) and made a
    second profile, which took the laptop's cookie and its traits; the person's events were split in two."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message(anonymousId="laptop-cookie", event="Product Viewed"))
        accept(hub, alias_first(), message("identify", userId="old-login", anonymousId="laptop-cookie", traits={"plan": "pro"}))
        accept(hub, message(userId="old-login", event="Product Viewed"))
        person = profile(hub, "user_id", "new-login")
        assert person is not None
        assert {profile(hub, "user_id", "old-login"), profile(hub, "anonymous_id", "laptop-cookie")} == {person}
        with hub.store.read() as connection:
            view = profile_view(connection, person)
            events = connection.execute(select(touchpoints.touchpoints.c.profile_id)).scalars().all()
        assert view is not None and view["traits"] == {"plan": "pro"}
        # Past the limit of one user_id per profile, as an alias of two known logins links them (hub.identity).
        assert sorted(view["identifiers"]["user_id"]) == ["new-login", "old-login"]
        assert events == [person] * 4
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_the_in_memory_graph_joins_a_user_id_an_alias_named_before_and_after_a_flush(database_url: str) -> None:
    """The bulk path (a backfill or replay through `CachedIdentityGraph`) knew nothing of aliases' previousIds:
    the user_id made a second profile, in the same flush as the alias or in a later one."""
    store = Store(database_url)
    store.migrate()
    try:
        with store.write() as connection:
            graph = CachedIdentityGraph(connection)
            ana = resolve(touchpoint(1, ("user_id", "ana-app"), ("previous_id", "ana-web"), kind="alias"), graph, T0).profile_id
            bo = resolve(touchpoint(2, ("user_id", "bo-app"), ("previous_id", "bo-web"), kind="alias"), graph, T0).profile_id
            assert resolve(touchpoint(3, ("user_id", "ana-web")), graph, T0).profile_id == ana
            graph.flush(connection)
        with store.write() as connection:
            graph = CachedIdentityGraph(connection)  # loaded from what the flush wrote
            assert resolve(touchpoint(4, ("user_id", "bo-web")), graph, T0).profile_id == bo
            graph.flush(connection)
        with store.read() as connection:
            assert {find_profile_id(connection, Identifier("user_id", v)) for v in ("ana-app", "ana-web")} == {ana}
            assert {find_profile_id(connection, Identifier("user_id", v)) for v in ("bo-app", "bo-web")} == {bo}
    finally:
        store.dispose()


# --- forget ----------------------------------------------------------------------------------------------------

@BOTH_DATABASES
def test_a_forgotten_persons_alias_previous_id_does_not_come_back_as_their_user_id(tmp_path: Path, database_url: str) -> None:
    """Forgetting blocks the previousId as the anonymous id it was stored as; the old install's first event
    under that login, a user_id of the same value, passed the blocklist and stored the erased id again."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, alias_first())
        forgotten = profile(hub, "user_id", "new-login")
        assert forgotten is not None
        forget(hub, forgotten)
        accept(hub, message("identify", userId="old-login", traits={"email": "sam@example.com"}))
        assert profile(hub, "user_id", "old-login") is None
        assert profile(hub, "email", "sam@example.com") is not None  # the rest of the event is kept
        assert stored_rows_holding(hub, "old-login") == []
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_a_forgotten_plain_anonymous_id_does_not_refuse_a_new_user_id_of_its_value(tmp_path: Path, database_url: str) -> None:
    """Every forgotten anonymous id, not only an alias's previousId, refused a new userId of its value: forgetting
    the visitor with cookie "10452" took away the login "10452" of another person (no link between them before),
    and an event carrying only it was dropped."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", anonymousId="10452", traits={"email": "first@example.com"}))
        first = profile(hub, "anonymous_id", "10452")
        assert first is not None
        forget(hub, first)
        accept(hub, message("identify", userId="10452", traits={"email": "second@example.com"}))
        second = profile(hub, "email", "second@example.com")
        assert second is not None
        assert profile(hub, "user_id", "10452") == second, "another person's userId was refused as forgotten"
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_the_in_memory_graph_refuses_a_forgotten_alias_previous_id_and_not_a_forgotten_cookie(
    tmp_path: Path, database_url: str,
) -> None:
    """The bulk path (`CachedIdentityGraph`) refused a userId of any forgotten anonymous id's value: a backfill
    dropped the events that carried only another person's login."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, alias_first(), message("identify", anonymousId="10452"))
        for type_, value in (("user_id", "new-login"), ("anonymous_id", "10452")):
            forgotten = profile(hub, type_, value)
            assert forgotten is not None
            forget(hub, forgotten)
        with hub.store.write() as connection:
            graph = CachedIdentityGraph(connection)
            login = resolve(touchpoint(1, ("user_id", "10452")), graph, T0)
            with pytest.raises(ForgottenIdentityError):
                resolve(touchpoint(2, ("user_id", "old-login")), graph, T0)
        assert login.created and login.refused == ()
    finally:
        hub.store.dispose()


# --- explain ---------------------------------------------------------------------------------------------------

@BOTH_DATABASES
def test_profiles_explain_says_the_user_id_joined_as_an_aliases_previous_id(tmp_path: Path, database_url: str) -> None:
    """The explanation said only where each identifier was first seen: why a second login shared the profile,
    past the limit of one, was nowhere."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, alias_first())
        accept(hub, message("identify", userId="old-login"))
        person = profile(hub, "user_id", "new-login")
        assert person is not None
        with hub.store.read() as connection:
            graph = explain(connection, person)
            [alias_touchpoint] = connection.execute(
                select(identifiers.c.touchpoint_id).where(identifiers.c.type == "anonymous_id")
            ).scalars().all()
        url = hub.settings.database_url
    finally:
        hub.store.dispose()
    assert graph is not None
    why = {(item["type"], item["value"]): item["why"] for item in graph["identifiers"]}
    assert why[("user_id", "old-login")].startswith(f"joined as the previousId of alias touchpoint {alias_touchpoint}")
    assert "a user_id of this value joins here" in why[("anonymous_id", "old-login")]
    env = {"COLUMNS": "300", "PATH": "", "HUB_DATABASE_URL": url, "HOME": os.environ.get("HOME", "/tmp")}
    shown = subprocess.run([TOUCHHUB, "profiles", "explain", person], capture_output=True, text=True, timeout=60, env=env,
                           cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "user_id=old-login  joined as the previousId of alias touchpoint" in shown.stdout
    assert f"anonymous_id=old-login — user_id=old-login  the previousId of alias touchpoint {alias_touchpoint}" in shown.stdout


# --- the cost on the pipeline's path ---------------------------------------------------------------------------

@contextmanager
def caught(target: Connection | Engine, wanted: Callable[[str], bool]) -> Iterator[list[tuple[str, Any]]]:
    """The statements the block runs on `target` that `wanted` picks, with their parameters."""
    statements: list[tuple[str, Any]] = []

    def catch(_conn: object, _cursor: object, statement: str, parameters: Any, _context: object, _many: bool) -> None:
        if wanted(statement):
            statements.append((statement, parameters))

    event.listen(target, "before_cursor_execute", catch)
    try:
        yield statements
    finally:
        event.remove(target, "before_cursor_execute", catch)


@contextmanager
def alias_lookups(connection: Connection) -> Iterator[list[str]]:
    """SQLite's plan of each statement in the block that looks among aliases' previousIds."""
    plans: list[str] = []
    with caught(connection, lambda statement: "from_alias" in statement and statement.startswith("SELECT")) as statements:
        yield plans
    plans.extend(" | ".join(query_plan(connection, statement, parameters)) for statement, parameters in statements)


def test_only_a_user_id_seen_for_the_first_time_costs_a_lookup_and_it_searches_the_primary_key(store: Store) -> None:
    """The pipeline's graph asks among aliases' previousIds once for a new user_id, through the identifiers'
    primary key, and never for a known one (a returning visitor, a new cookie of a known login)."""
    cache = IdentityCache()
    with store.write() as connection, cache.locked(connection):
        graph = EpochCachedGraph(connection, cache)
        with alias_lookups(connection) as on_sign_up:
            resolve(touchpoint(1, ("user_id", "new-login"), ("previous_id", "old-login"), kind="alias"), graph, T0)
        with alias_lookups(connection) as on_known:
            resolve(touchpoint(2, ("user_id", "new-login"), ("anonymous_id", "fresh-cookie")), graph, T0)
            resolve(touchpoint(3, ("user_id", "new-login")), graph, T0)
        with alias_lookups(connection) as on_first_login:
            resolve(touchpoint(4, ("user_id", "old-login"), ("anonymous_id", "laptop")), graph, T0)
    assert len(on_sign_up) == 1 and on_known == [] and len(on_first_login) == 1
    for plan in on_sign_up + on_first_login:
        assert "SEARCH identifiers USING INDEX sqlite_autoindex_identifiers_1 (type=? AND value=?)" in plan, plan
        assert "SCAN" not in plan, plan


# --- aliases stored before the migration -----------------------------------------------------------------------

PREVIOUS = "olá-login"  # beyond ASCII: a touchpoint's JSON may hold it escaped


def stored_before_i18(store: Store) -> str:
    """An alias stored as resolution stored it before i18 (its previousId an unmarked anonymous id), with a cookie
    it also carried; returns the profile."""
    alias = touchpoint(1, ("previous_id", PREVIOUS), ("user_id", "new-login"), ("anonymous_id", "app-cookie"), kind="alias")
    with store.write() as connection:
        graph = SqlIdentityGraph(connection)
        person = graph.create_profile(T0)
        graph.attach(person, [Identifier("user_id", "new-login"), Identifier("anonymous_id", PREVIOUS),
                              Identifier("anonymous_id", "app-cookie")], alias.touchpoint_id, T0)
        touchpoints.insert(connection, alias, person, inbox_id=1)
    return person


def marked(store: Store) -> list[str]:
    with store.read() as connection:
        return list(connection.execute(select(identifiers.c.value).where(identifiers.c.from_alias)).scalars())


@BOTH_DATABASES
def test_an_alias_stored_before_the_upgrade_still_links_its_previous_id(database_url: str) -> None:
    """The migration marks the anonymous ids alias touchpoints brought in as their previousId, and only those:
    without it, every alias stored before the upgrade kept splitting its earlier login's first event off."""
    store = Store(database_url)
    try:
        store.migrate("i17_nfc_emails")
        person = stored_before_i18(store)
        store.migrate()
        assert marked(store) == [PREVIOUS]
        with store.write() as connection:
            first_login = resolve(touchpoint(2, ("user_id", PREVIOUS)), SqlIdentityGraph(connection), utcnow()).profile_id
            cookie_login = resolve(touchpoint(3, ("user_id", "app-cookie")), SqlIdentityGraph(connection), utcnow()).profile_id
            assert live_profile_id(connection, first_login) == person
        assert cookie_login != person  # the alias's own anonymousId was never a previousId
    finally:
        store.dispose()


@BOTH_DATABASES
def test_migration_i18_downgrades_and_marks_the_same_rows_again(database_url: str) -> None:
    """The way down drops the column; the way up again marks the same rows (a guard, not a defect seen)."""
    store = Store(database_url)
    try:
        store.migrate("i17_nfc_emails")
        stored_before_i18(store)
        store.migrate()
        with store.write() as connection:
            command.downgrade(_alembic_config(connection), "i17_nfc_emails")
        with store.read() as connection:
            assert "from_alias" not in {column["name"] for column in inspect(connection).get_columns("identifiers")}
        store.migrate()
        assert marked(store) == [PREVIOUS]
    finally:
        store.dispose()


def test_migration_i18_finds_the_alias_touchpoints_without_reading_the_whole_touchpoints_table(database_url: str) -> None:
    """It selected touchpoints by `kind` (no index has it), reading the largest table through and every alias
    row into memory while it held the ADD COLUMN's lock on identifiers (on PostgreSQL, every node's resolution
    waited). One UPDATE walks the anonymous ids by primary key and reads each one's touchpoint by its own."""
    store = Store(database_url)
    try:
        store.migrate("i17_nfc_emails")
        stored_before_i18(store)
        with caught(store.engine, lambda statement: "touchpoints" in statement) as statements:
            store.migrate()
        with store.read() as connection:
            [plan] = [query_plan(connection, statement, parameters) for statement, parameters in statements]
    finally:
        store.dispose()
    assert [statement.split()[0] for statement, _ in statements] == ["UPDATE"]
    assert "SEARCH identifiers USING INDEX sqlite_autoindex_identifiers_1 (type=?)" in plan, plan
    assert "SEARCH touchpoints USING INDEX sqlite_autoindex_touchpoints_1 (touchpoint_id=?)" in plan, plan
    assert not any(step.startswith("SCAN touchpoints") for step in plan), plan
