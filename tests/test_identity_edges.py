"""Identity resolution at its edges: what forgetting leaves behind, aliases of forgotten ids, placeholder phones,
which address a message goes to, what `explain` finds after merges, and `touchhub profiles show`."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.clock import utcnow
from hub.identifiers import normalize_identifier
from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.model import Identifier, PlannedDelivery
from hub.replay import replay
from hub.runtime import Hub
from hub.store import delivery_replay, outbox, withdrawals
from hub.store.identity_explain import explain
from hub.store.profile_views import find_profile_id
from hub.store.schema import attempts, deliveries, inbox, metadata
from tests.conftest import message
from tests.test_absence_timers import accept, hub_on
from tests.test_forget_messages import forget, unmerge_bo_then_forget_him

NOW = datetime.now(timezone.utc)
BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def ago(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat()


def profile(hub: Hub, type_: str, value: str) -> str | None:
    with hub.store.read() as connection:
        return find_profile_id(connection, Identifier(type_, value))


def stored_rows_holding(hub: Hub, text: str) -> list[str]:
    """The tables of every stored row whose text holds `text`, on SQLite and PostgreSQL alike."""
    with hub.store.read() as connection:
        return sorted({
            table.name for table in metadata.sorted_tables
            if any(text in repr(tuple(row)) for row in connection.execute(select(table)))
        })


# --- forgetting ---------------------------------------------------------------------------------------------------

@BOTH_DATABASES
def test_forget_empties_the_inbox_row_of_the_persons_quarantined_event_and_replay_never_queues_it(
    tmp_path: Path, database_url: str
) -> None:
    """Sam's app sent an event with a broken clock: quarantined, its inbox row kept, payload and all, for a replay.
    Forgetting Sam wiped the quarantined copy of the body but not the inbox row: his email stayed in the
    database, and `touchhub replay` could have put the event through the pipeline again."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", userId="sam", traits={"email": "sam@example.com"}))
        accept(hub, message(userId="sam", event="Cart Viewed", timestamp="1800-01-01T00:00:00Z",
                            context={"traits": {"email": "Sam@Example.com"}}))
        forget(hub, profile(hub, "user_id", "sam"))
        assert stored_rows_holding(hub, "sam@example.com") == [] and stored_rows_holding(hub, "Sam@Example.com") == []
        report = replay(hub.store, hub.mappings, "default", NOW - timedelta(hours=1), utcnow(), "US", DEFAULT_IDENTITY)
        assert report.requeued == 0
        with hub.store.read() as connection:
            assert sorted(connection.execute(select(inbox.c.status, inbox.c.payload))) == [("done", {}), ("failed", {})]
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_forgetting_someone_split_off_by_an_unmerge_takes_their_address_out_of_the_other_sides_delivery_log(
    tmp_path: Path, sandbox, database_url: str
) -> None:
    """Bo's email rode on Ana's phone's identify: merged, Ana's support email went to bo@x.io and her CRM update
    carried it. Unmerged, then Bo forgotten: the delivery log of Ana's profile kept his address (the email's
    target, the CRM update's fields and note), as forget wiped only the deliveries of Bo's own profile ids."""
    hub = hub_on(tmp_path, database_url=database_url, **sandbox.settings_overrides())
    try:
        accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "ana@x.io"}, timestamp=ago(5)))
        accept(hub, message("identify", anonymousId="bo-laptop", traits={"email": "bo@x.io"}, timestamp=ago(4)))
        accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "bo@x.io"}, timestamp=ago(3)))
        accept(hub, message(anonymousId="ana-phone", event="Order Completed", timestamp=ago(1)),
               message(anonymousId="ana-phone", event="Ticket Submitted", timestamp=NOW.isoformat()))
        while hub.delivery.run_once():
            pass
        ana = unmerge_bo_then_forget_him(hub)
        assert stored_rows_holding(hub, "bo@x.io") == []
        with hub.store.read() as connection:
            log = {row.channel: row for row in connection.execute(select(deliveries).where(deliveries.c.profile_id == ana))}
            email_attempt = connection.execute(
                select(attempts.c.request_summary).where(attempts.c.delivery_id == log["email"].delivery_id)
            ).scalar_one()
        assert (log["email"].target, log["email"].status, email_attempt) == (delivery_replay.FORGOTTEN_TARGET, "sent", {})
        assert log["email"].content["subject"] == "Help with your order"  # Ana's message, kept without Bo
        assert "field_Email" not in log["crm"].content and log["crm"].content["rule_id"] == "post_purchase_support"
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_an_alias_naming_a_forgotten_user_id_as_its_previous_id_does_not_store_it_again(
    tmp_path: Path, database_url: str
) -> None:
    """Sam ("sam-1977") is forgotten, then his old install sends alias(previousId="sam-1977"). Resolution typed
    the unknown previousId as an anonymous_id and checked the blocklist for that type only, not for the user_id
    it was erased as: the erased id joined the new profile and was stored in its touchpoint again."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", userId="sam-1977", traits={"email": "sam@example.com"}))
        forget(hub, profile(hub, "user_id", "sam-1977"))
        accept(hub, message("alias", userId="new-login", previousId="sam-1977"))
        assert profile(hub, "user_id", "new-login") is not None
        assert profile(hub, "anonymous_id", "sam-1977") is None
        assert stored_rows_holding(hub, "sam-1977") == []
    finally:
        hub.store.dispose()


# --- placeholder phones -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["000-000-0000", "(000) 000-0000", "123-456-7890", "555-0123"])
def test_a_placeholder_or_local_only_phone_is_no_identifier(raw: str) -> None:
    """phonenumbers found these *possible* (of the right length), so each became an identifier (+10000000000,
    +11234567890, +15550123) that every stranger typing it shared."""
    assert normalize_identifier("phone", raw, "US") is None


@pytest.mark.parametrize(("raw", "region", "expected"), [
    ("(415) 555-0142", "US", "+14155550142"), ("+1 415 555 0105", "US", "+14155550105"),
    ("+15005550006", "US", "+15005550006"), ("020 7946 0958", "GB", "+442079460958"),
])
def test_the_fictional_numbers_tests_and_the_demo_use_are_still_phones(raw: str, region: str, expected: str) -> None:
    identifier = normalize_identifier("phone", raw, region)
    assert identifier is not None and identifier.value == expected


def test_a_junk_value_listed_as_normalized_is_refused_however_it_is_written() -> None:
    """Junk was compared with the raw value only: listing a phone in E.164 refused nothing typed another way."""
    config = IdentityConfig(identifier_types=DEFAULT_IDENTITY.identifier_types, junk_values=["+14155550000"])
    assert normalize_identifier("phone", "(415) 555-0000", "US", config) is None
    assert normalize_identifier("phone", "(415) 555-0001", "US", config) is not None


def test_strangers_who_leave_a_form_phone_at_its_placeholder_stay_apart(tmp_path: Path) -> None:
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", anonymousId="ana-web", traits={"email": "ana@x.io", "phone": "000-000-0000"}))
        accept(hub, message("identify", anonymousId="bo-web", traits={"email": "bo@x.io", "phone": "(000) 000-0000"}))
        assert profile(hub, "email", "ana@x.io") != profile(hub, "email", "bo@x.io")
    finally:
        hub.store.dispose()


# --- which address a message goes to -------------------------------------------------------------------------------

def test_messages_go_to_the_address_and_phone_the_person_has_now_not_the_ones_taken_in_last(tmp_path: Path, sandbox) -> None:
    """Sam moved from old@ and +1 415 555 0100 to new@ and (415) 555-0142. The identify with the new ones is taken
    in first, an older one (an SDK's offline queue) after it: the traits, by event time, are the new ones, but
    routing took the identifiers the hub took in last, and the support email and SMS went to what he left."""
    hub = hub_on(tmp_path, **sandbox.settings_overrides())
    try:
        accept(hub, message("identify", userId="sam", traits={"email": "New@Example.com", "phone": "(415) 555-0142"},
                            timestamp=ago(2)))
        accept(hub, message("identify", userId="sam", traits={"email": "old@example.com", "phone": "+14155550100"},
                            timestamp=ago(20)))
        accept(hub, message(userId="sam", event="Order Completed", timestamp=ago(1)),
               message(userId="sam", event="Ticket Submitted", timestamp=NOW.isoformat()))
        with hub.store.read() as connection:
            targets = dict(connection.execute(select(deliveries.c.channel, deliveries.c.target)).all())
        assert (targets["email"], targets["sms"]) == ("new@example.com", "+14155550142")
    finally:
        hub.store.dispose()


# --- explain ------------------------------------------------------------------------------------------------------

def test_a_refused_link_is_still_explained_after_its_profile_merged_into_another(tmp_path: Path) -> None:
    """Dad logs in on Mom's iPad: refused (one user_id per profile) and explained on her iPad profile. Her login
    on the web later merges that profile into her older web one, and `explain` lost the refusal: it read the
    identity events of the live id only, not of the ids merged into it."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", anonymousId="web-1", traits={"email": "mom@x.io"}))
        accept(hub, message("identify", userId="mom", anonymousId="ipad"))
        accept(hub, message("identify", userId="dad", anonymousId="ipad"))
        ipad_profile, dad_profile = profile(hub, "user_id", "mom"), profile(hub, "user_id", "dad")
        accept(hub, message("identify", userId="mom", traits={"email": "mom@x.io"}))
        web_profile = profile(hub, "user_id", "mom")
        assert web_profile != ipad_profile
        with hub.store.read() as connection:
            graphs = [explain(connection, profile_id) for profile_id in (web_profile, ipad_profile)]
        for graph in graphs:  # the other side is Dad's, not the iPad profile now merged into Mom's (the console audit)
            assert graph["profile_id"] == web_profile
            assert [(entry["other_profile_id"], entry["rule"]) for entry in graph["refused"]] == [
                (dad_profile, "limit: at most 1 user_id per profile"),
            ]
    finally:
        hub.store.dispose()


