"""The digests of a forgotten person's identifiers, keyed by HUB_FORGET_KEY: the blocklist refuses them again
without giving anyone who reads the database their phone number or email back."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from hub import runtime
from hub.clock import utcnow
from hub.errors import ForgottenIdentityError
from hub.identity import resolve
from hub.identity_cache import CachedIdentityGraph
from hub.model import Identifier, RawEvent
from hub.runtime import Hub
from hub.settings import DEVELOPMENT_ADMIN_TOKEN
from hub.store import inbox
from hub.store.profile_views import find_profile_id
from hub.store.schema import forgotten_identifiers, identity_events
from tests.conftest import logs_of, make_settings, message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_forget21 import tables_holding
from tests.test_forget_messages import forget, profile
from tests.test_identity_alias_order import T0, touchpoint

KEY = "5f0c1e7a9b2d4c6e8f10a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4"
EARLIER_KEY = "a-key-from-before-the-rotation-0123456789"
EMAIL, PHONE = "sam@example.com", "+14155550123"
SAMS = [Identifier("user_id", "sam"), Identifier("email", EMAIL), Identifier("phone", PHONE)]


def plain_sha256(ident: Identifier) -> str:
    """What anyone can compute from a guess: the unkeyed digest the blocklist kept."""
    return hashlib.sha256(f"{ident.type}\x1f{ident.value}".encode()).hexdigest()


def keyed(key: str, ident: Identifier) -> str:
    return hmac.new(key.encode(), plain_sha256(ident).encode(), hashlib.sha256).hexdigest()


def digests(hub: Hub) -> set[str]:
    with hub.store.read() as connection:
        return set(connection.execute(select(forgotten_identifiers.c.digest)).scalars())


def blocklist(hub: Hub) -> dict[str, bool]:
    """The blocklist's digests, each with whether it is keyed."""
    with hub.store.read() as connection:
        return dict(connection.execute(select(forgotten_identifiers.c.digest, forgotten_identifiers.c.keyed)).all())


def sam_signs_up_and_is_forgotten(hub: Hub) -> None:
    accept(hub, message("identify", userId="sam", traits={"email": EMAIL, "phone": PHONE}))
    forget(hub, profile(hub, "user_id", "sam"))


def assert_sam_stays_forgotten(hub: Hub) -> None:
    """His old install sends his userId, email and phone again: none is stored, nobody comes back."""
    accept(hub, message("identify", userId="sam", traits={"email": EMAIL, "phone": PHONE}),
           message(anonymousId="new-device", event="Product Viewed", context={"traits": {"email": EMAIL, "phone": PHONE}}))
    with hub.store.read() as connection:
        assert [find_profile_id(connection, ident) for ident in SAMS] == [None, None, None]
        assert find_profile_id(connection, Identifier("anonymous_id", "new-device")) is not None  # kept, without them


