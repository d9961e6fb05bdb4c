"""Nodes of one store that differ: with and without HUB_FORGET_KEY, and of two releases in a rolling upgrade.

Each node is a hub (or a store) of its own, as on separate machines, whose workers are not started: the test
drives each step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text

from hub.cli_store import existing_store
from hub.errors import ConfigError
from hub.identity import resolve
from hub.identity_cache import CachedIdentityGraph
from hub.runtime import Hub
from hub.secret_urls import shown_url
from hub.store import Store, inbox
from hub.store.opening import open_store
from hub.store.profile_views import find_profile_id
from hub.store.schema import forgotten_identifiers
from tests.conftest import make_settings, message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_forget_key24 import EMAIL, KEY, PHONE, SAMS, sam_signs_up_and_is_forgotten
from tests.test_identity_alias_order import T0, touchpoint

NEWER_REVISION = "i99_from_a_newer_hub"
SAMS_IDENTIFY = message("identify", userId="sam", traits={"email": EMAIL, "phone": PHONE})


# --- a node without HUB_FORGET_KEY beside nodes with it -------------------------------------------------------

def sams_profiles(hub: Hub) -> list[str | None]:
    with hub.store.read() as connection:
        return [find_profile_id(connection, ident) for ident in SAMS]


def inbox_statuses(hub: Hub) -> dict[str, int]:
    with hub.store.read() as connection:
        return inbox.count_by_status(connection)


def drain(hub: Hub) -> None:
    while hub.pipeline.run_once():
        pass


def assert_refused_for_the_missing_key(refused: pytest.ExceptionInfo[ConfigError]) -> None:
    said = str(refused.value)
    assert "HUB_FORGET_KEY: not set on this node" in said and "set HUB_FORGET_KEY to the other nodes' key" in said, said


@BOTH_DATABASES
def test_a_node_without_the_forget_key_does_not_start_on_a_keyed_blocklist(tmp_path: Path, database_url: str) -> None:
    """Sam was forgotten on a node with HUB_FORGET_KEY. A node of the same store started without it (its environment
    missed the key) looked up only the plain sha256, which no keyed row holds, and took Sam back in at his old
    install's next identify. Now it refuses to start, naming the setting."""
    keyed_node = hub_on(tmp_path / "keyed", database_url=database_url, forget_key=KEY)
    try:
        sam_signs_up_and_is_forgotten(keyed_node)
    finally:
        keyed_node.store.dispose()
    with pytest.raises(ConfigError) as refused:
        hub_on(tmp_path / "plain", database_url=database_url)
    assert_refused_for_the_missing_key(refused)


@BOTH_DATABASES
def test_a_node_still_running_without_the_key_when_another_keys_the_blocklist_keeps_its_events_for_a_keyed_node(
    tmp_path: Path, database_url: str
) -> None:
    """The rollout README asks for: node 1 restarts with HUB_FORGET_KEY while node 2 still runs without it. Node 1
    keys the plain rows in place at its start, and node 2, looking up plain digests only, took Sam back in with the
    next event it processed. Now node 2's batches fail with an error naming the setting, the event stays in the
    inbox, and the keyed node refuses Sam when it takes it."""
    node_2 = hub_on(tmp_path / "node2", database_url=database_url)
    node_1: Hub | None = None
    try:
        sam_signs_up_and_is_forgotten(node_2)
        node_1 = hub_on(tmp_path / "node1", database_url=database_url, forget_key=KEY)
        with pytest.raises(ConfigError) as refused:
            accept(node_2, SAMS_IDENTIFY)
        assert_refused_for_the_missing_key(refused)
        assert sams_profiles(node_2) == [None, None, None]
        assert inbox_statuses(node_2)["pending"] == 1
        drain(node_1)
        assert sams_profiles(node_1) == [None, None, None]
        assert "pending" not in inbox_statuses(node_1)
    finally:
        node_2.store.dispose()
        if node_1 is not None:
            node_1.store.dispose()


