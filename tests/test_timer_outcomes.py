"""How absence timers end and why: reasons kept, firings that keep raising given up on, waits judged by the rule
in force, one nudge per wait whichever order its carts are taken in."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from prometheus_client import REGISTRY
from sqlalchemy import insert, select

from hub import absence, stats, triggers
from hub.absence import RULE_ROLLOUT, RULE_ROLLOUT_RECHECK
from hub.clock import utcnow
from hub.model import WaitEnded, derived_id
from hub.runtime import Hub
from hub.store import Store, _alembic_config, decisions, timer_arming, timer_waits, timers
from hub.store.schema import decisions as decisions_table
from hub.store.schema import timers as timers_table
from tests.conftest import logs_of, message
from tests.test_absence_timers import (
    AMY,
    BOTH_DATABASES,
    ORDER_NUDGE,
    accept,
    ago,
    carts_of,
    copied_mappings,
    fresh_now,  # noqa: F401  (autouse: `ago` counts from this test's start)
    hub_on,
    nudge_hub,
    nudges,
    reload_rules,
    timer_rows,
    timer_statuses,
)

NUDGE = ORDER_NUDGE.replace("WAIT", "2m")
NO_TICKET_SINCE_YESTERDAY = NUDGE.replace(
    "when: {absence: {after: {event: [Cart Viewed, Product Added]}, without: {event: Order Completed}, within: 2m}}",
    "when: {all: [{absence: {after: {event: [Cart Viewed, Product Added]}, without: {event: Order Completed}, within: 2m}},"
    " {not: {recent: {event: Ticket Submitted, within: 1d}}}]}",
)


def settled(rule: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("hub_timers_settled_total", {"rule": rule, "outcome": outcome}) or 0.0


def ended(hub: Hub) -> list[tuple[str, str | None]]:
    """Each timer's status and reason, oldest anchor first."""
    return [(row["status"], row["reason"]) for row in sorted(timer_rows(hub), key=lambda row: row["anchor_at"])]


def decision_statuses(hub: Hub, now: datetime) -> list[str]:
    """The rule's decisions, by status, once every timer due by `now` has fired."""
    while hub.timers.run_once(now):
        pass
    with hub.store.read() as connection:
        return sorted(decision["status"] for decision in decisions.search(connection, limit=10, rule_id="order_nudge"))


