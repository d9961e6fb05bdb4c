"""Consent where identity repair and forgetting meet it: ops changes across an unmerge, an ops grant against a late
consent object, and what a forgotten person's refused links keep."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from typer.testing import CliRunner

from hub.cli_profiles import app as profiles_app
from hub.clock import utcnow
from hub.consent import consent_revoked, set_by_ops
from hub.runtime import Hub
from hub.store import Store
from hub.store.identity_repair import unmerge
from hub.store.profile_views import profile_view
from hub.store.schema import consent_changes, identity_events
from tests.conftest import message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_forget_key24 import KEY as FORGET_KEY
from tests.test_forget_key24 import EMAIL as SAM_EMAIL
from tests.test_forget_key24 import PHONE as SAM_PHONE
from tests.test_forget_messages import forget, profile

NOW = datetime.now(timezone.utc)


def ago(minutes: float) -> str:
    return (NOW - timedelta(minutes=minutes)).isoformat()


def traits_of(hub: Hub, profile_id: str) -> dict[str, Any]:
    with hub.store.read() as connection:
        view = profile_view(connection, profile_id)
    assert view is not None
    return view["traits"]


def ops(hub: Hub, profile_id: str, channel: str, granted: bool, reason: str) -> None:
    """What PUT /api/profiles/{id}/consent/{channel} does (`hub.api.profiles.set_profile_consent`)."""
    with hub.store.write() as connection:
        assert set_by_ops(connection, profile_id, channel, granted, reason, "API key 'support'", utcnow()) is not None


def ana_and_bo_merged_by_a_typo(hub: Hub) -> tuple[str, str]:
    """Ana's and Bo's profiles, each with an email; their ids."""
    accept(hub, message("identify", anonymousId="ana-phone", traits={"email": "ana@x.io"}, timestamp=ago(60)))
    accept(hub, message("identify", userId="bo-1", traits={"email": "bo@x.io"}, timestamp=ago(50)))
    return profile(hub, "email", "ana@x.io"), profile(hub, "email", "bo@x.io")


def bo_types_anas_address(hub: Hub) -> None:
    """Bo's identify with Ana's address typed in: Bo is merged into Ana (hers is the older profile)."""
    accept(hub, message("identify", userId="bo-1", traits={"email": "ana@x.io"}, timestamp=ago(30)))


def unmerged(hub: Hub, ana: str, bo: str) -> None:
    """What POST /api/profiles/{id}/unmerge does; Bo holds his address again."""
    assert profile(hub, "user_id", "bo-1") == ana
    with hub.store.write() as connection:
        unmerge(connection, ana, bo, utcnow())
    assert profile(hub, "email", "bo@x.io") == bo


def assert_only_bo_is_blocked(hub: Hub, ana: str, bo: str) -> None:
    assert consent_revoked(traits_of(hub, bo), "email"), "Bo's own opt-out was lost by the unmerge"
    assert not consent_revoked(traits_of(hub, ana), "email"), "Ana is blocked by Bo's opt-out"


def test_an_ops_revocation_made_on_a_profile_before_a_bad_merge_stays_with_that_person_after_the_unmerge(
    tmp_path: Path,
) -> None:
    """Ops revoked email on Bo's own profile (he asked support), then a typo merged Bo into Ana and an operator
    undid it. The ops change was kept with no identifier, and the unmerge left every such change with the
    survivor: Ana was blocked, and Bo could be emailed again."""
    hub = hub_on(tmp_path)
    ana, bo = ana_and_bo_merged_by_a_typo(hub)
    ops(hub, bo, "email", granted=False, reason="Bo asked by phone to get no email")
    bo_types_anas_address(hub)
    unmerged(hub, ana, bo)
    assert_only_bo_is_blocked(hub, ana, bo)
    hub.store.dispose()


def test_an_ops_revocation_named_by_email_on_a_merged_profile_goes_with_that_email_on_the_unmerge(
    tmp_path: Path,
) -> None:
    """`touchhub profiles consent email:bo@x.io --revoke` while Bo was merged into Ana: the change was kept with
    no identifier, on the merged profile, so the unmerge left it with Ana and Bo could be emailed again."""
    hub = hub_on(tmp_path)
    ana, bo = ana_and_bo_merged_by_a_typo(hub)
    bo_types_anas_address(hub)
    env = {"HUB_DATABASE_URL": hub.settings.database_url, "COLUMNS": "200", "LOGNAME": "olga"}
    said = CliRunner().invoke(
        profiles_app, ["consent", "email:bo@x.io", "--channel", "email", "--revoke", "--reason", "Bo asked by phone"],
        env=env,
    )
    assert said.exit_code == 0, said.output
    unmerged(hub, ana, bo)
    assert_only_bo_is_blocked(hub, ana, bo)
    hub.store.dispose()


def test_an_ops_grant_is_not_undone_by_an_older_consent_object_arriving_late(tmp_path: Path) -> None:
    """Ana opted out in the app, then support gave email back. An identify dated before the grant, delivered
    late, with `consent: {email: false}` took it back (the same word as `email_opt_out: true` lost): the grant
    set only `email_opt_out`, so `consent.email` had no time of the grant's to lose by."""
    hub = hub_on(tmp_path)
    accept(hub, message("identify", userId="u-ana", traits={"email": "ana@x.io", "email_opt_out": True}, timestamp=ago(60)))
    ana = profile(hub, "user_id", "u-ana")
    ops(hub, ana, "email", granted=True, reason="Ana asked support for email again")
    accept(hub, message("identify", userId="u-ana", traits={"email_opt_out": True}, timestamp=ago(30)))
    assert not consent_revoked(traits_of(hub, ana), "email")  # the older opt-out loses to the grant
    accept(hub, message("identify", userId="u-ana", traits={"consent": {"email": False, "sms": False}}, timestamp=ago(30)))
    traits = traits_of(hub, ana)
    assert not consent_revoked(traits, "email"), traits
    assert consent_revoked(traits, "sms"), "the late object's other channel, which no grant is newer than, holds"
    accept(hub, message("identify", userId="u-ana", traits={"consent": {"email": False}}, timestamp=ago(-1)))
    assert consent_revoked(traits_of(hub, ana), "email"), "an opt-out said after the grant still wins"
    hub.store.dispose()


