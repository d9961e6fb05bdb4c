"""Explaining, unmerging and forgetting profiles: in the store, over the admin API and in the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.consent import consent_revoked, set_consent, set_consent_by_identifier
from hub.errors import ConfigError, ForgottenIdentityError, IdentityRepairError
from hub.identity import resolve
from hub.model import Delivery, Identifier, PlannedDelivery, RawEvent, Touchpoint, derived_id
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.store import Store, decisions, delivery_log, outbox, touchpoints
from hub.store.consent_changes import PINNED
from hub.store import inbox as inbox_queue
from hub.store.identity_explain import explain
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.profile_views import counts, find_profile_id, profile_view
from hub.store.forget import forget
from hub.store.identity_repair import unmerge
from hub.store.schema import attempts, consent_changes, deliveries, forgotten_identifiers, identity_events, inbox, merges
from hub.store.schema import touchpoints as touchpoints_table
from hub.store.sends_in_flight import AttemptRecord, AttemptResult, record_attempts
from tests.conftest import ADMIN_TOKEN, RunningHub, make_settings, message

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path}/repair.db")
    store.migrate()
    return store


def ingest(store: Store, n: int, *idents: tuple[str, str], traits: dict | None = None) -> str:
    """Resolve and store a touchpoint as the pipeline does; returns its profile id."""
    tp = Touchpoint(
        touchpoint_id=derived_id("test", str(n)), source_id="test", message_id=str(n), kind="track", event=f"event {n}",
        stage="awareness", moment="other", occurred_at=T0 + timedelta(minutes=n), received_at=T0,
        identifiers=tuple(Identifier(t, v) for t, v in idents), traits=traits or {},
        properties={"note": f"about {idents[0][1]}"},
    )
    with store.write() as connection:
        graph = SqlIdentityGraph(connection)
        resolution = resolve(tp, graph, T0)
        graph.update_traits(resolution.profile_id, tp.traits, tp.occurred_at)
        touchpoints.insert(connection, tp, resolution.profile_id, inbox_id=n)
        return resolution.profile_id


def bad_link(store: Store) -> tuple[str, str]:
    """Ana and Bo, wrongly linked by a shared support-desk email address."""
    ana = ingest(store, 1, ("anonymous_id", "ana-phone"), ("email", "ana@x.io"), traits={"name": "Ana", "plan": "pro"})
    bo = ingest(store, 2, ("anonymous_id", "bo-laptop"), ("email", "bo@x.io"), traits={"name": "Bo", "city": "Oslo"})
    ingest(store, 3, ("anonymous_id", "bo-laptop"), traits={"city": "Bergen"})
    ingest(store, 4, ("email", "ana@x.io"), ("email", "bo@x.io"))  # the bad link
    return ana, bo


def test_explain_shows_each_identifier_link_and_merge_with_its_touchpoint(store: Store) -> None:
    ana, bo = bad_link(store)
    with store.read() as connection:
        graph = explain(connection, bo)  # an alias explains its survivor
    assert graph is not None and graph["profile_id"] == ana and graph["aliases"] == [bo]
    joined = {(i["type"], i["value"]): i["touchpoint_id"] for i in graph["identifiers"]}
    assert joined[("email", "bo@x.io")] == derived_id("test", "2")
    assert "first seen on touchpoint" in graph["identifiers"][0]["why"] and "event 1 from test" in graph["identifiers"][0]["why"]
    pairs = {(tuple(link["from"]), tuple(link["to"])) for link in graph["links"]}
    assert (("anonymous_id", "ana-phone"), ("email", "ana@x.io")) in pairs
    assert (("email", "ana@x.io"), ("email", "bo@x.io")) in pairs
    [merge] = graph["merges"]
    assert (merge["merged_profile_id"], merge["touchpoint_id"]) == (bo, derived_id("test", "4"))
    assert merge["linking_identifiers"] == [["email", "ana@x.io"], ["email", "bo@x.io"]]


def test_unmerge_splits_off_the_merged_identifiers_touchpoints_and_traits_and_keeps_them_apart(store: Store) -> None:
    ana, bo = bad_link(store)
    with store.write() as connection:
        result = unmerge(connection, ana, bo, T0)
    assert result["restored_profile_id"] == bo
    assert sorted(result["identifiers"]) == [["anonymous_id", "bo-laptop"], ["email", "bo@x.io"]]
    assert result["touchpoints"] == 2  # touchpoints 2 and 3; the linking touchpoint 4 stays with Ana
    with store.read() as connection:
        ana_view, bo_view = profile_view(connection, ana), profile_view(connection, bo)
        owners = dict(connection.execute(select(touchpoints_table.c.message_id, touchpoints_table.c.profile_id)).all())
        assert counts(connection)["profiles"] == 2
    assert ana_view["identifiers"] == {"email": ["ana@x.io"], "anonymous_id": ["ana-phone"]}
    assert ana_view["traits"] == {"name": "Ana", "plan": "pro"}
    assert bo_view["traits"] == {"name": "Bo", "city": "Bergen"}
    assert owners == {"1": ana, "2": bo, "3": bo, "4": ana}
    # The same bad link again is refused now, and says why.
    again = ingest(store, 5, ("email", "ana@x.io"), ("email", "bo@x.io"))
    assert again == ana
    with store.read() as connection:
        graph = explain(connection, ana)
    assert [r["rule"] for r in graph["refused"]] == ["kept apart: an unmerge separated these profiles"]
    assert graph["unmerges"][0]["other_profile_id"] == bo


def test_unmerge_of_a_profile_that_was_not_merged_in_is_refused(store: Store) -> None:
    ana, bo = bad_link(store)
    stranger = ingest(store, 9, ("user_id", "stranger"))
    with store.write() as connection, pytest.raises(IdentityRepairError, match="was not merged into"):
        unmerge(connection, ana, stranger, T0)
    with store.write() as connection, pytest.raises(IdentityRepairError, match="no profile"):
        unmerge(connection, "01NOSUCHPROFILE0000000000", bo, T0)


def test_forget_erases_identifiers_traits_and_touchpoint_pii_but_keeps_counts(store: Store) -> None:
    ana, _ = bad_link(store)
    with store.write() as connection:
        result = forget(connection, ana, T0, block_identifiers=True)
    assert result == {"profile_id": ana, "identifiers": 4, "touchpoints": 4, "deliveries": 0, "crm_erasures": 0}
    with store.read() as connection:
        assert profile_view(connection, ana) is None
        assert find_profile_id(connection, Identifier("email", "ana@x.io")) is None
        rows = connection.execute(select(touchpoints_table)).mappings().all()
        assert connection.execute(select(forgotten_identifiers)).scalars().all()
        audit = connection.execute(select(identity_events.c.identifiers)).scalars().all()
    assert len(rows) == 4  # counts survive
    assert all(row["identifiers"] == [] and row["properties"] == {} and row["traits"] == {} for row in rows)
    assert "ana@x.io" not in repr(audit)
    # A forgotten identifier cannot bring the person back.
    new = ingest(store, 10, ("email", "ana@x.io"), ("anonymous_id", "fresh-cookie"))
    with store.read() as connection:
        assert profile_view(connection, new)["identifiers"] == {"anonymous_id": ["fresh-cookie"]}
    with pytest.raises(ForgottenIdentityError):
        ingest(store, 11, ("email", "ana@x.io"), ("anonymous_id", "ana-phone"))


def test_admin_api_explains_unmerges_and_forgets(running_hub: RunningHub) -> None:
    running_hub.send(
        message("identify", userId="u-ana", traits={"email": "ana@example.com", "phone": "+14155550101"}),
        message("identify", anonymousId="kiosk", traits={"email": "bo@example.com"}),
    )
    running_hub.settle()
    running_hub.send(message("track", event="Product Viewed", userId="u-ana", anonymousId="kiosk"))
    running_hub.settle()
    profile = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-ana")
    [merged] = profile["merged_profile_ids"]
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    graph = running_hub.admin(f"/api/profiles/{profile['profile_id']}/explain")
    assert graph["merges"][0]["merged_profile_id"] == merged

    client = running_hub.client
    assert client.get(f"/api/profiles/{merged}/explain").status_code == 401
    missing = client.post(f"/api/profiles/{profile['profile_id']}/unmerge", json={}, headers=auth)
    assert missing.status_code == 422 and "merged_profile_id" in missing.text
    wrong = client.post(f"/api/profiles/{profile['profile_id']}/unmerge", json={"merged_profile_id": "nope"}, headers=auth)
    assert wrong.status_code == 404
    undone = client.post(f"/api/profiles/{profile['profile_id']}/unmerge", json={"merged_profile_id": merged}, headers=auth)
    assert undone.status_code == 200, undone.text
    assert ["email", "bo@example.com"] in undone.json()["identifiers"]

    forgotten = client.delete(f"/api/profiles/{merged}", headers=auth)
    assert forgotten.status_code == 200 and forgotten.json()["identifiers"] == 2
    assert client.get(f"/api/profiles/{merged}", headers=auth).status_code == 404
    assert client.delete(f"/api/profiles/{merged}", headers=auth).status_code == 404
    touchpoints_left = running_hub.admin("/api/touchpoints")["touchpoints"]
    assert len(touchpoints_left) == 3 and "bo@example.com" not in repr(touchpoints_left)
    with running_hub.hub.store.read() as connection:
        payloads = connection.execute(select(inbox.c.payload)).scalars().all()
    assert len(payloads) == 3 and "bo@example.com" not in repr(payloads) and "ana@example.com" in repr(payloads)

    # The forgotten person comes back with only forgotten identifiers: dropped, not stored, not quarantined.
    running_hub.send(message("identify", anonymousId="kiosk", traits={"email": "bo@example.com"}))
    running_hub.settle()
    assert len(running_hub.admin("/api/touchpoints")["touchpoints"]) == 3
    assert running_hub.admin("/api/quarantine")["quarantine"] == []
    with running_hub.hub.store.read() as connection:
        statuses = connection.execute(select(inbox.c.status, inbox.c.payload).order_by(inbox.c.id)).all()
    assert statuses[-1] == ("done", {})


def test_cli_explain_prints_the_graph_with_masked_pii(store: Store, tmp_path: Path) -> None:
    ana, bo = bad_link(store)
    env = {"COLUMNS": "200", "PATH": "", "HUB_DATABASE_URL": store.url, "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run([TOUCHHUB, "profiles", "explain", bo], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"profile {ana}" in result.stdout
    assert "merges (1)" in result.stdout and f"{bo} merged via" in result.stdout
    assert "a***@x.io" in result.stdout and "ana@x.io" not in result.stdout
    missing = subprocess.run([TOUCHHUB, "profiles", "explain", "nope"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "No profile" in missing.stderr


def test_profiles_explain_cuts_push_tokens_short_as_the_delivery_log_does() -> None:
    """Emails and phones were masked and a device's push token printed whole: enough to message the device."""
    from rich.console import Console

    from hub.identity_report import explain_tree

    token = "fcm-token-0123456789abcdef-the-rest"
    graph = {"profile_id": "P", "aliases": [], "links": [], "merges": [], "refused": [], "unmerges": [], "detached": [], "moved": [],
             "identifiers": [{"type": "push_token", "value": token, "why": "seen"}, {"type": "email", "value": "ana@x.io", "why": "seen"}]}
    console = Console(width=200, record=True)
    console.print(explain_tree(graph))
    masked = console.export_text()
    console.print(explain_tree(graph, show_pii=True))
    shown = console.export_text()
    assert "push_token=fcm-token-…" in masked and token not in masked and "a***@x.io" in masked
    assert token in shown and "ana@x.io" in shown