@BOTH_DATABASES
def test_with_a_forget_key_the_blocklist_holds_no_plain_hash_and_sam_stays_forgotten(tmp_path: Path, database_url: str) -> None:
    """The blocklist kept the plain sha256 of Sam's phone and email: hashing the ~10^10 numbers of his country, or a
    list of addresses, gave them back to whoever read the database or a backup. Now it keeps their HMAC under the
    key, which no guess matches without it, and still refuses him."""
    hub = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    try:
        sam_signs_up_and_is_forgotten(hub)
        stored = blocklist(hub)
        assert stored == {keyed(KEY, ident): True for ident in SAMS}
        assert stored.keys().isdisjoint(plain_sha256(ident) for ident in SAMS)
        assert_sam_stays_forgotten(hub)
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_with_a_forget_key_the_refusals_of_sams_identifiers_name_them_by_the_keyed_digest(
    tmp_path: Path, database_url: str
) -> None:
    """His old install sends his email and phone again: the refusals in the audit trail named each by its plain
    sha256, which gave them back to whoever read the database however well the blocklist was keyed."""
    hub = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    try:
        sam_signs_up_and_is_forgotten(hub)
        assert_sam_stays_forgotten(hub)
        assert {str(ident): tables_holding(hub, plain_sha256(ident)) for ident in SAMS} == {str(ident): [] for ident in SAMS}
        assert tables_holding(hub, f"hmac-sha256:{keyed(KEY, Identifier('email', EMAIL))}") == ["identity_events"]
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_with_a_forget_key_a_sign_in_queued_before_the_forget_is_still_dropped_whole(tmp_path: Path, database_url: str) -> None:
    """Sam's sign-in on a new phone was accepted, then he was forgotten before the pipeline got to it. The check
    that it was his own (received before the forget) finds his rows by their digests: by the plain ones alone it
    found none of the keyed rows, and his new device id was stored under a new profile."""
    hub = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    try:
        accept(hub, message("identify", userId="sam", traits={"email": EMAIL}))
        queued = message("identify", userId="sam", anonymousId="sam-new-phone")
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent("default", queued["messageId"], queued)], utcnow())
        forget(hub, profile(hub, "user_id", "sam"))
        while hub.pipeline.run_once():
            pass
        assert tables_holding(hub, "sam-new-phone") == []
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_with_a_forget_key_the_in_memory_graph_of_a_backfill_still_refuses_sam(tmp_path: Path, database_url: str) -> None:
    """The bulk path (`CachedIdentityGraph`: a backfill, a replay) holds the blocklist in memory and matched it by
    plain digests: with the key, an event carrying only Sam's email and phone made a new profile of them."""
    hub = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    try:
        sam_signs_up_and_is_forgotten(hub)
        with hub.store.write() as connection, pytest.raises(ForgottenIdentityError):
            resolve(touchpoint(1, ("email", EMAIL), ("phone", PHONE)), CachedIdentityGraph(connection), T0)
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_without_a_forget_key_the_blocklist_is_plain_sha256_as_before(tmp_path: Path, database_url: str) -> None:
    """Unset, nothing changes: the digests are the plain sha256 they always were, and refuse Sam as they did."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        sam_signs_up_and_is_forgotten(hub)
        assert digests(hub) == {plain_sha256(ident) for ident in SAMS}
        assert_sam_stays_forgotten(hub)
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_plain_rows_from_before_the_key_are_keyed_when_the_hub_starts_and_still_refuse(
    tmp_path: Path, database_url: str
) -> None:
    """Sam was forgotten before HUB_FORGET_KEY was set: his plain digests stayed readable for good. A hub with the
    key keys them in place when it starts (it cannot know his values: the keyed digest is the HMAC of the plain
    one), and they go on refusing him."""
    before = hub_on(tmp_path, database_url=database_url)
    sam_signs_up_and_is_forgotten(before)
    before.store.dispose()
    hub = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    try:
        assert blocklist(hub) == {keyed(KEY, ident): True for ident in SAMS}
        assert_sam_stays_forgotten(hub)
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_a_plain_row_another_node_writes_without_the_key_still_refuses_on_a_keyed_node(
    tmp_path: Path, database_url: str
) -> None:
    """A node without the key (misconfigured, or an older hub mid-upgrade) forgets Sam while a keyed node runs on
    the same store: the keyed node looked up only keyed digests, and Sam came back through it."""
    keyed_node = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    plain_node = hub_on(tmp_path, database_url=database_url)
    try:
        sam_signs_up_and_is_forgotten(plain_node)
        assert blocklist(keyed_node) == {plain_sha256(ident): False for ident in SAMS}
        assert_sam_stays_forgotten(keyed_node)
    finally:
        plain_node.store.dispose()
        keyed_node.store.dispose()


@BOTH_DATABASES
def test_rows_keyed_by_a_previous_key_still_refuse_after_the_key_changes(tmp_path: Path, database_url: str) -> None:
    """The key is changed, the old one listed in HUB_FORGET_PREVIOUS_KEYS: Sam, forgotten under the old key, stays
    forgotten, and people forgotten from then on are keyed by the new one."""
    before = hub_on(tmp_path, database_url=database_url, forget_key=EARLIER_KEY)
    sam_signs_up_and_is_forgotten(before)
    before.store.dispose()
    hub = hub_on(tmp_path, database_url=database_url, forget_key=KEY, forget_previous_keys=f"{EARLIER_KEY}, ")
    try:
        assert_sam_stays_forgotten(hub)
        accept(hub, message("identify", userId="ana", traits={"email": "ana@example.com"}))
        forget(hub, profile(hub, "user_id", "ana"))
        assert keyed(KEY, Identifier("email", "ana@example.com")) in digests(hub)
    finally:
        hub.store.dispose()


def test_a_short_forget_key_is_refused_and_an_emptied_one_is_unset(tmp_path: Path) -> None:
    """A short key is guessed as the values are; `HUB_FORGET_KEY=`, as a .env copied from .env.example writes
    it, is no key at all."""
    with pytest.raises(ValidationError, match="at least 32 characters"):
        make_settings(tmp_path, forget_key="changeme")
    assert make_settings(tmp_path, forget_key="", forget_previous_keys="").forget_keys().current is None


@pytest.mark.parametrize(("overrides", "warned"), [
    ({}, True),  # the tests' settings: an admin token of their own, as a hub readied for others has
    ({"admin_token": ""}, True),  # API keys only
    ({"forget_key": KEY}, False),
    ({"admin_token": DEVELOPMENT_ADMIN_TOKEN}, False),  # development: the published token still opens the API
], ids=["own-admin-token", "api-keys-only", "keyed", "development"])
def test_a_hub_past_development_without_a_forget_key_warns_once_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str], warned: bool
) -> None:
    """Nothing said that forgotten people's phone numbers and emails stayed recoverable from the database."""
    hub = Hub(make_settings(tmp_path, workers="", **overrides))
    with logs_of(monkeypatch, runtime) as logs:
        hub.start()
    hub.stop()
    assert len([entry for entry in logs if "HUB_FORGET_KEY" in entry["event"]]) == (1 if warned else 0)


