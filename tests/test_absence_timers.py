"""Durable absence timers: armed and cancelled by events, fired after a restart, exactly once."""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, select

from hub import identity, triggers
from hub.absence import RULE_ROLLOUT
from hub.clock import utcnow
from hub.model import Identifier, RawEvent, Touchpoint, derived_id, ordered_id
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.store import decisions, delivery_log, identity_repair, inbox, timer_waits, timers, touchpoints
from hub.store.profile_views import find_profile_id
from hub.store.schema import deliveries as deliveries_table
from hub.store.schema import merges
from hub.store.schema import timers as timers_table
from tests.conftest import make_settings, message

NOW = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def fresh_now() -> None:
    """Events here are minutes before NOW, and waits run from them: NOW is each test's start, not when the module
    was imported. A run of the whole suite takes over ten minutes, and a 30-minute wait begun 20 minutes "ago" had
    come due by the time a late module's test asserted it still ran. Modules that use `ago` import this too."""
    global NOW
    NOW = datetime.now(timezone.utc)


def hub_on(tmp_path: Path, **overrides: object) -> Hub:
    """A hub whose workers are not started: the test drives each step, as a crash-and-restart would."""
    return Hub(make_settings(tmp_path, **{"quiet_hours": "", "lease_seconds": 0.5, **overrides}))


BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def accept(hub: Hub, *messages: dict) -> None:
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], utcnow())
    while hub.pipeline.run_once():
        pass


def cart_then(*follow_ups: dict) -> list[dict]:
    return [
        message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=(NOW - timedelta(days=1)).isoformat()),
        message(userId="amy", event="Cart Viewed", timestamp=(NOW - timedelta(minutes=3)).isoformat()),
        *follow_ups,
    ]


def timer_statuses(hub: Hub) -> list[str]:
    with hub.store.read() as connection:
        return [row.status for row in connection.execute(timers_table.select().order_by(timers_table.c.created_at))]


class Statements:
    """The SQL a hub sends while the block runs."""

    def __init__(self, hub: Hub) -> None:
        self.engine = hub.store.engine
        self.sent: list[str] = []

    def __enter__(self) -> "Statements":
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, connection: object, cursor: object, statement: str, *args: object) -> None:
        self.sent.append(" ".join(statement.split()))

    def reads_of(self, table: str) -> list[str]:
        return [text for text in self.sent if text.startswith("SELECT") and f"FROM {table} " in text]


@BOTH_DATABASES
def test_a_due_timer_fires_after_a_restart_exactly_once(tmp_path: Path, database_url: str) -> None:
    before = hub_on(tmp_path, database_url=database_url)
    accept(before, *cart_then())
    assert timer_statuses(before) == ["pending"]
    before.store.dispose()  # the process dies before the timer's time comes

    after = hub_on(tmp_path, database_url=database_url)
    assert after.timers.run_once() == 1
    assert after.timers.run_once() == 0
    assert timer_statuses(after) == ["fired"]
    with after.store.read() as connection:
        assert decisions.count_by_rule(connection) == {"cart_abandonment": 1}


def test_a_fired_timer_records_its_decision_and_deliveries_under_ids_ordered_by_its_due_time(tmp_path: Path) -> None:
    """Deterministic, and appended to their tables' keys rather than scattered over them (`ordered_id`)."""
    hub = hub_on(tmp_path)
    accept(hub, *cart_then())
    assert hub.timers.run_once() == 1
    with hub.store.read() as connection:
        timer = connection.execute(timers_table.select()).mappings().one()
        planned = connection.execute(deliveries_table.select()).mappings().all()
    assert timer["decision_id"] == ordered_id(timer["due_at"], "decision", "cart_abandonment", timer["touchpoint_id"])
    assert planned, "the cart abandonment plans a message"
    for place, delivery in enumerate(planned):  # one action per channel here: their places are their order
        assert delivery["decision_id"] == timer["decision_id"]
        assert delivery["delivery_id"] == ordered_id(
            timer["due_at"], "delivery", timer["decision_id"], str(place), delivery["channel"], delivery["target"]
        )