def test_profiles_explain_prints_markup_in_data_as_text() -> None:
    """A reason naming an event called "[/] Sale [bold]" made `touchhub profiles explain` crash with a
    MarkupError (or garbled its styles): data was written into the lines' Rich markup."""
    from rich.console import Console

    from hub.identity_report import explain_tree

    why = "joined with touchpoint of event '[/] Sale [bold]'"
    graph = {"profile_id": "P", "aliases": [], "merges": [], "unmerges": [], "detached": [], "moved": [],
             "identifiers": [{"type": "user_id", "value": "u-[/]", "why": why}],
             "links": [{"from": ["user_id", "u-[/]"], "to": ["anonymous_id", "a-[red]"], "why": why, "touchpoint_id": "t-1"}],
             "refused": [{"identifiers": [["user_id", "[/]x"]], "other_profile_id": None, "rule": "[/]rule",
                          "touchpoint_id": "t-2", "at": None}]}
    console = Console(width=300, record=True)
    console.print(explain_tree(graph))
    shown = console.export_text()
    assert why in shown and "u-[/]" in shown and "a-[red]" in shown and "user_id=[/]x: [/]rule" in shown


def test_forget_wipes_the_delivery_log_but_keeps_its_counts(store: Store) -> None:
    ana, _ = bad_link(store)
    planned = PlannedDelivery("d-1", "dec-1", ana, "sms", "twilio_sms", "+14155550101", {"body": "Hi Ana"})
    with store.write() as connection:
        outbox.plan(connection, [planned], T0)
        record_attempts(connection, [AttemptResult(
            Delivery("d-1", "twilio_sms", "sms", "+14155550101", planned.content, 0, T0),
            AttemptRecord(T0, 12.0, "sent", "SM1", None, None, {"To": "+1******0101"}, {"sid": "SM1"}),
            "sent", None,
        )])
        assert forget(connection, ana, T0, block_identifiers=False)["deliveries"] == 1
    with store.read() as connection:
        delivery = connection.execute(select(deliveries)).mappings().one()
        attempt = connection.execute(select(attempts)).mappings().one()
        assert connection.execute(select(forgotten_identifiers)).first() is None  # blocking was off
    assert (delivery["target"], delivery["content"], delivery["status"]) == ("(forgotten)", {}, "sent")
    assert (attempt["request_summary"], attempt["outcome"]) == ({}, "sent")