def plain_key_guesses(row: Any, value: str) -> set[str]:
    """The refusal keys `value` would have, hashed as `hub.store.refusals.refusal_key` hashes them, as any type."""
    return {
        hashlib.sha256(f"{row.profile_id}\x1f{row.other_profile_id or ''}\x1f{type_}\x1f{value}\x1f{row.rule}".encode()).hexdigest()
        for type_ in ("phone", "email", "user_id")
    }


@BOTH_DATABASES
def test_a_forgotten_persons_refused_links_keep_no_key_that_gives_their_phone_back(tmp_path: Path, database_url: str) -> None:
    """Bo's identify carried Sam's phone (refused: Sam's profile has a user_id), then Sam was forgotten. The
    refused row kept its key, a plain digest of both profile ids, the phone and the rule, all but the phone in
    the same row: hashing a country's numbers found Sam's phone, HUB_FORGET_KEY or not."""
    hub = hub_on(tmp_path, database_url=database_url, forget_key=FORGET_KEY)
    try:
        accept(hub, message("identify", userId="sam", traits={"email": SAM_EMAIL, "phone": SAM_PHONE}))
        accept(hub, message("identify", userId="bo", traits={"phone": SAM_PHONE}))
        forget(hub, profile(hub, "user_id", "sam"))
        with hub.store.read() as connection:
            rows = connection.execute(select(identity_events).where(identity_events.c.kind == "refused")).all()
        assert rows and [row.identifiers for row in rows] == [[]] * len(rows)
        assert [row for row in rows if row.refusal_key in plain_key_guesses(row, SAM_PHONE)] == []
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_migration_i27_drops_the_keys_of_refusals_forgotten_before_and_names_where_each_consent_change_was_made(
    database_url: str,
) -> None:
    """Rows kept before i27: a forgotten person's refused link kept its guessable key, and a consent change had
    no profile it was made on, so an unmerge could not give it back to that side."""
    store = Store(database_url)
    try:
        store.migrate("i26_consent_link")
        refused = {"kind": "refused", "profile_id": "bo", "other_profile_id": "sam", "rule": "one user_id", "at": NOW}
        with store.write() as connection:
            connection.execute(insert(identity_events), [
                {**refused, "identifiers": [], "refusal_key": "a" * 64},
                {**refused, "other_profile_id": "amy", "identifiers": [["phone", "+14155550100"]], "refusal_key": "b" * 64},
            ])
            connection.execute(insert(consent_changes).values(
                profile_id="bo", channel="email", granted=False, reason="ops API key 'support': asked", at=NOW,
            ))
        store.migrate()
        with store.read() as connection:
            keys = list(connection.execute(select(identity_events.c.refusal_key).order_by(identity_events.c.id)).scalars())
            origins = list(connection.execute(select(consent_changes.c.origin_profile_id)).scalars())
        assert keys == [None, "b" * 64] and origins == ["bo"]
    finally:
        store.dispose()