def test_a_timer_claimed_by_a_worker_that_died_fires_once_its_lease_runs_out(tmp_path: Path) -> None:
    hub = hub_on(tmp_path)
    accept(hub, *cart_then())
    with hub.store.write() as connection:  # a worker claims the timer, then dies before firing it
        [claimed] = timers.claim_due(connection, 10, utcnow(), timedelta(seconds=0.5))
    assert hub.timers.run_once() == 0  # still leased to the dead worker
    time.sleep(0.6)
    assert hub.timers.run_once() == 1
    with hub.store.read() as connection:
        [decision] = decisions.search(connection, limit=10)
    assert decision["decision_id"] == timer_row(hub, claimed.timer_id)["decision_id"]


def timer_row(hub: Hub, timer_id: str) -> dict:
    with hub.store.read() as connection:
        return dict(connection.execute(timers_table.select().where(timers_table.c.timer_id == timer_id)).mappings().one())


def test_the_follow_up_cancels_and_a_new_cart_event_restarts_the_wait(tmp_path: Path) -> None:
    hub = hub_on(tmp_path)
    accept(hub, *cart_then(message(userId="amy", event="Product Added", timestamp=(NOW - timedelta(minutes=2, seconds=30)).isoformat())))
    assert timer_statuses(hub) == ["cancelled", "pending"]  # any action cancels the first wait; the new cart event starts one
    accept(hub, message(userId="amy", event="Order Completed", timestamp=(NOW - timedelta(minutes=2)).isoformat()))
    assert timer_statuses(hub) == ["cancelled", "cancelled"]
    assert hub.timers.run_once() == 0


@BOTH_DATABASES
def test_an_event_cancels_the_wait_it_falls_inside_and_leaves_an_overdue_one_to_fire_in_one_update(
    tmp_path: Path, database_url: str
) -> None:
    """A wait that ran out before the event held: its timer fires even when the timer worker had not got to it
    yet (behind, or down), instead of the event throwing it away."""
    hub = hub_on(tmp_path, database_url=database_url)
    identify, cart = cart_then()
    accept(hub, identify, message(userId="amy", event="Cart Viewed", timestamp=(NOW - timedelta(minutes=10)).isoformat()))
    accept(hub, cart)  # the first wait ran out before this cart, and has not fired yet
    assert timer_statuses(hub) == ["pending", "pending"]
    with Statements(hub) as statements:  # the next cart event ends the running wait and starts its own
        accept(hub, message(userId="amy", event="Product Added", timestamp=(NOW - timedelta(minutes=2)).isoformat()))
    assert timer_statuses(hub) == ["pending", "cancelled", "pending"]
    assert len([text for text in statements.sent if text.startswith("UPDATE timers")]) == 1
    assert hub.timers.run_once() == 2  # the overdue wait, and the last one (due now)
    assert timer_statuses(hub) == ["fired", "cancelled", "fired"]


def test_an_event_at_the_carts_very_instant_is_not_a_follow_up_whichever_is_taken_in_first(tmp_path: Path) -> None:
    """A page view sent in one batch with the cart event, before or after it: the wait goes on either way."""
    hub = hub_on(tmp_path)
    at = (NOW - timedelta(minutes=3)).isoformat()
    for name, order in (("amy", ("page", "track")), ("bob", ("track", "page"))):
        cart = message(userId=name, event="Cart Viewed", timestamp=at)
        page = message("page", userId=name, name="Cart", timestamp=at)
        accept(hub, message("identify", userId=name, traits={"email": f"{name}@example.com"}, timestamp=ago(days=1)),
               *(page if kind == "page" else cart for kind in order))
    assert timer_statuses(hub) == ["pending", "pending"]
    assert hub.timers.run_once() == 2
    assert timer_statuses(hub) == ["fired", "fired"]