def test_alias_over_http_merges_an_earlier_user_id_as_segment_documents(running_hub: RunningHub) -> None:
    running_hub.send(message("identify", userId="old-login", traits={"plan": "pro"}))
    running_hub.send(message("identify", userId="new-login", traits={"email": "sam@example.com"}))
    running_hub.settle()
    running_hub.send(message("alias", userId="new-login", previousId="old-login"))
    running_hub.settle()
    profile = running_hub.admin("/api/profiles/lookup", type="user_id", value="new-login")
    assert sorted(profile["identifiers"]["user_id"]) == ["new-login", "old-login"]
    assert "anonymous_id" not in profile["identifiers"]  # previousId was a known userId, not a new anonymous id
    assert profile["traits"] == {"plan": "pro", "email": "sam@example.com"}


def test_hub_refuses_a_mapping_identifier_type_identity_yaml_does_not_declare(tmp_path: Path) -> None:
    folder = tmp_path / "mappings"
    folder.mkdir()
    for item in PROJECT_MAPPINGS.iterdir():
        target = folder / item.name
        target.symlink_to(item)
    (folder / "identity.yaml").unlink()
    (folder / "identity.yaml").write_text("identifier_types:\n  - {type: user_id, limit: 1}\n")
    with pytest.raises(ConfigError) as caught:
        Hub(make_settings(tmp_path, mappings_dir=folder))
    assert any("identifiers.email: not declared in identity.yaml" in problem for problem in caught.value.problems)
    (folder / "identity.yaml").unlink()  # a folder from before identity.yaml existed: the shipped defaults
    hub = Hub(make_settings(tmp_path, mappings_dir=folder))
    assert hub.pipeline.config.identity.limit("user_id") == 1
    hub.store.dispose()