@BOTH_DATABASES
def test_a_node_without_the_key_stops_taking_events_once_a_keyed_node_forgets_someone(
    tmp_path: Path, database_url: str
) -> None:
    """A keyed node and one without the key start on a blocklist with no keyed row (allowed: the keyed node refuses
    the plain rows the other writes). The keyed node forgets Sam, keyed: the other node took him back in at his next
    identify. Now it fails its batches instead, the event left in the inbox."""
    keyed_node = hub_on(tmp_path / "keyed", database_url=database_url, forget_key=KEY)
    plain_node = hub_on(tmp_path / "plain", database_url=database_url)
    try:
        sam_signs_up_and_is_forgotten(keyed_node)
        with pytest.raises(ConfigError) as refused:
            accept(plain_node, SAMS_IDENTIFY)
        assert_refused_for_the_missing_key(refused)
        assert sams_profiles(plain_node) == [None, None, None]
        assert inbox_statuses(plain_node)["pending"] == 1
    finally:
        plain_node.store.dispose()
        keyed_node.store.dispose()


@BOTH_DATABASES
def test_the_in_memory_graph_of_a_backfill_without_the_key_refuses_a_keyed_blocklist(tmp_path: Path, database_url: str) -> None:
    """The bulk path (`CachedIdentityGraph`) on a store opened without the key read the keyed rows as nothing: an
    event carrying Sam's email and phone made a new profile of them."""
    keyed_node = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    try:
        sam_signs_up_and_is_forgotten(keyed_node)
    finally:
        keyed_node.store.dispose()
    store = Store(database_url)  # as a script opens it: no keys
    try:
        with store.write() as connection, pytest.raises(ConfigError) as refused:
            resolve(touchpoint(1, ("email", EMAIL), ("phone", PHONE)), CachedIdentityGraph(connection), T0)
        assert_refused_for_the_missing_key(refused)
        with store.read() as connection:
            assert [find_profile_id(connection, ident) for ident in SAMS] == [None, None, None]
            assert connection.execute(select(forgotten_identifiers.c.keyed)).scalars().all() == [True] * len(SAMS)
    finally:
        store.dispose()


# --- a node of the previous release on a store a newer one migrated -----------------------------------------

def a_newer_hub_upgraded(store: Store) -> None:
    """What a node of the next release leaves behind in a rolling upgrade: its migration, one this hub lacks."""
    with store.write() as connection:
        connection.execute(text(f"UPDATE alembic_version SET version_num = '{NEWER_REVISION}'"))


def stored_revisions(store: Store) -> list[str]:
    with store.read() as connection:
        return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


@BOTH_DATABASES
def test_a_node_of_the_previous_release_starting_on_a_store_a_newer_node_migrated_is_told_to_run_that_release(
    store: Store, database_url: str
) -> None:
    """A node of the old release restarts after a node of the new one migrated the store: `open_store(migrate=True)`
    (what serve, worker and `touchhub migrate` run first) let alembic's CommandError "Can't locate revision
    identified by ..." out as a traceback. Now a ConfigError naming HUB_DATABASE_URL, the revision, and what to do;
    the schema is left as the newer node made it."""
    a_newer_hub_upgraded(store)
    with pytest.raises(ConfigError) as refused:
        open_store(database_url, migrate=True).dispose()
    assert refused.value.problems == [
        f"HUB_DATABASE_URL={shown_url(database_url)}: the schema is from a newer hub (revision {NEWER_REVISION})",
        "run that release or newer; this one can neither read the schema nor migrate it back",
    ]
    assert stored_revisions(store) == [NEWER_REVISION]


@BOTH_DATABASES
def test_a_cli_command_on_a_store_a_newer_node_migrated_says_it_is_newer_not_to_run_migrate(
    tmp_path: Path, store: Store, database_url: str
) -> None:
    """`touchhub deliveries list` (any command reading the store) on a store a newer release migrated said "it has
    an older hub's schema ... bring the schema up to date with `touchhub migrate`", which fails on it. Now it says
    the schema is newer, and to run that release."""
    a_newer_hub_upgraded(store)
    with pytest.raises(ConfigError) as refused:
        existing_store(make_settings(tmp_path, database_url=database_url)).dispose()
    said = str(refused.value)
    assert f"the schema is from a newer hub (revision {NEWER_REVISION})" in said, said
    assert "older" not in said and "touchhub migrate" not in said, said