# --- touchhub profiles show ---------------------------------------------------------------------------------------

def test_profiles_show_prints_traits_identifiers_and_merged_ids_masked_unless_asked(tmp_path: Path) -> None:
    """DESIGN.md lists `touchhub profiles show`; the `profiles` group had only `explain`."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", anonymousId="ana-phone", traits={"plan": "pro", "phone": "(415) 555-0142"}))
        accept(hub, message("identify", userId="ana-1", anonymousId="ana-laptop", traits={"email": "ana@x.io"}))
        accept(hub, message("identify", anonymousId="ana-laptop", traits={"phone": "+14155550142"}))  # merges the two
        ana = profile(hub, "user_id", "ana-1")
        url = hub.settings.database_url
    finally:
        hub.store.dispose()
    env = {"COLUMNS": "200", "PATH": "", "HUB_DATABASE_URL": url, "HOME": os.environ.get("HOME", "/tmp")}

    def show(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TOUCHHUB, "profiles", "show", *args], capture_output=True, text=True, timeout=60, env=env,
                              cwd=tmp_path)

    masked = show("email:Ana@X.io")
    assert masked.returncode == 0, masked.stderr
    assert f"Profile {ana}" in masked.stdout
    assert "a***@x.io" in masked.stdout and "+1******0142" in masked.stdout and "pro" in masked.stdout
    assert "ana@x.io" not in masked.stdout and "4155550142" not in masked.stdout
    assert "ana-laptop" in masked.stdout and "ana-phone" in masked.stdout
    with_merged = [line for line in masked.stdout.splitlines() if "merged ids" in line]
    assert len(with_merged) == 1 and "none" not in with_merged[0]
    shown = show(ana, "--show-pii")
    assert shown.returncode == 0, shown.stderr
    assert "ana@x.io" in shown.stdout and "+14155550142" in shown.stdout
    missing = show("email:nobody@x.io")
    assert missing.returncode == 1
    assert "No profile 'email:nobody@x.io'" in missing.stderr and "TYPE:VALUE" in missing.stderr


def test_an_email_typed_with_a_decomposed_accent_is_one_identifier() -> None:
    """"José@example.com" comes precomposed (é) from one form and decomposed (e + U+0301) from another keyboard;
    lower-casing alone kept them apart: two email identifiers, two profiles for one mailbox."""
    composed = normalize_identifier("email", "Jos\u00e9@example.com", "US")
    decomposed = normalize_identifier("email", "Jose\u0301@example.com", "US")
    assert composed == decomposed == Identifier("email", "jos\u00e9@example.com")


def test_a_shared_tablets_unsent_pushes_for_the_first_person_stop_reaching_it_once_another_signs_in(tmp_path: Path) -> None:
    """Ana's nudge, held for quiet hours, was addressed to her phone and the family tablet. Bob signs in on the
    tablet, and its token moves to him: her nudge goes to her phone only, and a push for the tablet alone is
    withdrawn, never replayable (it would show on Bob's screen)."""
    hub = hub_on(tmp_path)
    try:
        tablet = {"device": {"id": "tablet", "token": "tok-tablet"}}
        accept(hub, message("identify", userId="ana", context={"device": {"id": "phone", "token": "tok-phone"}}))
        accept(hub, message(userId="ana", event="App Opened", context=tablet))
        with hub.store.write() as connection:
            ana = find_profile_id(connection, Identifier("user_id", "ana"))
            assert ana is not None
            outbox.plan(connection, [
                PlannedDelivery("both", "d1", ana, "push", "fcm_push", "tok-tablet", {"recipients": ["tok-tablet", "tok-phone"]}),
                PlannedDelivery("tablet", "d2", ana, "push", "fcm_push", "tok-tablet", {}),
            ], utcnow())
        accept(hub, message("identify", userId="bob", context=tablet))
        with hub.store.read() as connection:
            rows = {row.delivery_id: row for row in connection.execute(select(deliveries))}
            assert find_profile_id(connection, Identifier("push_token", "tok-tablet")) != ana
        assert (rows["both"].status, rows["both"].target, rows["both"].content["recipients"]) == ("pending", "tok-phone", ["tok-phone"])
        assert (rows["tablet"].status, rows["tablet"].last_error) == ("failed", withdrawals.WITHDRAWN_DEVICE_HANDED_ON)
        with hub.store.write() as connection:
            assert delivery_replay.replay(connection, "tablet", utcnow(), hub.router.recipient) == delivery_replay.HANDED_ON
    finally:
        hub.store.dispose()
