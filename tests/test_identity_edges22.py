"""Identity at its edges (audit 22): placeholder ids SDKs send, a phone written with the 00 international prefix,
and what `explain` says of an undone merge and of a merge made by an alias call."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console

from hub.clock import utcnow
from hub.identifiers import normalize_identifier
from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.identity_report import explain_tree
from hub.model import Identifier
from hub.runtime import Hub
from hub.store.identity_explain import explain
from hub.store.identity_repair import unmerge
from hub.store.profile_views import find_profile_id, profile_view
from tests.conftest import message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on

NOW = datetime.now(timezone.utc)
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def ago(minutes: float) -> str:
    return (NOW - timedelta(minutes=minutes)).isoformat()


def owner(hub: Hub, type_: str, value: str) -> str | None:
    with hub.store.read() as connection:
        return find_profile_id(connection, Identifier(type_, value))


def identifiers_of(hub: Hub, profile_id: str | None) -> dict[str, list[str]]:
    assert profile_id is not None
    with hub.store.read() as connection:
        return profile_view(connection, profile_id)["identifiers"]


def graph_of(hub: Hub, profile_id: str | None) -> dict:
    assert profile_id is not None
    with hub.store.read() as connection:
        graph = explain(connection, profile_id)
    assert graph is not None
    return graph


# --- placeholder ids ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("type_", "value", "fields"), [
    ("device_id", ZERO_UUID, {"context": {"device": {"id": ZERO_UUID}}}),
    ("anonymous_id", ZERO_UUID, {"anonymousId": ZERO_UUID}),
    ("user_id", "anonymous", {"userId": "anonymous"}),
    ("user_id", "guest", {"userId": "Guest"}),
])
def test_strangers_sending_a_placeholder_id_stay_apart(tmp_path: Path, type_: str, value: str, fields: dict) -> None:
    """The all-zero id an OS gives a device with ad tracking limited (or a broken SDK's anonymousId), and the
    userId "anonymous" / "guest" apps send for a signed-out user, were identifiers: every stranger sending one
    was merged into one profile, and one's messages went to the other's email."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", traits={"email": "amy@x.io"}, timestamp=ago(10), **{"anonymousId": "amy-cookie", **fields}))
        accept(hub, message("identify", traits={"email": "bob@x.io"}, timestamp=ago(5), **{"anonymousId": "bob-cookie", **fields}))
        assert owner(hub, "email", "amy@x.io") != owner(hub, "email", "bob@x.io")
        assert owner(hub, type_, value) is None
    finally:
        hub.store.dispose()


@pytest.mark.parametrize("raw", [ZERO_UUID, "0000-0000", " 000000 "])
def test_an_id_of_zeroes_and_dashes_is_refused_even_by_an_identity_file_that_does_not_list_it(raw: str) -> None:
    """An identity.yaml written before these placeholders were known lists its own junk values: the zero id
    must not link strangers there either."""
    config = IdentityConfig(identifier_types=DEFAULT_IDENTITY.identifier_types, junk_values=["null"])
    assert normalize_identifier("device_id", raw, "US", config) is None
    assert normalize_identifier("device_id", "00000000-0000-0000-0000-000000000001", "US", config) is not None


# --- phones -------------------------------------------------------------------------------------------------------

def test_a_phone_written_with_the_00_international_prefix_is_kept_and_links_the_same_number_written_with_plus(
    tmp_path: Path,
) -> None:
    """"0044 20 7946 0958" (the ITU's 00 prefix, how most of the world writes +44) with the default region US was
    read as a US number, found invalid and silently dropped: no SMS could reach the person, and a later event
    with "+44 20 7946 0958" did not link to them."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", userId="nigel", traits={"phone": "0044 20 7946 0958"}, timestamp=ago(5)))
        accept(hub, message("identify", anonymousId="nigel-app", traits={"phone": "+44 20 7946 0958"}, timestamp=ago(4)))
        nigel = owner(hub, "user_id", "nigel")
        assert identifiers_of(hub, nigel)["phone"] == ["+442079460958"]
        assert owner(hub, "anonymous_id", "nigel-app") == nigel
    finally:
        hub.store.dispose()


# --- explain ------------------------------------------------------------------------------------------------------

@BOTH_DATABASES
def test_explain_leaves_out_a_merge_into_another_person_that_was_undone(tmp_path: Path, database_url: str) -> None:
    """B's tablet was wrongly merged into Ana by her email, unmerged, then rightly merged into Cara. Cara's
    explain listed every merge of B, the undone one too: a merge whose survivor was Ana, and Ana's email as a
    link in Cara's identity graph."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", anonymousId="cara-laptop", traits={"email": "cara@x.io"}, timestamp=ago(90)))
        accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "ana@x.io"}, timestamp=ago(80)))
        accept(hub, message("page", anonymousId="b-tablet", timestamp=ago(70)))
        accept(hub, message("identify", anonymousId="b-tablet", traits={"email": "ana@x.io"}, timestamp=ago(60)))
        ana = owner(hub, "email", "ana@x.io")
        [b] = graph_of(hub, ana)["aliases"]
        with hub.store.write() as connection:
            unmerge(connection, ana, b, utcnow())
        accept(hub, message("identify", anonymousId="b-tablet", traits={"email": "cara@x.io"}, timestamp=ago(50)))
        cara = owner(hub, "email", "cara@x.io")
        graph = graph_of(hub, cara)
        assert graph["aliases"] == [b]
        assert [(merge["survivor_id"], merge["merged_profile_id"]) for merge in graph["merges"]] == [(cara, b)]
        assert "ana@x.io" not in repr(graph["links"])
    finally:
        hub.store.dispose()


def test_explain_says_a_merge_made_by_an_alias_call_was_an_alias_not_a_link_within_every_limit(tmp_path: Path) -> None:
    """alias(previousId="old", userId="new") merges two profiles that each hold a user_id, past the one-user_id
    limit. Explain (API, console, `touchhub profiles explain`) gave the merge the rule "shared identifiers within
    every limit", false for a profile now holding two user_ids, and never said it was an alias; the CLI did not
    print a merge's rule at all."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", userId="old", traits={"email": "o@x.io"}, timestamp=ago(10)))
        accept(hub, message("identify", userId="new", traits={"email": "n@x.io"}, timestamp=ago(9)))
        accept(hub, message("alias", userId="new", previousId="old", timestamp=ago(8)))
        profile_id = owner(hub, "user_id", "new")
        assert sorted(identifiers_of(hub, profile_id)["user_id"]) == ["new", "old"]
        graph = graph_of(hub, profile_id)
        [merge] = graph["merges"]
        assert merge["rule"].startswith("alias call:") and "within every limit" not in merge["rule"]
        console = Console(width=300, record=True)
        console.print(explain_tree(graph))
        [merge_line] = [line for line in console.export_text().splitlines() if "merged via" in line]
        assert "alias call:" in merge_line
    finally:
        hub.store.dispose()


def test_explain_still_calls_a_merge_by_a_shared_identifier_within_every_limit(tmp_path: Path) -> None:
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", anonymousId="web", traits={"email": "kim@x.io"}, timestamp=ago(10)))
        accept(hub, message("identify", userId="kim", anonymousId="app", timestamp=ago(9)))
        accept(hub, message("identify", anonymousId="app", traits={"email": "kim@x.io"}, timestamp=ago(8)))
        [merge] = graph_of(hub, owner(hub, "user_id", "kim"))["merges"]
        assert merge["rule"] == "shared identifiers within every limit"
    finally:
        hub.store.dispose()