def new_devices_refusals(hub: Hub) -> list[tuple[list[list[str]], int]]:
    """The refusals of Sam's forgotten email and phone recorded on the new device's profile: how each is named,
    and how many times it was refused."""
    with hub.store.read() as connection:
        device = find_profile_id(connection, Identifier("anonymous_id", "new-device"))
        return sorted((identifiers, times) for identifiers, times in connection.execute(
            select(identity_events.c.identifiers, identity_events.c.times)
            .where(identity_events.c.kind == "refused", identity_events.c.profile_id == device)
        ))


def keyed_refusals(times: int) -> list[tuple[list[list[str]], int]]:
    return sorted(([[ident.type, f"hmac-sha256:{keyed(KEY, ident)}"]], times) for ident in SAMS[1:])


@BOTH_DATABASES
def test_refusals_recorded_before_the_key_are_renamed_by_the_keyed_digest_when_the_hub_starts(
    tmp_path: Path, database_url: str
) -> None:
    """Sam's old install sent his email and phone before HUB_FORGET_KEY was set: a hub with the key keyed the
    blocklist, but the refusals still named them `sha256:<plain digest>` (shown by the profile's explain), and the
    next refusal, named by the keyed digest, added a row beside each instead of counting on it."""
    before = hub_on(tmp_path, database_url=database_url)
    sam_signs_up_and_is_forgotten(before)
    assert_sam_stays_forgotten(before)
    before.store.dispose()
    hub = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    try:
        assert {str(ident): tables_holding(hub, plain_sha256(ident)) for ident in SAMS} == {str(ident): [] for ident in SAMS}
        assert new_devices_refusals(hub) == keyed_refusals(times=1)
        assert_sam_stays_forgotten(hub)
        assert new_devices_refusals(hub) == keyed_refusals(times=2)
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_a_plain_refusal_and_a_keyed_one_of_the_same_identifier_are_folded_when_the_hub_restarts(
    tmp_path: Path, database_url: str
) -> None:
    """A node without the key and a keyed node each refused Sam's email and phone once, as `sha256:` and
    `hmac-sha256:`: after the restart the plain refusal stayed beside the keyed one, one refusal as two rows."""
    keyed_node = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    plain_node = hub_on(tmp_path, database_url=database_url)
    sam_signs_up_and_is_forgotten(plain_node)
    assert_sam_stays_forgotten(plain_node)
    assert_sam_stays_forgotten(keyed_node)
    plain_node.store.dispose()
    keyed_node.store.dispose()
    hub = hub_on(tmp_path, database_url=database_url, forget_key=KEY)
    try:
        assert new_devices_refusals(hub) == keyed_refusals(times=2)
    finally:
        hub.store.dispose()