@pytest.mark.parametrize(("edited", "reason"), [
    pytest.param(NUDGE.replace("  - id: order_nudge\n", "  - id: order_nudge\n    enabled: false\n"),
                 "rule disabled (enabled: false)", id="disabled"),
    pytest.param(NUDGE.replace("  - id: order_nudge\n", "  - id: other_nudge\n"), "rule removed from triggers.yaml", id="removed"),
    pytest.param(NUDGE.replace("[Cart Viewed, Product Added]", "Product Added"),
                 "the edited rule no longer waits after this event", id="after narrowed"),
    pytest.param(NO_TICKET_SINCE_YESTERDAY,
                 'fire-time conditions no longer hold: {"not": {"recent": {"event": "Ticket Submitted", "within": "P1D"}}}',
                 id="fire-time condition"),
    pytest.param(NUDGE.replace("template: cart_abandonment.email.j2}",
                               "template: cart_abandonment.email.j2, only_if: [{field: properties.coupon, op: exists}]}"),
                 "no action's only_if holds", id="only_if"),
])
def test_a_lapsed_timer_says_why_on_its_row_in_the_log_the_metrics_and_the_stats(
    tmp_path: Path, edited: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops asked why amy never got her nudge: the rule turned off, or its conditions not met, looked the same."""
    hub = nudge_hub(tmp_path)
    accept(hub, AMY, message(userId="amy", event="Ticket Submitted", timestamp=ago(hours=5)),
           message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3)))
    reload_rules(hub, tmp_path / "mappings" / "triggers.yaml", edited)
    before = settled("order_nudge", "lapsed")
    at = utcnow()
    if not reason.startswith(("fire-time", "no action")):  # this node's rules alone rule it out: held for a rollout
        assert hub.timers.run_once(at) == 1
        [timer] = timer_rows(hub)
        assert (timer["status"], timer["due_at"]) == ("pending", at + RULE_ROLLOUT_RECHECK)  # armed just now: again soon
        at += RULE_ROLLOUT
    with logs_of(monkeypatch, absence) as logs:
        assert hub.timers.run_once(at) == 1
    [timer] = timer_rows(hub)
    assert (timer["status"], timer["reason"]) == ("lapsed", reason)
    assert {"event": "timer ended without firing", "log_level": "info", "timer_id": timer["timer_id"], "rule": "order_nudge",
            "profile_id": timer["profile_id"], "outcome": "lapsed", "reason": reason} in logs
    assert settled("order_nudge", "lapsed") == before + 1
    assert stats.collect(hub.store)["timers"] == {"lapsed": 1}


@BOTH_DATABASES
def test_the_pipeline_names_the_event_that_ended_a_wait(tmp_path: Path, database_url: str) -> None:
    hub = hub_on(tmp_path, database_url=database_url, mappings_dir=copied_mappings(tmp_path, NUDGE))
    second = message(userId="amy", event="Product Added", timestamp=ago(minutes=4))
    order = message(userId="amy", event="Order Completed", timestamp=ago(minutes=3))
    accept(hub, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=5)), second, order)
    assert ended(hub) == [
        ("superseded", f"a later event restarted the wait: touchpoint {derived_id('default', second['messageId'])}"),
        ("cancelled", f"the follow-up came: touchpoint {derived_id('default', order['messageId'])}"),
    ]


@BOTH_DATABASES
def test_a_timer_whose_firing_keeps_raising_is_given_up_on_after_the_pipelines_attempts(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an inbox row is quarantined: it was claimed again after every lease, forever, and the hub never idle."""
    hub = hub_on(tmp_path, database_url=database_url, lease_seconds=0.05, pipeline_max_attempts=3)
    accept(hub, *carts_of("amy"))

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug this profile's data sets off")

    monkeypatch.setattr(triggers, "evaluate_expired", broken)
    before = settled("cart_abandonment", "failed")
    with logs_of(monkeypatch, absence) as logs:
        for _ in range(3):
            assert not stats.is_idle(hub.store)
            assert hub.timers.run_once() == 1
            time.sleep(0.06)  # the lease runs out
        assert hub.timers.run_once() == 0
    [timer] = timer_rows(hub)
    assert (timer["status"], timer["attempts"]) == ("failed", 3)
    assert timer["reason"] == "RuntimeError: a bug this profile's data sets off"
    assert stats.is_idle(hub.store)
    assert [entry["log_level"] for entry in logs if entry["event"] == "timer ended without firing"] == ["error"]
    assert settled("cart_abandonment", "failed") == before + 1


@BOTH_DATABASES
def test_a_rule_added_and_shortened_while_no_timer_worker_ran_has_its_timers_brought_forward(
    tmp_path: Path, database_url: str
) -> None:
    """No worker ever noted the rule's 30-minute wait, so the cut to 2 was not seen as one."""
    mappings = copied_mappings(tmp_path, ORDER_NUDGE.replace("WAIT", "30m"))
    pipeline_only = hub_on(tmp_path, database_url=database_url, mappings_dir=mappings)
    accept(pipeline_only, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3)))
    pipeline_only.store.dispose()

    (mappings / "triggers.yaml").write_text(NUDGE)
    timer_worker = hub_on(tmp_path, database_url=database_url, mappings_dir=mappings)
    [decision] = nudges(timer_worker)
    assert decision["decided_at"] == datetime.fromisoformat(ago(minutes=1))


def test_an_order_after_a_shortened_wait_ended_does_not_cancel_the_nudge_before_a_worker_moved_it(tmp_path: Path) -> None:
    """The pipeline judged the follow-up by the timer's stored due time (the old 30 minutes) until a timer worker
    brought it forward: the order 10 minutes after the new wait ended cancelled the nudge the rule now sends."""
    hub = nudge_hub(tmp_path, ORDER_NUDGE.replace("WAIT", "30m"))
    accept(hub, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=20)))
    assert hub.timers.run_once() == 0  # a worker noted the 30-minute wait
    reload_rules(hub, tmp_path / "mappings" / "triggers.yaml", NUDGE)
    accept(hub, message(userId="amy", event="Order Completed", timestamp=ago(minutes=10)))
    assert timer_statuses(hub) == ["pending"]
    [decision] = nudges(hub)
    assert decision["decided_at"] == datetime.fromisoformat(ago(minutes=18))


