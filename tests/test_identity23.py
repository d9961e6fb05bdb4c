"""A shared device's refused link recorded once however often it recurs (migration i23), and a lookup by an identifier type
identity.yaml does not declare answered as a bad request (audit 23)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, select

from hub.cli_profiles import app as profiles_app
from hub.identity import resolve
from hub.identity_cache import CachedIdentityGraph
from hub.store import Store
from hub.store.identity_explain import explain
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.schema import identity_events
from tests.conftest import ADMIN_TOKEN, RunningHub, message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_cli_output20 import run
from tests.test_identity import T0, touchpoint
from tests.test_identity_edges import profile

DECLARED = "user_id, crm_id, email, phone, device_id, push_token, anonymous_id, hubspot_deal_id, loyalty_id"


def refusals(store: Store) -> list[tuple[str, str | None, list[list[str]], int]]:
    with store.read() as connection:
        rows = connection.execute(
            select(identity_events).where(identity_events.c.kind == "refused").order_by(identity_events.c.id)
        ).mappings().all()
    return [(row["profile_id"], row["other_profile_id"], row["identifiers"], row.get("times")) for row in rows]


@BOTH_DATABASES
def test_a_kiosks_refused_link_is_one_audit_row_counting_each_event(tmp_path: Path, database_url: str) -> None:
    """Every event of a second person on the store's kiosk wrote one more refused row for the kiosk's device id:
    a busy kiosk grew identity_events with its traffic. The refusal is one row with a count and when it was
    last seen, and explain still shows it."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", userId="dad", anonymousId="kiosk"))
        for n in range(3):
            accept(hub, message(userId="kid", anonymousId="kiosk", event=f"Product Viewed {n}"))
        dad, kid = profile(hub, "user_id", "dad"), profile(hub, "user_id", "kid")
        assert refusals(hub.store) == [(kid, dad, [["anonymous_id", "kiosk"]], 3)]
        with hub.store.read() as connection:
            [refused] = explain(connection, kid)["refused"]
        assert (refused["other_profile_id"], refused["times"]) == (dad, 3)
        assert refused["last_at"] > refused["at"]
    finally:
        hub.store.dispose()


def test_the_bulk_graph_records_a_recurring_refusal_once_too(store: Store) -> None:
    """The bulk path (a backfill or replay through `CachedIdentityGraph`) appended a refused row per touchpoint,
    within a flush and across flushes."""
    with store.write() as connection:
        graph = CachedIdentityGraph(connection)
        dad = resolve(touchpoint(1, ("user_id", "dad"), ("device_id", "kiosk")), graph, T0).profile_id
        kid = resolve(touchpoint(2, ("user_id", "kid"), ("device_id", "kiosk")), graph, T0).profile_id
        resolve(touchpoint(3, ("user_id", "kid"), ("device_id", "kiosk")), graph, T0)
        graph.flush(connection)
    with store.write() as connection:
        graph = CachedIdentityGraph(connection)
        resolve(touchpoint(4, ("user_id", "kid"), ("device_id", "kiosk")), graph, T0)
        graph.flush(connection)
    assert refusals(store) == [(kid, dad, [["device_id", "kiosk"]], 3)]


def test_profiles_show_names_an_undeclared_identifier_type_and_the_declared_ones(store: Store) -> None:
    """`touchhub profiles show emial:ana@x.io` (a typo) answered "No profile 'emial:ana@x.io'" (exit 1), as if
    nobody had that address."""
    result = run(profiles_app, store.url, "show", "emial:ana@x.io")
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.replace("│", " ").split())
    assert f"'emial' is not an identifier type declared in identity.yaml; use one of: {DECLARED}" in flat, flat


def test_a_lookup_by_an_undeclared_identifier_type_is_a_bad_request(running_hub: RunningHub) -> None:
    """GET /api/profiles/lookup?type=emial answered 404 "no profile has emial ...": a typo read as nobody."""
    answer = running_hub.client.get("/api/profiles/lookup", params={"type": "emial", "value": "ana@x.io"},
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 400
    assert answer.json()["detail"] == f"type: 'emial' is not an identifier type declared in identity.yaml; use one of: {DECLARED}"


@BOTH_DATABASES
def test_migration_i23_folds_the_refusals_stored_before_into_one_counted_row(database_url: str) -> None:
    """A kiosk's refusals written before the upgrade are folded to their first row, counted, and the next
    refusal of that link counts on it; a row whose identifiers a forget emptied stays as it was."""
    store = Store(database_url)
    try:
        store.migrate("i22_sent_at")
        with store.write() as connection:
            graph = SqlIdentityGraph(connection)
            dad = resolve(touchpoint(1, ("user_id", "dad"), ("device_id", "kiosk")), graph, T0).profile_id
            kid = resolve(touchpoint(2, ("user_id", "kid")), graph, T0).profile_id
            refused = {"kind": "refused", "profile_id": kid, "other_profile_id": dad, "touchpoint_id": "t",
                       "rule": "limit: at most 1 user_id per profile"}
            connection.execute(insert(identity_events), [
                {**refused, "identifiers": [["device_id", "kiosk"]], "at": T0 + timedelta(minutes=n)} for n in range(3)
            ] + [{**refused, "identifiers": [], "at": T0}])
        store.migrate()
        assert refusals(store) == [(kid, dad, [["device_id", "kiosk"]], 3), (kid, dad, [], 1)]
        with store.write() as connection:
            resolve(touchpoint(3, ("user_id", "kid"), ("device_id", "kiosk")), SqlIdentityGraph(connection), T0 + timedelta(hours=1))
            [first, _forgotten] = explain(connection, kid)["refused"]
        assert (first["times"], first["at"], first["last_at"]) == (4, T0, T0 + timedelta(hours=1))
    finally:
        store.dispose()