@pytest.mark.parametrize("kind", ["identify", "alias", "group"])
def test_a_call_saying_who_someone_is_is_not_an_action_that_ends_the_wait(tmp_path: Path, kind: str) -> None:
    """`without: any` waits for the person to do something: a track, page or screen. A CRM's trait sync or an
    app's identify at launch 30 s after the cart cancelled the nudge."""
    hub = hub_on(tmp_path)
    fields = {"identify": {"traits": {"plan": "gold"}}, "alias": {"previousId": "amy-old"}, "group": {"groupId": "acme"}}
    accept(hub, *cart_then(message(kind, userId="amy", timestamp=ago(minutes=2, seconds=30), **fields[kind])))
    assert hub.timers.run_once() == 1
    assert timer_statuses(hub) == ["fired"]


def test_a_timer_with_no_action_left_for_its_anchor_lapses_and_is_not_called_cancelled(tmp_path: Path) -> None:
    """Cart activity on a TV, and a rule that only pushes to phones: it decides nothing; the timer says so
    (lapsed), not that a follow-up came (cancelled)."""
    phones_only = ORDER_NUDGE.replace("WAIT", "2m").replace(
        "template: cart_abandonment.email.j2}", "template: cart_abandonment.email.j2, "
        "only_if: [{field: context.device.type, op: in, value: [ios, android]}]}")
    hub = nudge_hub(tmp_path, phones_only)
    identify, _ = cart_then()
    tv = message(userId="amy", event="Cart Viewed", context={"device": {"type": "tv"}},
                 timestamp=(NOW - timedelta(minutes=3)).isoformat())
    accept(hub, identify, tv)
    assert hub.timers.run_once() == 1
    assert timer_statuses(hub) == ["lapsed"]


def test_a_timer_of_a_rule_removed_since_lapses_without_deciding_once_a_rollout_would_have_reached_this_node(
    tmp_path: Path
) -> None:
    """Until then it is held: the rule may be one another node runs and this one has not loaded yet."""
    hub = hub_on(tmp_path)
    accept(hub, *cart_then())
    with hub.store.write() as connection:
        connection.execute(timers_table.update().values(rule_id="rule_deleted_since"))
    assert hub.timers.run_once() == 1
    assert timer_statuses(hub) == ["pending"]
    assert hub.timers.run_once(utcnow() + RULE_ROLLOUT) == 1
    assert timer_statuses(hub) == ["lapsed"]
    with hub.store.read() as connection:
        assert decisions.search(connection, limit=10) == []


def carts_of(*names: str) -> list[dict]:
    """Each person identifies, then views a cart three minutes ago: one due timer each, fired in one batch."""
    return [
        event
        for name in names
        for event in (
            message("identify", userId=name, traits={"email": f"{name}@example.com"}, timestamp=(NOW - timedelta(days=1)).isoformat()),
            message(userId=name, event="Cart Viewed", timestamp=(NOW - timedelta(minutes=3)).isoformat()),
        )
    ]


def status_of(hub: Hub, name: str) -> str:
    with hub.store.read() as connection:
        [timer] = timers.for_profile(connection, profile_of(connection, name))
    return timer["status"]


