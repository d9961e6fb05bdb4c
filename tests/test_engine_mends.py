"""Mends after the review of the delivery engine, held Twilio reports and identity moves (tests/test_review_engine.py):
a replay never reaches a device another person has signed in on, an early report is held as its send's columns
take it and found by an index, the cached graph's moves follow merges, emails stored before NFC normalization are
found again, a failing claim no longer rolls back a batch's record, and carried-over sends cost no statement per
batch while their leases are fresh."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, insert, select

from hub import provider_reports
from hub.clock import utcnow
from hub.identifiers import normalize_identifier
from hub.identity import resolve
from hub.identity_cache import CachedIdentityGraph
from hub.model import Identifier, PlannedDelivery, ProviderStatus, Touchpoint, derived_id
from hub.runtime import Hub
from hub.store import Store, delivery_replay, outbox, touchpoints
from hub.store.held_reports import take
from hub.store.identity_explain import explain
from hub.store.forget_digest import identifier_digest
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.sends_in_flight import AttemptRecord, AttemptResult, record_attempts
from hub.store.delivery_log import unrouted
from hub.store.profile_views import find_profile_id, live_profile_id
from hub.store.schema import consent_changes, deliveries
from tests.conftest import message
from tests.test_absence_timers import accept, hub_on
from tests.test_delivery_robustness import FlawedPager, pager_engine, plan_pages, statuses
from tests.test_query_plans import plans_of

BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
TWILIO_SID = "SM" + "0" * 32


def _touchpoint(n: int, *identifiers: tuple[str, str]) -> Touchpoint:
    return Touchpoint(
        touchpoint_id=derived_id("mends", str(n)), source_id="mends", message_id=str(n), kind="identify",
        event="Signed In", stage="retention", moment="login", occurred_at=utcnow(), received_at=utcnow(),
        identifiers=tuple(Identifier(t, v) for t, v in identifiers),
    )


# 1. A replay and a push token that moved to another person -----------------------------------------------------

@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    running = hub_on(tmp_path)
    yield running
    running.store.dispose()


def _signs_in(hub: Hub, user_id: str, token: str) -> str:
    accept(hub, message("identify", userId=user_id, context={"device": {"id": token, "token": token}}))
    with hub.store.read() as connection:
        profile_id = find_profile_id(connection, Identifier("user_id", user_id))
    assert profile_id is not None
    return profile_id


def _failed_push(hub: Hub, profile_id: str, *tokens: str) -> None:
    """A push to `tokens` (a multicast to each of the person's devices when several) that FCM refused."""
    content = {"recipients": list(tokens)} if len(tokens) > 1 else {}
    with hub.store.write() as connection:
        outbox.plan(connection, [PlannedDelivery("nudge", "d1", profile_id, "push", "fcm_push", tokens[0], content)], utcnow())
        [claimed] = outbox.claim_due(connection, 1, utcnow(), timedelta(seconds=30))
        record_attempts(connection, [AttemptResult(claimed, AttemptRecord(
            utcnow(), 1.0, "permanent", None, "fcm.INVALID_ARGUMENT", "refused", {}, {}), "failed", None)])


def _replay(hub: Hub) -> tuple[str | None, tuple]:
    with hub.store.write() as connection:
        replayed = delivery_replay.replay(connection, "nudge", utcnow(), hub.router.recipient)
        row = connection.execute(select(deliveries.c.status, deliveries.c.target, deliveries.c.content).where(
            deliveries.c.delivery_id == "nudge")).one()
    return replayed, (row.status, row.target, row.content.get("recipients"))


def test_a_failed_push_to_a_token_that_moved_to_another_person_is_not_replayed_to_their_device(hub: Hub) -> None:
    """A failed push keeps its token (`drop_recipient` rewrites unsent ones only): after Bob signed in on Ana's
    tablet, replaying her failed nudge queued it for the tablet in his hands."""
    ana = _signs_in(hub, "ana", "tok-tablet")
    _failed_push(hub, ana, "tok-tablet")
    _signs_in(hub, "bob", "tok-tablet")
    assert _replay(hub) == (delivery_replay.HANDED_ON, ("failed", "tok-tablet", None))


def test_a_replayed_multicast_push_goes_to_the_persons_own_devices_only(hub: Hub) -> None:
    """Ana's failed nudge went to her phone and her tablet; Bob signed in on the tablet since. The replay went
    to both again, Bob's screen included; now it goes to her phone, as a message not yet sent would have."""
    ana = _signs_in(hub, "ana", "tok-phone")
    assert _signs_in(hub, "ana", "tok-tablet") == ana
    _failed_push(hub, ana, "tok-tablet", "tok-phone")
    _signs_in(hub, "bob", "tok-tablet")
    assert _replay(hub) == ("failed", ("pending", "tok-phone", ["tok-phone"]))


# 2, 3. Held reports: fitted as their send's columns, taken by the message index --------------------------------

@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_early_report_is_held_fitted_to_its_columns_as_a_recorded_one_is_applied(store: Store) -> None:
    """`hold` wrote a report's text uncut and with NUL bytes where `apply_provider_status` fitted it: on
    PostgreSQL a status of 21 characters (one Twilio may add) or an error with a NUL failed, and the callback
    answered 500."""
    status = "partially_delivered_x"
    early = ProviderStatus(TWILIO_SID, status, "failed", "twilio.30003\x00")
    with store.write() as connection:
        provider_reports.apply(connection, "twilio_sms", [early], utcnow(), unrouted)
    with store.write() as connection:
        [(destination_id, held)] = take(connection, [("twilio_sms", TWILIO_SID)])
    assert (destination_id, held.provider_status, held.error) == ("twilio_sms", status[:20], "twilio.30003")


@BOTH_DATABASES
def test_an_early_report_on_a_message_id_longer_than_its_column_is_found_by_the_send_recorded(store: Store) -> None:
    """The worker records a message id cut to its column; `hold` kept it whole (PostgreSQL refused it) and `take`
    looked for it whole: the report and its send are matched by the id as stored now."""
    long_id = "<" + "m" * 120 + "@mail.example>"
    with store.write() as connection:
        provider_reports.apply(connection, "email_smtp", [ProviderStatus(long_id, "bounced", "failed")], utcnow(), unrouted)
    with store.write() as connection:
        [(_, held)] = take(connection, [("email_smtp", long_id)])  # as the worker has it: whole
    assert (held.provider_message_id, held.final_status) == (long_id[:100], "failed")


def test_taking_held_reports_searches_the_message_index_in_one_statement(store: Store) -> None:
    """`take` asked for a row-value IN, which SQLite answers by walking every held report, on each record of a
    batch with SMS sends; then it deleted what it had read in a second statement."""
    with store.write() as connection:
        for n in range(3):
            provider_reports.apply(connection, "twilio_sms", [ProviderStatus(f"SM{n}", "sent")], utcnow(), unrouted)
    with store.write() as connection, plans_of(connection, "held_reports") as plans:
        taken = take(connection, [("twilio_sms", "SM0"), ("twilio_sms", "SM2"), ("twilio_sms", "SM9")])
        assert take(connection, []) == []
    assert [report.provider_message_id for _, report in taken] == ["SM0", "SM2"]
    [plan] = plans
    assert "ix_held_reports_message" in plan and "SCAN" not in plan, plan


# 4. The whole-graph cache: a moved token follows a merge in the same flush -------------------------------------

def test_the_cached_graph_stores_a_token_moved_to_a_new_profile_merged_later_in_the_flush_with_its_survivor(
    store: Store,
) -> None:
    """`move` wrote the token's owner as it was at the move, and `flush` carries only stored profiles' merges on:
    a token moved to a profile made in the same flush, and merged into an older one later in it, pointed at the
    merged-away profile."""
    with store.write() as connection:
        graph = CachedIdentityGraph(connection)
        ana = resolve(_touchpoint(1, ("user_id", "ana"), ("push_token", "tok")), graph, utcnow()).profile_id
        cara = resolve(_touchpoint(2, ("email", "cara@example.com")), graph, utcnow()).profile_id
        graph.flush(connection)
    time.sleep(0.002)  # Bob's profile id (a ULID) sorts after Cara's: she survives their merge
    with store.write() as connection:
        graph = CachedIdentityGraph(connection)
        bob = resolve(_touchpoint(3, ("user_id", "bob"), ("push_token", "tok")), graph, utcnow())
        assert bob.created and [m.from_profile_id for m in bob.moved] == [ana]
        joined = resolve(_touchpoint(4, ("user_id", "bob"), ("email", "cara@example.com")), graph, utcnow())
        assert joined.profile_id == cara and joined.merged_profile_ids == (bob.profile_id,)
        graph.flush(connection)
    with store.read() as connection:
        owner = find_profile_id(connection, Identifier("push_token", "tok"))
        assert owner is not None and live_profile_id(connection, owner) == cara
    assert owner == cara  # the row itself, as `SqlIdentityGraph.profiles_of` reads it


# 5. Emails stored before NFC normalization --------------------------------------------------------------------

JOSE_TYPED = "Jose\u0301@Example.com"  # e + a combining accent, as some keyboards type it
ANA_DECOMPOSED, ANA_COMPOSED = "ana\u0308@x.io", "an\u00e4@x.io"


def _stored_before_nfc(store: Store, n: int, *identifiers: tuple[str, str]) -> str:
    """A touchpoint stored, as a new person, the way the hub did before cac8c1a: its emails lower-cased only.
    Written to the graph directly: today's `resolve` reads columns of later migrations."""
    touchpoint = _touchpoint(n, *identifiers)
    with store.write() as connection:
        graph = SqlIdentityGraph(connection)
        profile_id = graph.create_profile(touchpoint.occurred_at)
        graph.attach(profile_id, touchpoint.identifiers, touchpoint.touchpoint_id, touchpoint.occurred_at)
        touchpoints.insert(connection, touchpoint, profile_id, inbox_id=n)
    return profile_id


@BOTH_DATABASES
def test_emails_stored_decomposed_before_nfc_normalization_find_their_person_after_the_migration(
    database_url: str,
) -> None:
    """Normalization composes "José" since cac8c1a, but no migration rewrote the rows stored before: the person's
    next event, typed as ever, made a second profile. Migrated, the address finds them again; the touchpoints
    and consent changes that name it name it as stored; where a later event had stored the composed form for
    another profile, that row stays and the decomposed duplicate goes, recorded in the audit trail."""
    store = Store(database_url)
    try:
        store.migrate("i16_api_keys")
        jose = _stored_before_nfc(store, 1, ("email", JOSE_TYPED.lower()))
        ana_before = _stored_before_nfc(store, 2, ("user_id", "ana-web"), ("email", ANA_DECOMPOSED))
        ana_after = _stored_before_nfc(store, 3, ("user_id", "ana-app"), ("email", ANA_COMPOSED))  # the second profile
        with store.write() as connection:  # as the hub of i16 kept it: the columns added since are not there yet
            connection.execute(insert(consent_changes).values(
                profile_id=jose, channel="email", granted=False, reason="unsubscribe link", at=utcnow(),
                identifier_digest=identifier_digest(Identifier("email", JOSE_TYPED.lower())),
            ))
        store.migrate()

        email = normalize_identifier("email", JOSE_TYPED, "US")
        assert email is not None
        with store.write() as connection:
            assert resolve(_touchpoint(5, (email.type, email.value)), SqlIdentityGraph(connection), utcnow()).profile_id == jose
            assert find_profile_id(connection, Identifier("email", ANA_COMPOSED)) == ana_after
            assert find_profile_id(connection, Identifier("email", ANA_DECOMPOSED)) is None
            [carried] = touchpoints.get_many(connection, [derived_id("mends", "1")]).values()
            digests = set(connection.execute(select(consent_changes.c.identifier_digest)).scalars())
            explained = explain(connection, ana_before)
        assert carried.identifiers == (email,)
        assert digests == {identifier_digest(email)}
        assert explained is not None
        [detached] = explained["detached"]
        assert detached["other_profile_id"] == ana_after and "migration i17" in detached["rule"]
    finally:
        store.dispose()


# 6. A claim that fails after a batch's record -------------------------------------------------------------------

def test_a_batch_is_recorded_when_the_claim_after_it_fails(store: Store) -> None:
    """The one-by-one fallback ran the failing claim again in its own transaction, which rolled back the records
    it had just written: the page the provider took stayed pending (and was sent again once its lease ran out)."""
    sent: list[str] = []
    engine = pager_engine(store, FlawedPager(sent, send_seconds=0.2), lease_seconds=30)
    plan_pages(store, "page")
    try:
        engine.run_once()  # claims the page and starts sending it; the look for more after it found none
        plan_pages(store, "unreadable")
        with store.write() as connection:  # a row no claim can read (a tool wrote it): the next claim fails
            connection.exec_driver_sql("UPDATE deliveries SET content = '{not json' WHERE delivery_id = 'unreadable'")
        time.sleep(0.3)  # the page is sent
        assert engine.run_once() == 1  # recorded; the claim after it is left to the next run
        recorded = statuses(store)["page"]
    finally:
        with store.write() as connection:
            connection.execute(deliveries.delete().where(deliveries.c.delivery_id == "unreadable"))
        engine.close()
    assert (recorded, sent) == ("sent", ["page"])


# 7. Leases of the sends carried over: renewed only once half spent --------------------------------------------

def test_sends_carried_over_with_fresh_leases_cost_no_statement_per_batch(store: Store) -> None:
    """Every run that carried sends over renewed their leases, a statement on every batch (one each 50 ms)
    though a lease lasts seconds; now a lease is renewed once half of it is spent (a send that outlives its
    lease keeps it: test_delivery_robustness)."""
    renewals: list[str] = []

    def seen(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE deliveries SET claimed_until") and "claimed_until IS NOT NULL" in statement:
            renewals.append(statement)

    engine = pager_engine(store, FlawedPager(send_seconds=0.4), lease_seconds=5)
    plan_pages(store, "slow")
    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        runs = 0
        while statuses(store)["slow"] != "sent":
            engine.run_once()
            runs += 1
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
        engine.close()
    assert runs >= 4 and renewals == [], (runs, renewals)