def test_an_order_inside_a_lengthened_wait_cancels_the_timer_as_it_comes_in(tmp_path: Path) -> None:
    """By its stored due time the wait was over, by the rule in force it runs on."""
    hub = nudge_hub(tmp_path)
    accept(hub, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=5)))  # no worker fired it yet
    reload_rules(hub, tmp_path / "mappings" / "triggers.yaml", ORDER_NUDGE.replace("WAIT", "30m"))
    accept(hub, message(userId="amy", event="Order Completed", timestamp=ago(minutes=2)))
    assert timer_statuses(hub) == ["cancelled"]


def test_a_cart_taken_in_after_the_timer_of_the_wait_it_fell_inside_fired_sends_no_second_nudge(tmp_path: Path) -> None:
    """Taken in order, the second cart restarts the wait and one nudge goes; taken in after the first timer fired
    (an SDK's retry), it armed a timer that fired a second. A cart after that wait ended starts one of its own."""
    hub = nudge_hub(tmp_path)
    accept(hub, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=8)))
    [first] = nudges(hub)
    accept(hub, message(userId="amy", event="Product Added", timestamp=ago(minutes=7)))  # a minute into that wait
    assert nudges(hub) == [first]
    assert ended(hub)[1] == (
        "superseded", f"an earlier event's timer already fired for this wait: decision {first['decision_id']}"
    )
    accept(hub, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=4)))  # that wait ended at -6 minutes
    assert len(nudges(hub)) == 2
    with hub.store.read() as connection:
        assert decisions.count_by_rule(connection) == {"order_nudge": 2}


@BOTH_DATABASES
def test_a_cart_at_the_same_instant_taken_in_after_the_first_ones_nudge_went_sends_no_second(
    tmp_path: Path, database_url: str
) -> None:
    """An SDK resent the cart under a new message id, with the same second-resolution timestamp. Taken in before
    the wait ended, it supersedes the first's timer (an event at the anchor's instant restarts the wait); taken
    in after that timer fired, only a fired timer anchored strictly earlier counted, and a second nudge went."""
    hub = hub_on(tmp_path, database_url=database_url, mappings_dir=copied_mappings(tmp_path, NUDGE))
    first, again = (message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=8)) for _ in range(2))
    accept(hub, AMY, first)
    [nudge] = nudges(hub)
    accept(hub, again)
    assert nudges(hub) == [nudge]
    assert sorted(ended(hub)) == [  # both anchored at once: by status
        ("fired", None),
        ("superseded", f"an earlier event's timer already fired for this wait: decision {nudge['decision_id']}"),
    ]


@BOTH_DATABASES
def test_a_nudge_that_reached_nobody_leaves_the_persons_merged_cart_its_own(tmp_path: Path, database_url: str) -> None:
    """An anonymous visitor's cart fired a nudge with no address to go to (`unreached`); a minute into its wait the
    signed-in visitor viewed their cart, and then the two profiles were linked, which moved the fired timer to
    the survivor. Counted as the wait's nudge, it superseded the only one that could reach them."""
    hub = hub_on(tmp_path, database_url=database_url, mappings_dir=copied_mappings(tmp_path, NUDGE))
    now = utcnow()  # the carts' timers come due by this, not by when the suite started

    def before_now(**delta: float) -> str:
        return (now - timedelta(**delta)).isoformat()

    accept(hub, AMY, message(anonymousId="anon-1", event="Cart Viewed", timestamp=before_now(minutes=2, seconds=30)),
           message(userId="amy", event="Cart Viewed", timestamp=before_now(minutes=1, seconds=30)))
    assert decision_statuses(hub, now) == ["unreached"]  # the anonymous cart's, due 30 s ago
    accept(hub, message("identify", userId="amy", anonymousId="anon-1", timestamp=before_now(seconds=10)))
    assert decision_statuses(hub, now + timedelta(minutes=1)) == ["fired", "unreached"]


@BOTH_DATABASES
def test_only_a_neighbour_whose_nudge_reached_the_person_decided_the_wait(store: Store) -> None:
    """Read with the neighbours' timers in one statement: a decision `unreached` or `capped` sent nothing, so
    the wait's nudge is still to go."""
    anchor_at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    wait = timedelta(minutes=2)
    statuses = ["fired", "unreached", "capped"]
    with store.write() as connection:
        connection.execute(insert(decisions_table), [
            {"decision_id": f"decision-{status}", "rule_id": "nudge", "rule_version": "nudge@1", "profile_id": status,
             "touchpoint_id": f"tp-{status}", "decided_at": anchor_at + wait, "created_at": anchor_at + wait,
             "evidence": {}, "actions": [], "status": status}
            for status in statuses
        ])
        connection.execute(insert(timers_table), [
            {**timer(status, "nudge", anchor_at, wait), "profile_id": status, "status": "fired",
             "decision_id": f"decision-{status}"}
            for status in statuses
        ])
        later = anchor_at + timedelta(minutes=1)  # each profile's next cart, inside that wait
        ended_waits = timers.ended_by_neighbours(connection, [
            timers.DueTimer(f"next-{status}", "nudge", status, f"tp-next-{status}", later, later + wait, 0, later, None)
            for status in statuses
        ])
    assert ended_waits == {"next-fired": WaitEnded(
        "superseded", "an earlier event's timer already fired for this wait: decision decision-fired"
    )}