def test_a_timer_that_fails_does_not_stop_its_neighbours_and_fires_once_its_lease_runs_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hub_on(tmp_path)
    accept(hub, *carts_of("amy", "bob", "cat"))
    evaluate_expired = triggers.evaluate_expired

    def broken_for_bob(*args: object, **kwargs: object) -> object:
        if args[-1] == {"email": "bob@example.com"}:  # the profile's traits
            raise RuntimeError("bob's timer breaks")
        return evaluate_expired(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(triggers, "evaluate_expired", broken_for_bob)
    assert hub.timers.run_once() == 3
    assert [status_of(hub, name) for name in ("amy", "bob", "cat")] == ["fired", "pending", "fired"]
    monkeypatch.undo()  # the fault is fixed; bob's claim stands until its lease runs out
    time.sleep(0.6)
    assert hub.timers.run_once() == 1
    assert hub.timers.run_once() == 0
    assert [status_of(hub, name) for name in ("amy", "bob", "cat")] == ["fired", "fired", "fired"]
    with hub.store.read() as connection:
        assert decisions.count_by_rule(connection) == {"cart_abandonment": 3}


def test_a_follow_up_stored_after_the_cancel_pass_is_still_found_when_the_batch_fires(tmp_path: Path) -> None:
    hub = hub_on(tmp_path)
    accept(hub, *carts_of("amy", "bob"))
    with hub.store.write() as connection:  # amy acts a minute into her wait; her event is stored, but raced the cancel
        profile_id = find_profile_id(connection, Identifier("email", "amy@example.com"))
        assert profile_id is not None
        at = NOW - timedelta(minutes=2)
        late = Touchpoint("tp-late", "default", "m-late", "track", "Product Added", "consideration", "cart_activity",
                          at, utcnow(), (Identifier("user_id", "amy"),))
        touchpoints.insert(connection, late, profile_id, inbox_id=0)
    assert hub.timers.run_once() == 2
    assert [status_of(hub, name) for name in ("amy", "bob")] == ["cancelled", "fired"]
    with hub.store.read() as connection:
        assert decisions.count_by_rule(connection) == {"cart_abandonment": 1}


REMINDER = """
  - id: cart_reminder
    when: {absence: {after: {moment: cart_activity}, without: any, within: 2m}}
    respond: [{channel: email, template: cart_abandonment.email.j2}]
    vars: {discount_code: COMEBACK10, discount_percent: 10, cart_url: "https://shop.example.com/cart"}
"""


@BOTH_DATABASES
def test_two_timers_of_one_profile_in_a_batch_fire_in_turn_so_the_daily_cap_counts_the_first(
    tmp_path: Path, database_url: str
) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "triggers.yaml").write_text((mappings / "triggers.yaml").read_text() + REMINDER)
    hub = hub_on(tmp_path, database_url=database_url, mappings_dir=mappings, daily_message_cap=1)
    accept(hub, *cart_then())
    assert timer_statuses(hub) == ["pending", "pending"]
    assert hub.timers.run_once() == 2
    assert timer_statuses(hub) == ["fired", "fired"]
    with hub.store.read() as connection:
        assert decisions.count_by_rule(connection) == {"cart_abandonment": 1, "cart_reminder": 1}
        fates = sorted(action["fate"] for decision in decisions.search(connection, limit=10) for action in decision["actions"])
        assert fates == ["capped", "planned"]  # the second decision found the day's one message planned
        assert len(delivery_log.search(connection, limit=10)) == 1



@BOTH_DATABASES
def test_a_set_reads_its_caps_once_and_each_profile_counts_only_its_own_decisions(tmp_path: Path, database_url: str) -> None:
    hub = hub_on(tmp_path, database_url=database_url)
    accept(hub, *[{**event, "timestamp": (NOW - timedelta(minutes=10)).isoformat()} for event in carts_of("amy")])
    assert hub.timers.run_once() == 1  # amy's one cart nudge of the day (the rule's cap: 1 in 24 h)
    accept(hub, *carts_of("amy", "bob", "cat"))
    with Statements(hub) as statements:
        assert hub.timers.run_once() == 3
    assert len(statements.reads_of("decisions")) == 1  # the rule's cap, for the three profiles at once
    assert len(statements.reads_of("deliveries")) == 1  # the daily cap, likewise
    with hub.store.read() as connection:
        fired = {
            name: [d["status"] for d in decisions.search(connection, limit=10, profile_id=profile_of(connection, name))]
            for name in ("amy", "bob", "cat")
        }
    assert fired == {"amy": ["capped", "fired"], "bob": ["fired"], "cat": ["fired"]}


def profile_of(connection: Connection, name: str) -> str:
    profile_id = find_profile_id(connection, Identifier("email", f"{name}@example.com"))
    assert profile_id is not None
    return profile_id