def test_after_a_merge_the_caps_count_what_the_merged_profile_was_sent(tmp_path: Path) -> None:
    """The rule caps and the daily cap read decisions and deliveries by profile: a merge moves them to the
    survivor, as it moves touchpoints, or a person first reached as an anonymous visitor was messaged again."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "templates" / "ping.j2").write_text("Hi")
    (mappings / "triggers.yaml").write_text(
        "rules:\n"
        "  - {id: ping, when: {event: Ping}, respond: [{channel: sms, template: ping.j2}], cap: {max: 1, within: 1h}}\n"
        "  - {id: ping_again, when: {event: Ping Again}, respond: [{channel: sms, template: ping.j2}]}\n"
    )
    hub = Hub(make_settings(tmp_path, mappings_dir=str(mappings), quiet_hours="", daily_message_cap=1))
    at = datetime.now(timezone.utc)

    def accept(minutes_ago: int, kind: str = "track", **fields: object) -> None:
        event = message(kind, timestamp=(at - timedelta(minutes=minutes_ago)).isoformat(), **fields)
        with hub.store.write() as connection:
            inbox_queue.append(connection, [RawEvent("default", event["messageId"], event)], at)
        while hub.pipeline.run_once():
            pass

    accept(60 * 24, "identify", userId="u-1", traits={"email": "ana@example.com"})
    accept(3, anonymousId="anon-1", event="Ping", context={"traits": {"phone": "+14155550142"}})  # an SMS
    accept(2, "identify", userId="u-1", anonymousId="anon-1")  # anon-1 merges into u-1
    accept(1, userId="u-1", event="Ping")
    accept(0, userId="u-1", event="Ping Again")
    with hub.store.read() as connection:
        found = {d["rule_id"] + "/" + d["status"]: d for d in decisions.search(connection, limit=10)}
        planned = delivery_log.search(connection, limit=10)
    assert sorted(found) == ["ping/capped", "ping/fired", "ping_again/unreached"]  # the rule's cap held across the merge
    [daily] = found["ping_again/unreached"]["actions"]
    assert (daily["fate"], daily["reason"]) == ("capped", "daily cap per profile reached (1 messages in 24 h)")
    assert len(planned) == 1 and {d["profile_id"] for d in found.values()} == {planned[0]["profile_id"]}
    with hub.store.write() as connection:  # an unmerge gives the visitor back its decision and its SMS
        merged_id = connection.execute(select(merges.c.merged_id)).scalar_one()
        unmerge(connection, planned[0]["profile_id"], merged_id, at)
        [sms] = delivery_log.search(connection, limit=10)
        owners = {d["rule_id"] + "/" + d["status"]: d["profile_id"] for d in decisions.search(connection, limit=10)}
    assert sms["profile_id"] == owners["ping/fired"] == merged_id != owners["ping/capped"]
    hub.store.dispose()


def test_an_unmerge_gives_consent_to_the_side_keeping_the_identifier_it_was_said_through(store: Store) -> None:
    """Bo texted STOP while wrongly merged with Ana: after the unmerge Bo, who keeps that phone, stays opted
    out, even though his app resent `sms_opt_out: false` before, and Ana can be texted again; Ana's own email
    unsubscribe stays with her. A word said through no known identifier (an old link) stays with the survivor."""
    ana = ingest(store, 1, ("email", "ana@x.io"), ("phone", "+14155550101"), traits={"name": "Ana"})
    bo = ingest(store, 2, ("email", "bo@x.io"), ("phone", "+14155550102"), traits={"sms_opt_out": False})
    ingest(store, 3, ("email", "ana@x.io"), ("email", "bo@x.io"))  # the bad link
    with store.write() as connection:
        set_consent_by_identifier(connection, Identifier("phone", "+14155550102"), "sms", False, T0, "recipient keyword")
        set_consent(connection, ana, "email", False, T0, "unsubscribe link", Identifier("email", "ana@x.io"))
        set_consent(connection, ana, "push", False, T0, "unsubscribe link", None)
        merged = SqlIdentityGraph(connection).traits(ana)
    assert (merged["sms_opt_out"], merged["email_opt_out"], merged["push_opt_out"]) == (True, True, True)

    with store.write() as connection:
        unmerge(connection, ana, bo, T0)
    with store.read() as connection:
        ana_traits, bo_traits = profile_view(connection, ana)["traits"], profile_view(connection, bo)["traits"]
        said = dict(connection.execute(select(consent_changes.c.channel, consent_changes.c.profile_id)).all())
    assert ana_traits == {"name": "Ana", "email_opt_out": True, "push_opt_out": True}
    assert bo_traits == {"sms_opt_out": True}
    assert said == {"sms": bo, "email": ana, "push": ana}

    with store.write() as connection:
        # Bo's START reaches Bo alone; so does his click on the link of an email sent to him while merged,
        # which names Ana's profile: the address is his again.
        set_consent_by_identifier(connection, Identifier("phone", "+14155550102"), "sms", True, T0, "recipient keyword")
        set_consent(connection, ana, "email", False, T0, "unsubscribe link", Identifier("email", "bo@x.io"))
        forget(connection, ana, T0, block_identifiers=False)
    with store.read() as connection:
        assert profile_view(connection, bo)["traits"] == {"sms_opt_out": False, "email_opt_out": True, "consent": {"sms": True}}
        left = connection.execute(select(consent_changes.c.profile_id)).scalars().all()
    assert left == [bo, bo, bo]  # forgetting Ana took her record of what she said


def test_an_opt_out_pinned_before_changes_were_recorded_stays_with_the_survivor(tmp_path: Path) -> None:
    """Ana texted STOP before the migration that records consent changes: it left a pinned trait and no row.
    Bo, wrongly merged into her since, texts STOP too. After the unmerge both stay opted out; without the row
    the migration writes, the unmerge took Ana's opt-out for Bo's alone and dropped it."""
    store = Store(f"sqlite:///{tmp_path}/old.db")
    store.migrate("i9_trait_epoch")
    ana = ingest(store, 1, ("email", "ana@x.io"), ("phone", "+14155550101"), traits={"name": "Ana"})
    bo = ingest(store, 2, ("email", "bo@x.io"), ("phone", "+14155550102"))
    with store.write() as connection:  # what set_consent wrote before
        SqlIdentityGraph(connection).update_traits(ana, {"sms_opt_out": True}, PINNED)
    store.migrate()
    with store.read() as connection:
        [(profile_id, channel, granted, digest)] = connection.execute(select(
            consent_changes.c.profile_id, consent_changes.c.channel, consent_changes.c.granted,
            consent_changes.c.identifier_digest,
        )).all()
    assert (profile_id, channel, granted, digest) == (ana, "sms", False, None)
    ingest(store, 3, ("email", "ana@x.io"), ("email", "bo@x.io"))  # the bad link
    with store.write() as connection:
        set_consent_by_identifier(connection, Identifier("phone", "+14155550102"), "sms", False, T0, "recipient keyword")
        unmerge(connection, ana, bo, T0)
    with store.read() as connection:
        assert profile_view(connection, ana)["traits"] == {"name": "Ana", "sms_opt_out": True}
        assert profile_view(connection, bo)["traits"] == {"sms_opt_out": True}


def test_a_start_pinned_before_grants_kept_their_time_no_longer_outranks_a_later_opt_out(tmp_path: Path) -> None:
    """A START used to be pinned like a STOP: the person's later opt-out in the app never won. The migration
    takes the pin off grants (the trait goes, which reads as consent given) and leaves withdrawals pinned."""
    store = Store(f"sqlite:///{tmp_path}/old.db")
    store.migrate("i13_timer_outcomes")
    ana = ingest(store, 1, ("phone", "+14155550101"), traits={"name": "Ana"})
    bo = ingest(store, 2, ("phone", "+14155550102"))
    with store.write() as connection:  # what set_consent wrote before: Ana's START, Bo's STOP
        SqlIdentityGraph(connection).update_traits(ana, {"sms_opt_out": False}, PINNED)
        SqlIdentityGraph(connection).update_traits(bo, {"sms_opt_out": True}, PINNED)
    store.migrate()
    with store.write() as connection:
        for profile_id in (ana, bo):
            SqlIdentityGraph(connection).update_traits(profile_id, {"sms_opt_out": True}, T0 + timedelta(days=1))
            SqlIdentityGraph(connection).update_traits(profile_id, {"sms_opt_out": False}, T0 + timedelta(days=2))
    with store.write() as connection:
        SqlIdentityGraph(connection).update_traits(ana, {"sms_opt_out": True}, T0 + timedelta(days=3))
        traits = {profile_id: SqlIdentityGraph(connection).traits(profile_id) for profile_id in (ana, bo)}
    assert traits == {ana: {"name": "Ana", "sms_opt_out": True}, bo: {"sms_opt_out": True}}


def test_an_unmerge_keeps_a_start_over_consent_sms_false_when_another_channel_changed_since(store: Store) -> None:
    """The consent object's parts keep their own times: a later `consent.email` does not outrank the START."""
    ana = ingest(store, 1, ("email", "ana@x.io"), ("phone", "+14155550101"), traits={"consent": {"sms": False}})
    bo = ingest(store, 2, ("email", "bo@x.io"))
    with store.write() as connection:
        set_consent_by_identifier(connection, Identifier("phone", "+14155550101"), "sms", True, T0 + timedelta(minutes=10), "recipient keyword")
    ingest(store, 30, ("email", "ana@x.io"), traits={"consent": {"email": True}})
    ingest(store, 40, ("email", "ana@x.io"), ("email", "bo@x.io"))  # a bad link merges Bo in
    with store.write() as connection:
        unmerge(connection, ana, bo, T0 + timedelta(hours=1))
    with store.read() as connection:
        traits = profile_view(connection, ana)["traits"]
    assert traits["consent"] == {"sms": True, "email": True}
    assert not consent_revoked(traits, "sms")  # Ana keeps the phone she said START through