def timer(timer_id: str, rule_id: str, anchor_at: datetime, wait: timedelta) -> dict:
    return {"timer_id": timer_id, "rule_id": rule_id, "profile_id": "p", "touchpoint_id": f"tp-{timer_id}",
            "anchor_at": anchor_at, "due_at": anchor_at + wait, "status": "pending", "created_at": anchor_at}


@BOTH_DATABASES
def test_timers_armed_under_a_longer_wait_are_found_by_their_span_in_sql(store: Store) -> None:
    """Compared in SQL, not read out (1M pending timers took 5.6 s to read), to the microsecond on neither
    database: a timer armed under the wait in force is left alone, one armed a few milliseconds longer is not."""
    anchor_at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    with store.write() as connection:
        connection.execute(insert(timers_table), [
            timer("as-armed", "nudge", anchor_at, timedelta(minutes=2)),  # the wait in force, to the microsecond
            timer("armed-longer", "nudge", anchor_at, timedelta(minutes=30)),
            timer("a-tick-longer", "nudge", anchor_at, timedelta(minutes=2, milliseconds=5)),
            timer("other-rule", "other", anchor_at, timedelta(minutes=30)),
        ])
        found = timer_waits.due_after_their_wait(connection, {"nudge": timedelta(minutes=2)})
    assert sorted(found) == [("a-tick-longer", anchor_at + timedelta(minutes=2)), ("armed-longer", anchor_at + timedelta(minutes=2))]


def test_a_timer_that_fired_after_a_shortened_wait_was_read_keeps_its_record(store: Store) -> None:
    """`ShortenedWaits` reads the timers to bring forward in one transaction and moves them in later ones; one
    the timer worker fired in between had its due time rewritten after the fact (and its lease cleared)."""
    anchor_at = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    with store.write() as connection:
        connection.execute(insert(timers_table), [timer("fired", "nudge", anchor_at, timedelta(minutes=30)),
                                                  timer("pending", "nudge", anchor_at, timedelta(minutes=30))])
        connection.execute(timers_table.update().where(timers_table.c.timer_id == "fired").values(status="fired"))
        timers.wait_until(connection, [("fired", anchor_at + timedelta(minutes=2)), ("pending", anchor_at + timedelta(minutes=2))])
        due = dict(connection.execute(select(timers_table.c.timer_id, timers_table.c.due_at)).all())
    assert due == {"fired": anchor_at + timedelta(minutes=30), "pending": anchor_at + timedelta(minutes=2)}


@BOTH_DATABASES
def test_timers_stored_before_the_migration_have_no_failed_attempts_and_no_reason(database_url: str) -> None:
    """i13 adds both columns to the stored rows (and takes them away again on the way down)."""
    store = Store(database_url)
    store.migrate("i12_first_due_at")
    now = utcnow()
    with store.write() as connection:  # the columns i12 has
        connection.execute(insert(timers_table).values(timer("t", "r", now, timedelta(0))))
    store.migrate()
    with store.write() as connection:
        [due] = timers.claim_due(connection, 10, now, timedelta(minutes=1))
        assert (due.timer_id, due.attempts) == ("t", 0)
        assert timers.for_profile(connection, "p")[0]["reason"] is None
        command.downgrade(_alembic_config(connection), "i12_first_due_at")
    store.dispose()


