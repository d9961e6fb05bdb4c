"""A follow-up taken in after its absence timer fired, that happened inside the wait: the nudge it made not needed
is withdrawn while it is still held, and the decision says why."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub.decision_explain import explain
from hub.model import RawEvent
from hub.runtime import Hub
from hub.store import Store, decisions, delivery_replay, inbox, timer_arming
from hub.store.outbox import DUE_STATUSES
from tests.conftest import make_settings, message
from tests.test_query_plans import plans_of

T_CART = datetime(2026, 1, 5, 22, 0, tzinfo=timezone.utc)  # a Monday, 22:00 UTC: inside 21:00-08:00 quiet hours
BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def take(hub: Hub, received: datetime, **fields: object) -> None:
    """A message taken in at `received`, and the pipeline run then (as `touchhub triggers test` drives it)."""
    sent = message(str(fields.pop("type_", "track")), **fields)
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", sent["messageId"], sent)], received)
    while hub.pipeline.run_once(received):
        pass


def cart_nudged(tmp_path: Path, database_url: str) -> Hub:
    """ana's cart at 22:00, its cart_abandonment timer fired at 22:02 with nothing come since: its email held
    by quiet hours until 08:00."""
    hub = Hub(make_settings(tmp_path, database_url=database_url, quiet_hours="21:00-08:00", lease_seconds=0.5))
    take(hub, T_CART - timedelta(hours=1), type_="identify", userId="ana", traits={"email": "ana@example.com"},
         timestamp=(T_CART - timedelta(hours=1)).isoformat())
    take(hub, T_CART, userId="ana", event="Product Added", timestamp=T_CART.isoformat())
    while hub.timers.run_once(T_CART + timedelta(minutes=2, seconds=1)):
        pass
    return hub


def late_order(hub: Hub, happened: datetime) -> dict:
    """ana's order, taken in at 22:10; the cart nudge's decision explained after it."""
    take(hub, T_CART + timedelta(minutes=10), userId="ana", event="Order Completed", timestamp=happened.isoformat())
    with hub.store.read() as connection:
        [nudge] = decisions.search(connection, limit=10, rule_id="cart_abandonment")
        explained = explain(connection, nudge["decision_id"])
    assert explained is not None
    return explained


@BOTH_DATABASES
def test_a_late_order_that_happened_inside_the_wait_withdraws_the_cart_nudge_still_held_for_the_morning(
    tmp_path: Path, database_url: str,
) -> None:
    """ana ordered at 22:01, inside the wait, but her order came in at 22:10, after the timer fired: the timer
    worker would have cancelled on it had it come before, yet the pipeline only cancelled pending timers, and
    the COMEBACK10 email stayed held and went to a buyer at 08:00."""
    hub = cart_nudged(tmp_path, database_url)
    try:
        explained = late_order(hub, T_CART + timedelta(minutes=1))
        [email] = explained["deliveries"]
        with hub.store.write() as connection:  # nor does a replay of the dead-letter queue send it
            refused = delivery_replay.replay(connection, email["delivery_id"], T_CART + timedelta(hours=1),
                                             lambda channel, target: None)
    finally:
        hub.store.dispose()
    assert refused == delivery_replay.FOLLOWED_UP
    assert (email["channel"], email["status"]) == ("email", "failed")
    why = "not sent: its follow-up (Order Completed at 2026-01-05 22:01:00 UTC) arrived after the wait ended"
    assert email["last_error"].startswith(why)
    [fate] = [action for action in explained["actions"] if action.get("delivery_id") == email["delivery_id"]]
    assert (fate["fate"], fate["reason"]) == ("withdrawn", email["last_error"])
    assert explained["status"] == "unreached"  # it reached nobody: the rule's cap is not spent on it


@BOTH_DATABASES
def test_an_order_after_the_wait_ended_leaves_the_nudge_it_did_not_prevent(tmp_path: Path, database_url: str) -> None:
    """An order at 22:03, after the 2-minute wait ran out, held nothing back: the nudge stays due. (Guards the
    withdrawal above against taking every fired nudge of the rule.)"""
    hub = cart_nudged(tmp_path, database_url)
    try:
        explained = late_order(hub, T_CART + timedelta(minutes=3))
    finally:
        hub.store.dispose()
    [email] = explained["deliveries"]
    assert email["status"] in DUE_STATUSES
    assert explained["status"] == "fired"


@pytest.mark.parametrize("rules", [1, 3])
def test_the_look_for_nudges_to_withdraw_searches_the_profiles_own_fired_timers(store: Store, rules: int) -> None:
    """It runs for every event that ends a wait (any action, for the shipped cart rule): one read, on the
    profile's timer index, whatever the number of timers in the store. (Guards the pipeline's hot path.)"""
    with store.write() as connection, plans_of(connection, "timers") as plans:
        timer_arming.withdraw_followed_up(connection, "profile", "Order Completed", T_CART, T_CART,
                                          [f"rule{n}" for n in range(rules)])
    [plan] = plans
    assert "ix_timers_profile_rule_status_due" in plan, plan
