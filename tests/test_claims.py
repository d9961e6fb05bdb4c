"""The workers' claims, batched inserts and the timer worker's reads, as prebuilt statements, on SQLite and PostgreSQL.

A claim is one UPDATE ... WHERE key IN (SELECT ... LIMIT n) RETURNING, whose
rows come back in no promised order; these pin what callers relied on when it
was a SELECT then an UPDATE: the order, the limit, the lease, and (inbox) the
attempts made before the claim. Concurrent claimers on PostgreSQL are in
tests/test_postgres.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy import event as sqlalchemy_event

from hub.model import Decision, Identifier, PlannedDelivery, RawEvent, Touchpoint
from hub.store import Store, decisions, inbox, outbox, timers, touchpoints
from hub.store.schema import deliveries
from hub.store.schema import inbox as inbox_table
from hub.store.schema import timers as timers_table
from hub.store.precompiled import Precompiled
from hub.store.sql import NewRows

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)


def test_inbox_claims_oldest_first_with_the_attempts_made_before_each_claim(store: Store) -> None:
    with store.write() as connection:
        inbox.append(connection, [RawEvent("default", str(n), {"n": n}) for n in range(5)], T0)
        first = inbox.claim(connection, 3, T0, LEASE)
        assert [row.payload for row in first] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert [row.id for row in first] == sorted(row.id for row in first)
        assert {(row.source_id, row.message_id, row.received_at, row.attempts) for row in first} == {
            ("default", str(n), T0, 0) for n in range(3)
        }
        assert [row.payload for row in inbox.claim(connection, 10, T0, LEASE)] == [{"n": 3}, {"n": 4}]
        assert inbox.claim(connection, 10, T0 + LEASE - timedelta(seconds=1), LEASE) == []  # all leased
        again = inbox.claim(connection, 2, T0 + LEASE, LEASE)  # the first claim's lease ran out
        assert [(row.id, row.attempts) for row in again] == [(row.id, 1) for row in first[:2]]
        stored = connection.execute(select(inbox_table.c.attempts, inbox_table.c.available_at).order_by(inbox_table.c.id)).all()
        assert [tuple(row) for row in stored] == [(2, T0 + 2 * LEASE)] * 2 + [(1, T0 + LEASE)] * 3


def test_inbox_append_counts_new_events_once_in_a_request_and_across_requests(store: Store) -> None:
    with store.write() as connection:
        first = [RawEvent("default", message, {"m": message}) for message in ("a", "b", "a")]  # "a" sent twice
        assert inbox.append(connection, first, T0) == 2
        assert inbox.append(connection, [RawEvent("default", "b", {}), RawEvent("default", "c", {"m": "c"})], T0) == 1
        assert [row.payload for row in inbox.claim(connection, 10, T0, LEASE)] == [{"m": "a"}, {"m": "b"}, {"m": "c"}]


def test_inbox_rows_marked_done_are_not_claimed_again(store: Store) -> None:
    with store.write() as connection:
        inbox.append(connection, [RawEvent("default", str(n), {"n": n}) for n in range(4)], T0)
        claimed = inbox.claim(connection, 4, T0, LEASE)
        inbox.mark_done(connection, [row.id for row in claimed[1:]], T0)
        assert inbox.count_by_status(connection) == {"done": 3, "pending": 1}
        assert [row.id for row in inbox.claim(connection, 4, T0 + LEASE, LEASE)] == [claimed[0].id]


def test_outbox_claims_the_earliest_due_first_and_leases_them(store: Store) -> None:
    due = [T0 + timedelta(seconds=s) for s in (30, 10, 20, 90)]  # planned out of due order; the last not due yet
    planned = [
        PlannedDelivery(f"d{n}", "decision", "profile", "sms", "twilio_sms", "+14155550100", {"n": n}, not_before=at)
        for n, at in enumerate(due)
    ]
    now = T0 + timedelta(minutes=1)
    with store.write() as connection:
        outbox.plan(connection, planned, T0)
        [earliest] = outbox.claim_due(connection, 1, now, LEASE)
        assert (earliest.delivery_id, earliest.content, earliest.attempts, earliest.created_at) == ("d1", {"n": 1}, 0, T0)
        assert [d.delivery_id for d in outbox.claim_due(connection, 10, now, LEASE)] == ["d2", "d0"]
        assert outbox.claim_due(connection, 10, now, LEASE) == []  # the rest are held, d3 is not due yet
        leases = dict(connection.execute(select(deliveries.c.delivery_id, deliveries.c.claimed_until)).all())
        assert leases == {"d0": now + LEASE, "d1": now + LEASE, "d2": now + LEASE, "d3": None}
        assert [d.delivery_id for d in outbox.claim_due(connection, 10, now + LEASE, LEASE)] == ["d3"]  # held until then
        later = now + LEASE + timedelta(seconds=1)
        assert [d.delivery_id for d in outbox.claim_due(connection, 10, later, LEASE)] == ["d1", "d2", "d0"]


def test_outbox_claims_pass_over_the_destinations_at_their_limit(store: Store) -> None:
    destinations = ["slow_hook", "twilio_sms", "slow_hook", "other_hook", "twilio_sms", "third_hook"]
    planned = [
        PlannedDelivery(f"d{n}", "decision", "profile", "sms", destination, "+14155550100", {"n": n}, not_before=T0)
        for n, destination in enumerate(destinations)
    ]
    with store.write() as connection:
        outbox.plan(connection, planned, T0)
        claimed = outbox.claim_due(connection, 10, T0, LEASE, ["slow_hook", "other_hook", "third_hook"])  # 3: padded to 4
        assert sorted(d.delivery_id for d in claimed) == ["d1", "d4"]
        assert sorted(d.delivery_id for d in outbox.claim_due(connection, 10, T0, LEASE, ["slow_hook"])) == ["d3", "d5"]
        assert sorted(d.delivery_id for d in outbox.claim_due(connection, 10, T0, LEASE)) == ["d0", "d2"]


def test_timers_claim_the_earliest_due_first_and_leases_them(store: Store) -> None:
    with store.write() as connection:
        connection.execute(insert(timers_table), [
            {"timer_id": f"t{n}", "rule_id": "rule", "profile_id": "profile", "touchpoint_id": f"tp{n}", "anchor_at": T0,
             "due_at": T0 + timedelta(seconds=s), "status": status, "created_at": T0}
            for n, (s, status) in enumerate([(20, "pending"), (10, "pending"), (5, "fired"), (30, "pending"), (99, "pending")])
        ])
        now = T0 + timedelta(seconds=60)
        claimed = timers.claim_due(connection, 2, now, LEASE)
        assert [(t.timer_id, t.touchpoint_id, t.due_at) for t in claimed] == [
            ("t1", "tp1", T0 + timedelta(seconds=10)), ("t0", "tp0", T0 + timedelta(seconds=20)),
        ]
        assert [t.timer_id for t in timers.claim_due(connection, 10, now, LEASE)] == ["t3"]
        assert [t.timer_id for t in timers.claim_due(connection, 10, now + LEASE, LEASE)] == ["t4"]  # the rest held until then
        later = now + LEASE + timedelta(seconds=1)
        assert [t.timer_id for t in timers.claim_due(connection, 10, later, LEASE)] == ["t1", "t0", "t3"]
        leases = dict(connection.execute(select(timers_table.c.timer_id, timers_table.c.claimed_until)).all())
        assert leases == {"t0": later + LEASE, "t1": later + LEASE, "t2": None, "t3": later + LEASE, "t4": now + 2 * LEASE}


def planned_delivery(n: int) -> PlannedDelivery:
    return PlannedDelivery(f"d{n}", "decision", "profile", "sms", "twilio_sms", "+14155550100", {"n": n})


@pytest.mark.parametrize("count", [1, 3, NewRows.CHUNK + 5])
def test_outbox_plan_counts_only_new_deliveries_and_stores_their_defaults(store: Store, count: int) -> None:
    with store.write() as connection:
        assert outbox.plan(connection, [planned_delivery(n) for n in range(0, count, 2)], T0) == len(range(0, count, 2))
        assert outbox.plan(connection, [planned_delivery(n) for n in range(count)], T0) == len(range(1, count, 2))
        assert outbox.plan(connection, [planned_delivery(n) for n in range(count)], T0) == 0
        stored = connection.execute(select(deliveries.c.delivery_id, deliveries.c.content, deliveries.c.retry_from_attempt)).all()
    assert sorted(tuple(row) for row in stored) == sorted((f"d{n}", {"n": n}, 0) for n in range(count))


def decision(n: int) -> Decision:
    return Decision(f"decision-{n}", "rule", "v1", "profile", f"tp{n}", T0, (), evidence={"n": n})


@pytest.mark.parametrize("count", [1, 4, NewRows.CHUNK + 1])
def test_decisions_record_returns_only_the_new_ids(store: Store, count: int) -> None:
    with store.write() as connection:
        assert decisions.record(connection, [(decision(0), [])], T0) == {"decision-0"}
        assert decisions.record(connection, [(decision(n), [{"fate": n}]) for n in range(count)], T0) == {
            f"decision-{n}" for n in range(1, count)
        }
        assert decisions.get(connection, f"decision-{count - 1}")["evidence"] == {"n": count - 1}


def test_fired_since_reads_the_fired_decisions_of_the_profiles_and_rules_asked(store: Store) -> None:
    def made(n: int, profile: str, rule: str, minutes: int, status: str = "fired") -> tuple[Decision, list]:
        at = T0 + timedelta(minutes=minutes)
        return Decision(f"decision-{n}", rule, "v1", profile, f"tp{n}", at, (), status=status), []

    with store.write() as connection:
        decisions.record(connection, [
            made(0, "amy", "a", 1), made(1, "amy", "a", 3), made(2, "amy", "b", 3), made(3, "bob", "a", 3),
            made(4, "cat", "a", 3), made(5, "bob", "a", 4, status="capped"), made(6, "bob", "c", 3),
        ], T0)
        fired = decisions.fired_since(connection, {"amy", "bob"}, {"a", "b"}, T0 + timedelta(minutes=2))
        assert decisions.fired_since(connection, set(), {"a"}, T0) == {}
    at = T0 + timedelta(minutes=3)
    assert fired == {("amy", "a"): [at], ("amy", "b"): [at], ("bob", "a"): [at]}


def test_the_timer_worker_sees_the_next_due_timer_no_worker_holds_and_settles_a_set(store: Store) -> None:
    with store.write() as connection:
        connection.execute(insert(timers_table), [
            {"timer_id": f"t{n}", "rule_id": "rule", "profile_id": "profile", "touchpoint_id": f"tp{n}", "anchor_at": T0,
             "due_at": T0 + timedelta(seconds=10 * n), "status": "pending", "created_at": T0}
            for n in range(1, 4)
        ])
        assert timers.next_due(connection, T0) == T0 + timedelta(seconds=10)
        [held] = timers.claim_due(connection, 1, T0 + timedelta(seconds=15), LEASE)
        assert timers.next_due(connection, T0 + timedelta(seconds=15)) == T0 + timedelta(seconds=20)
        timers.settle(connection, [timers.Settlement(held.timer_id, "fired", "decision-1"),
                                   timers.Settlement("t2", "cancelled")], T0 + timedelta(seconds=20))
        assert timers.next_due(connection, T0 + LEASE * 2) == T0 + timedelta(seconds=30)
        settled = connection.execute(select(timers_table.c.timer_id, timers_table.c.status, timers_table.c.claimed_until,
                                            timers_table.c.settled_at, timers_table.c.decision_id)).all()
    assert sorted(tuple(row) for row in settled) == [
        ("t1", "fired", None, T0 + timedelta(seconds=20), "decision-1"),
        ("t2", "cancelled", None, T0 + timedelta(seconds=20), None),
        ("t3", "pending", None, None, None),
    ]
    with store.write() as connection:
        connection.execute(timers_table.update().values(status="fired"))
        assert timers.next_due(connection, T0) is None


def test_touchpoints_are_stored_once_and_read_back_by_id(store: Store) -> None:
    stored = [
        Touchpoint(f"tp{n}", "default", f"m{n}", "track", "Cart Viewed", "consideration", "cart", T0 + timedelta(seconds=n), T0,
                   (Identifier("user_id", f"u{n}"),), properties={"n": n}, context={"ip": "127.0.0.1"}, mapping_version="1")
        for n in range(3)
    ]
    with store.write() as connection:
        assert [touchpoints.insert(connection, touchpoint, "profile", n + 1) for n, touchpoint in enumerate(stored)] == [True] * 3
        assert not touchpoints.insert(connection, stored[1], "profile", 9)  # a replay: already stored, nothing follows
        assert touchpoints.get_many(connection, ["tp2", "tp0", "missing"]) == {"tp0": stored[0], "tp2": stored[2]}
        assert touchpoints.get_many(connection, []) == {}


def test_lists_and_rows_of_any_length_share_a_few_statements_and_read_as_given(store: Store) -> None:
    """Lengths are padded to powers of two (`precompiled.padded`): 1 to 40 ids take 7 statements, 1 to 7 rows 4, and the
    repeated id or row changes nothing."""
    stored = [
        Touchpoint(f"tp{n}", "default", f"m{n}", "track", "Cart Viewed", "consideration", "cart", T0, T0,
                   (Identifier("user_id", f"u{n}"),), mapping_version="1")
        for n in range(40)
    ]
    texts: set[str] = set()
    with store.write() as connection:
        for n, touchpoint in enumerate(stored):
            touchpoints.insert(connection, touchpoint, "profile", n + 1)
        sqlalchemy_event.listen(connection, "before_cursor_execute", lambda *args: texts.add(args[2]))
        for count in range(1, 41):
            assert touchpoints.get_many(connection, [f"tp{n}" for n in range(count)]) == {t.touchpoint_id: t for t in stored[:count]}
        assert len(texts) == 7
        texts.clear()
        for count in range(1, 8):  # 3 rows go in as 4, the third repeated
            assert decisions.record(connection, [(decision(100 * count + n), []) for n in range(count)], T0) == {
                f"decision-{100 * count + n}" for n in range(count)
            }
        assert len(texts) == 4


def test_a_list_too_long_to_pad_keeps_its_length(store: Store) -> None:
    """40,000 ids padded would be 65,536 bound parameters, past PostgreSQL's 65,535."""
    with store.write() as connection:
        inbox.append(connection, [RawEvent("default", str(n), {}) for n in range(3)], T0)
        claimed = [row.id for row in inbox.claim(connection, 3, T0, LEASE)]
        inbox.mark_done(connection, [*claimed, *range(max(claimed) + 1, max(claimed) + 39_998)], T0)
        assert inbox.count_by_status(connection) == {"done": 3}


def test_precompiled_refuses_what_sqlalchemy_would_compute_per_execution(store: Store) -> None:
    """An expanding IN and a Python-side column default would otherwise run as NULL or as broken SQL."""
    expanding = Precompiled(select(inbox_table.c.id).where(inbox_table.c.id.in_(bindparam("ids", expanding=True))))
    defaulted = Precompiled(insert(inbox_table), ["dedup_key"])  # `attempts` has a Python-side default
    with store.read() as connection:
        for statement in (expanding, defaulted):
            with pytest.raises(ValueError, match="cannot be precompiled"):
                statement.execute(connection, {})