@BOTH_DATABASES
def test_one_event_ends_only_the_waits_still_running_by_each_rules_own_wait(tmp_path: Path, database_url: str) -> None:
    """The settling UPDATE binds each rule's own wait: of rules with three waits, two alike, an event
    10 minutes in ends the 30-minute waits, not the 5-minute one."""
    store = Store(database_url)
    store.migrate()
    t0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    waits = {"short": timedelta(minutes=5), "long_a": timedelta(minutes=30), "long_b": timedelta(minutes=30)}
    with store.write() as connection:
        timer_arming.follow_event(connection, "P", "cart", t0, t0, cancel=[], arm=[(rule, t0 + wait) for rule, wait in waits.items()])
        timer_arming.follow_event(connection, "P", "page", t0 + timedelta(minutes=10), t0, cancel=list(waits.items()), arm=[])
    with store.read() as connection:
        statuses = dict(connection.execute(select(timers_table.c.rule_id, timers_table.c.status)).all())
    store.dispose()
    assert statuses == {"short": "pending", "long_a": "cancelled", "long_b": "cancelled"}


@pytest.mark.parametrize("cart_minutes_ago", [3, 120])  # 120: a phone flushing its cart late
def test_a_node_that_has_not_the_new_rule_yet_holds_its_timers_and_fires_them_once_it_has(
    tmp_path: Path, cart_minutes_ago: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rules are files on each machine, and a rollout reaches them one by one: node B, still on the old file,
    claims the timer node A armed under the new rule. It must not lapse it for good, but fire it once it has the
    rule, however old the cart when it was taken in."""
    database_url = f"sqlite:///{tmp_path}/shared.db"
    new = hub_on(tmp_path / "a", database_url=database_url, mappings_dir=copied_mappings(tmp_path / "a", NUDGE))
    old = hub_on(tmp_path / "b", database_url=database_url, mappings_dir=copied_mappings(tmp_path / "b", "rules: []\n"))
    accept(new, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=cart_minutes_ago)))
    at = utcnow()
    with logs_of(monkeypatch, absence) as logs:
        assert old.timers.run_once(at) == 1
    [timer] = timer_rows(old)
    assert timer["status"] == "pending" and timer["due_at"] > at  # held, not lapsed
    [held] = [entry for entry in logs if entry["event"].startswith("timers held")]
    assert (held["log_level"], held["rule"], held["reason"], held["timers"]) == (
        "warning", "order_nudge", "rule removed from triggers.yaml", 1)
    reload_rules(old, tmp_path / "b" / "mappings" / "triggers.yaml", NUDGE)  # the rollout reaches B
    assert old.timers.run_once(timer["due_at"]) == 1
    assert timer_statuses(old) == ["fired"]
    assert [decision["rule_id"] for decision in nudges(old)] == ["order_nudge"]


@pytest.mark.parametrize("stale", ["pipeline", "timer worker"])
def test_a_shortened_wait_reaches_timers_a_node_without_the_edit_armed_or_sent_back_on_the_old_wait(
    tmp_path: Path, stale: str
) -> None:
    """Ops cut the wait from 30 minutes to 2. Node A has the edit; node B, still on the old file, arms a cart's
    timer on the old wait, or claims one A brought forward and sends it back to the old wait. A looks at the
    shortened rule's timers again, so the cart is nudged when the rule in force says, not 28 minutes late."""
    database_url = f"sqlite:///{tmp_path}/shared.db"
    a = hub_on(tmp_path / "a", database_url=database_url, mappings_dir=copied_mappings(tmp_path / "a", ORDER_NUDGE.replace("WAIT", "30m")))
    b = hub_on(tmp_path / "b", database_url=database_url, mappings_dir=copied_mappings(tmp_path / "b", ORDER_NUDGE.replace("WAIT", "30m")))
    cart = message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3))
    if stale == "timer worker":
        accept(a, AMY, cart)
    assert a.timers.run_once() == b.timers.run_once() == 0  # both have noted the 30-minute wait
    reload_rules(a, tmp_path / "a" / "mappings" / "triggers.yaml", NUDGE)
    edited = utcnow()
    if stale == "pipeline":
        assert a.timers.run_once(edited) == 0  # nothing armed yet to bring forward
        accept(b, AMY, cart)
    else:
        a.timers.shortened_waits.follow(edited, a.rulebook.current())  # the first half of A's run: the timer brought forward ...
        assert b.timers.run_once(edited) == 1  # ... and B's worker claims it first: back to the old wait
        [timer] = timer_rows(a)
        assert timer["due_at"] - timer["anchor_at"] == timedelta(minutes=30)
    assert timer_statuses(a) == ["pending"]
    assert a.timers.next_due() <= edited + timedelta(minutes=1)  # A's worker wakes for its next look
    assert a.timers.run_once(edited + timedelta(minutes=1)) == 1
    assert timer_statuses(a) == ["fired"]