@BOTH_DATABASES
def test_a_set_with_a_timer_of_a_profile_merged_since_fires_it_on_the_live_profile(tmp_path: Path, database_url: str) -> None:
    hub = hub_on(tmp_path, database_url=database_url)
    accept(
        hub,
        message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=(NOW - timedelta(days=1)).isoformat()),
        message(anonymousId="anon-1", event="Cart Viewed", timestamp=(NOW - timedelta(minutes=3)).isoformat()),
        *carts_of("bob"),
    )
    with hub.store.read() as connection:
        amy = find_profile_id(connection, Identifier("email", "amy@example.com"))
        anonymous = find_profile_id(connection, Identifier("anonymous_id", "anon-1"))
    assert amy is not None and anonymous is not None and anonymous != amy
    # Late news from before the cart: the anonymous visitor was amy. It merges the profiles, not cancel the wait.
    accept(hub, message("identify", userId="amy", anonymousId="anon-1", timestamp=(NOW - timedelta(minutes=4)).isoformat()))
    with hub.store.read() as connection:
        assert find_profile_id(connection, Identifier("anonymous_id", "anon-1")) == amy
        assert timers.for_profile(connection, anonymous) == []  # the merge moved it to amy, as her touchpoints
        [timer] = timers.for_profile(connection, amy)
    assert timer["status"] == "pending"

    assert hub.timers.run_once() == 2
    assert timer_row(hub, timer["timer_id"])["status"] == "fired"
    assert status_of(hub, "bob") == "fired"
    with hub.store.read() as connection:
        [decision] = decisions.search(connection, limit=10, profile_id=amy)
        [delivery] = delivery_log.search(connection, limit=10, profile_id=amy)
    assert decision["decision_id"] == timer_row(hub, timer["timer_id"])["decision_id"]
    assert delivery["channel"] == "email"  # to amy's address, which the anonymous profile never had


def test_a_timer_armed_due_shortly_fires_at_its_due_time_not_at_the_next_poll(tmp_path: Path) -> None:
    poll = 60.0  # an idle worker that only polled would not look again for a minute
    hub = hub_on(tmp_path, worker_poll_seconds=poll)
    hub.start()
    try:
        started = time.monotonic()
        cart_at = utcnow() - timedelta(minutes=2) + timedelta(seconds=2)  # the 2-minute wait ends 2 s from now
        accept(hub, message(userId="amy", event="Cart Viewed", timestamp=cart_at.isoformat()))  # while the workers nap
        while timer_statuses(hub) != ["fired"] and time.monotonic() - started < poll / 2:
            time.sleep(0.1)
        assert timer_statuses(hub) == ["fired"]  # well before a poll: the arming woke the timer worker
        with hub.store.read() as connection:
            [timer] = connection.execute(timers_table.select()).mappings().all()
        assert timer["due_at"] <= timer["settled_at"]  # and not before its time
    finally:
        hub.stop()


ORDER_NUDGE = """rules:
  - id: order_nudge
    when: {absence: {after: {event: [Cart Viewed, Product Added]}, without: {event: Order Completed}, within: WAIT}}
    respond: [{channel: email, template: cart_abandonment.email.j2}]
    vars: {discount_code: C, discount_percent: 10, cart_url: "https://shop.example.com/cart"}
"""


def nudge_hub(tmp_path: Path, rules: str = ORDER_NUDGE.replace("WAIT", "2m")) -> Hub:
    """A hub whose one rule waits for an order (not any event), so a second cart restarts the wait."""
    return hub_on(tmp_path, mappings_dir=copied_mappings(tmp_path, rules))


def copied_mappings(tmp_path: Path, rules: str) -> Path:
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "triggers.yaml").write_text(rules)
    return mappings


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat()


def nudges(hub: Hub) -> list[dict]:
    while hub.timers.run_once():
        pass
    with hub.store.read() as connection:
        return decisions.search(connection, limit=10, rule_id="order_nudge")


AMY = message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=ago(days=1))


@pytest.mark.parametrize("in_order", [True, False])
def test_two_carts_in_one_wait_decide_once_whichever_is_taken_in_first(tmp_path: Path, in_order: bool) -> None:
    """The later cart restarts the wait. Taken in first, it cannot supersede the earlier cart's timer, armed
    after it: the earlier timer sees the restart when it comes due."""
    hub = nudge_hub(tmp_path)
    early, late = (message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3, seconds=s)) for s in (20, 0))
    for taken in (AMY, early, late) if in_order else (AMY, late, early):
        accept(hub, taken)
    [decision] = nudges(hub)
    assert sorted(timer_statuses(hub)) == ["fired", "superseded"]
    assert decision["touchpoint_id"] == derived_id("default", late["messageId"])


def test_a_cart_of_a_profile_merged_in_since_is_restarted_by_the_survivors_next_cart(tmp_path: Path) -> None:
    """Amy's first cart was made before she was recognised; her second one restarts the wait the first began:
    one email, not two. The merge moves the anonymous profile's timer to her, as it moves its touchpoints."""
    hub = nudge_hub(tmp_path)
    accept(hub, AMY, message(anonymousId="anon-1", event="Cart Viewed", timestamp=ago(minutes=3)),
           message("identify", userId="amy", anonymousId="anon-1", timestamp=ago(minutes=2, seconds=50)),
           message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=2, seconds=40)))
    with hub.store.read() as connection:
        amy = find_profile_id(connection, Identifier("user_id", "amy"))
        assert find_profile_id(connection, Identifier("anonymous_id", "anon-1")) == amy
        assert [t["profile_id"] for t in timers.for_profile(connection, amy or "")] == [amy, amy]
    assert len(nudges(hub)) == 1
    assert sorted(timer_statuses(hub)) == ["fired", "superseded"]


def test_after_an_unmerge_a_timer_follows_its_cart_and_that_persons_order_cancels_it(tmp_path: Path) -> None:
    hub = nudge_hub(tmp_path)
    accept(hub, AMY, message("page", anonymousId="anon-1", name="Home", timestamp=ago(hours=5)),
           message("identify", userId="amy", anonymousId="anon-1", timestamp=ago(hours=4)),  # a bad link
           message(anonymousId="anon-1", event="Cart Viewed", timestamp=ago(minutes=3)))  # the other person's cart
    with hub.store.write() as connection:
        amy = find_profile_id(connection, Identifier("user_id", "amy"))
        [merged] = connection.execute(select(merges.c.merged_id)).scalars()
        identity_repair.unmerge(connection, amy or "", merged, utcnow())
        [timer] = timers.for_profile(connection, merged)
    accept(hub, message(anonymousId="anon-1", event="Order Completed", timestamp=ago(minutes=2)))
    assert nudges(hub) == []  # before, the timer stayed amy's: it fired and emailed her about someone's cart
    assert timer_row(hub, timer["timer_id"])["status"] == "cancelled"


def reload_rules(hub: Hub, path: Path, text: str) -> None:
    path.write_text(text)
    later = path.stat().st_mtime_ns + 1_000_000_000  # a new mtime, however coarse the file system's clock
    os.utime(path, ns=(later, later))
    assert hub.rulebook.reload_if_changed()


def test_a_pending_timer_keeps_to_the_rule_as_edited_since_it_was_armed(tmp_path: Path) -> None:
    """Lengthen the wait: the timer waits out the rest. Narrow `after`: a cart the rule no longer waits after
    lapses. Shorten the wait: the decision is due when the rule now says, and its evidence agrees."""
    hub = nudge_hub(tmp_path)
    rules = tmp_path / "mappings" / "triggers.yaml"
    accept(hub, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3)))
    [timer] = timer_rows(hub)
    reload_rules(hub, rules, ORDER_NUDGE.replace("WAIT", "30m"))
    assert hub.timers.run_once() == 1
    assert timer_row(hub, timer["timer_id"])["due_at"] == timer["anchor_at"] + timedelta(minutes=30)
    assert nudges(hub) == [] and timer_statuses(hub) == ["pending"]

    reload_rules(hub, rules, ORDER_NUDGE.replace("WAIT", "2m").replace("[Cart Viewed, Product Added]", "Product Added"))
    assert hub.timers.run_once(NOW + timedelta(hours=1)) == 1
    assert timer_statuses(hub) == ["lapsed"]

    accept(hub, message(userId="amy", event="Product Added", timestamp=ago(minutes=10)))
    reload_rules(hub, rules, ORDER_NUDGE.replace("WAIT", "1m"))
    [decision] = nudges(hub)
    anchor_at = datetime.fromisoformat(ago(minutes=10))
    assert decision["decided_at"] == anchor_at + timedelta(minutes=1)
    assert decision["evidence"]["absence"]["due_at"] == (anchor_at + timedelta(minutes=1)).isoformat()


def timer_rows(hub: Hub) -> list[dict]:
    with hub.store.read() as connection:
        return [dict(row) for row in connection.execute(timers_table.select()).mappings()]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_timer_worker_and_a_late_follow_up_take_the_locks_in_one_order(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline holds the profiles lock when it settles timers; the timer worker took its timers' rows
    first, then waited for that lock: PostgreSQL found the deadlock and rolled the timer set back."""
    hub = hub_on(tmp_path, database_url=database_url, lease_seconds=30)
    accept(hub, *cart_then())
    follow_up = message(userId="amy", event="Order Completed", timestamp=ago(minutes=2))  # inside the wait, late
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", follow_up["messageId"], follow_up)], utcnow())
    pipeline_holds_lock, timers_claimed = threading.Event(), threading.Event()
    resolve, claim_due = identity.resolve, timers.claim_due

    def resolve_slowly(*args: object, **kwargs: object) -> object:  # the pipeline resolves under the profiles lock
        pipeline_holds_lock.set()
        timers_claimed.wait(1)  # with one lock order the worker cannot claim until the pipeline commits
        return resolve(*args, **kwargs)

    def claim_and_tell(*args: object, **kwargs: object) -> object:
        claimed = claim_due(*args, **kwargs)
        timers_claimed.set()
        return claimed

    monkeypatch.setattr(identity, "resolve", resolve_slowly)
    monkeypatch.setattr(timers, "claim_due", claim_and_tell)
    failures: list[BaseException] = []

    def timer_worker() -> None:
        pipeline_holds_lock.wait(5)
        try:
            hub.timers.run_once()
        except BaseException as exc:  # noqa: BLE001 - the test reports what the worker met
            failures.append(exc)

    worker = threading.Thread(target=timer_worker)
    worker.start()
    hub.pipeline.run_once()
    worker.join(20)
    assert failures == []
    assert timer_statuses(hub) == ["cancelled"]


def test_a_timer_waits_while_its_follow_up_may_still_be_in_the_inbox(tmp_path: Path) -> None:
    """The hub catching up after an outage: a cart and its checkout ten seconds later were received together.
    The pipeline takes them in two batches, and the timer worker ran between them (the cart woke it): it nudged
    a person who had bought. It now waits until the pipeline has seen what was received before it."""
    hub = hub_on(tmp_path, worker_batch_size=1, pipeline_backlog_batch_size=1)
    backlog = [*cart_then(), message(userId="amy", event="Order Completed", timestamp=ago(minutes=2, seconds=50))]
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in backlog], utcnow())
    assert hub.pipeline.run_once() == 1 and hub.pipeline.run_once() == 1  # the identify, the cart
    assert timer_statuses(hub) == ["pending"]
    assert hub.timers.run_once() == 0  # the order is still in the inbox
    assert hub.timers.next_due() is not None and hub.timers.next_due() > utcnow()  # it looks again shortly
    while hub.pipeline.run_once():
        pass
    assert timer_statuses(hub) == ["cancelled"]
    with hub.store.read() as connection:
        assert decisions.count_by_rule(connection) == {}


def test_an_edit_that_shortens_the_wait_brings_pending_timers_forward(tmp_path: Path) -> None:
    """Claimed by their stored due time, the timers of a wait cut from 30 minutes to 2 would have waited the
    30, and an order in between cancelled a nudge the rule now sends."""
    hub = nudge_hub(tmp_path, ORDER_NUDGE.replace("WAIT", "30m"))
    accept(hub, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3)))
    assert hub.timers.run_once() == 0  # the worker has seen the 30-minute wait
    reload_rules(hub, tmp_path / "mappings" / "triggers.yaml", ORDER_NUDGE.replace("WAIT", "2m"))
    assert hub.timers.run_once() == 1
    assert timer_statuses(hub) == ["fired"]
    [decision] = nudges(hub)
    assert decision["decided_at"] == datetime.fromisoformat(ago(minutes=1))


@BOTH_DATABASES
def test_an_edit_made_while_no_timer_worker_ran_is_found_by_the_next_to_start(tmp_path: Path, database_url: str) -> None:
    """The waits seen are kept in the store: a worker that starts after the wait was cut from 30 minutes to 2
    brings the timers armed under the 30 forward, as a running worker would have."""
    rules = ORDER_NUDGE.replace("WAIT", "30m")
    before = hub_on(tmp_path, database_url=database_url, mappings_dir=copied_mappings(tmp_path, rules))
    accept(before, AMY, message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3)))
    assert before.timers.run_once() == 0  # a worker saw the 30-minute wait, then stopped
    before.store.dispose()

    (tmp_path / "mappings" / "triggers.yaml").write_text(ORDER_NUDGE.replace("WAIT", "2m"))
    after = hub_on(tmp_path, database_url=database_url, mappings_dir=tmp_path / "mappings")
    assert after.timers.run_once() == 1
    [decision] = nudges(after)
    assert decision["decided_at"] == datetime.fromisoformat(ago(minutes=1))
    with after.store.read() as connection:
        assert timer_waits.noted_waits(connection) == {"order_nudge": timedelta(minutes=2)}


TWO_NUDGES = """rules:
  - id: browse_nudge
    priority: BROWSE
    when: {absence: {after: {event: Product Viewed}, without: {event: Order Completed}, within: 3m}}
    respond: [{channel: email, template: cart_abandonment.email.j2}]
    vars: {discount_code: B, discount_percent: 5, cart_url: "https://shop.example.com/cart"}
  - id: order_nudge
    priority: CART
    when: {absence: {after: {event: Product Added}, without: {event: Order Completed}, within: 2m}}
    respond: [{channel: email, template: cart_abandonment.email.j2}]
    vars: {discount_code: C, discount_percent: 10, cart_url: "https://shop.example.com/cart"}
"""


@pytest.mark.parametrize(("browse", "cart", "sent"), [(1, 90, "order_nudge"), (90, 1, "browse_nudge")])
def test_of_two_timers_due_at_once_the_higher_priority_rule_gets_the_daily_cap(
    tmp_path: Path, browse: int, cart: int, sent: str
) -> None:
    """A view, then a cart a minute later: both waits end at the same moment. With room for one message, the
    rule ops ranked higher sends it, as for two decisions of one event, whichever timer was armed first."""
    rules = TWO_NUDGES.replace("BROWSE", str(browse)).replace("CART", str(cart))
    hub = hub_on(tmp_path, mappings_dir=copied_mappings(tmp_path, rules), daily_message_cap=1)
    accept(hub, AMY, message(userId="amy", event="Product Viewed", timestamp=ago(minutes=5)),
           message(userId="amy", event="Product Added", timestamp=ago(minutes=4)))
    while hub.timers.run_once():
        pass
    with hub.store.read() as connection:
        statuses = {d["rule_id"]: d["status"] for d in decisions.search(connection, limit=10)}
    assert statuses == {sent: "fired", ({"browse_nudge", "order_nudge"} - {sent}).pop(): "unreached"}  # capped daily



def test_a_worker_that_waited_for_the_lock_claims_by_the_time_it_got_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer worker reads what is due, then waits for the profiles lock behind a pipeline batch (here 10 s,
    as a long batch on PostgreSQL could). A timer that came due during that wait goes in this batch: before, it
    waited for the next, as what was due (and the lease) counted from the read."""
    hub = hub_on(tmp_path)
    start = utcnow()
    accept(hub, message("identify", userId="amy", traits={"email": "amy@example.com"}),
           message(userId="amy", event="Cart Viewed", timestamp=(start - timedelta(minutes=3)).isoformat()),
           message("identify", userId="bo", traits={"email": "bo@example.com"}),
           message(userId="bo", event="Cart Viewed", timestamp=(start - timedelta(minutes=2) + timedelta(seconds=5)).isoformat()))
    readings = iter([start])  # the read before the lock; every later reading is after the wait
    monkeypatch.setattr("hub.absence.utcnow", lambda: next(readings, start + timedelta(seconds=10)))

    assert hub.timers.run_once() == 2
    assert timer_statuses(hub) == ["fired", "fired"]
