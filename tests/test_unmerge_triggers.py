"""What an unmerge gives back besides identifiers: the waits the other person ended, the messages addressed to
the other person, and traits that named the other person's address.

Amy and Bo are wrongly merged by an identify that puts Bo's laptop under Amy's user id; an operator then
splits Bo back out (POST /api/profiles/{amy}/unmerge). The shipped rules run: `cart_abandonment` waits two
minutes after a cart for any action, then emails the profile's newest address.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.model import FOLLOWED_UP_BY, Identifier, PlannedDelivery, derived_id
from hub.runtime import Hub
from hub.store import Store, decisions, delivery_log, delivery_replay, outbox, timers
from hub.store.identity_repair import _withdraw_misaddressed as withdraw_misaddressed
from hub.store.identity_repair import unmerge
from hub.store.withdrawals import WITHDRAWN_IN_UNMERGE
from hub.store.profile_views import profile_view
from hub.store.schema import deliveries, merges
from hub.store.timers import ALREADY_FIRED_BY
from tests.conftest import message
from tests.test_absence_timers import accept, ago, fresh_now, hub_on  # noqa: F401  (fresh_now: autouse)

BAD_LINK = [
    message("identify", userId="amy", traits={"email": "amy@example.com"}, timestamp=ago(days=1)),
    message("identify", anonymousId="bo-laptop", traits={"email": "bo@example.com"}, timestamp=ago(hours=5)),
    message("identify", userId="amy", anonymousId="bo-laptop", timestamp=ago(hours=4)),  # Bo's laptop, Amy's id
]
AMY, BO = {"userId": "amy"}, {"anonymousId": "bo-laptop"}


def sandboxed_hub(tmp_path: Path, sandbox: SandboxProviders, **overrides: object) -> Hub:
    """A hub whose workers the test drives, sending to the sandbox providers."""
    return hub_on(tmp_path, **sandbox.settings_overrides(), **overrides)


def take_in(hub: Hub, *messages: dict) -> None:
    """Each message in a pipeline batch of its own, as SDKs send them hours apart: the profile's newest email,
    which routing picks, is then the one seen last."""
    for each in messages:
        accept(hub, each)


def split(hub: Hub) -> tuple[str, str]:
    """Unmerge Bo from Amy as the admin API does; returns (amy, bo)."""
    with hub.store.write() as connection:
        [(amy, bo)] = connection.execute(select(merges.c.survivor_id, merges.c.merged_id)).all()
        unmerge(connection, amy, bo, utcnow())
    return amy, bo


def fire_timers(hub: Hub) -> None:
    while hub.timers.run_once():
        pass


def deliver(hub: Hub, rounds: int = 5) -> None:
    for _ in range(rounds):
        hub.delivery.run_once()


def deliver_until_retrying(hub: Hub, rounds: int = 50) -> None:
    """Run the delivery worker until the one delivery waits to be retried, not claimed again by the worker
    (whose next run would send it without a look at the outbox)."""
    for _ in range(rounds):
        hub.delivery.run_once()
        with hub.store.read() as connection:
            if connection.execute(select(deliveries.c.status, deliveries.c.claimed_until)).all() == [("retrying", None)]:
                return
    raise AssertionError("the delivery never waited for a retry")


def cart_nudges(hub: Hub, profile_id: str) -> list[dict]:
    with hub.store.read() as connection:
        return decisions.search(connection, limit=10, profile_id=profile_id, rule_id="cart_abandonment")


def event_id(event: dict) -> str:
    """The touchpoint id the pipeline gives a message sent to the default source."""
    return derived_id("default", event["messageId"])


@pytest.mark.parametrize(
    ("cart_of", "other", "address"), [(BO, AMY, "bo@example.com"), (AMY, BO, "amy@example.com")], ids=["bos_cart", "amys_cart"]
)
def test_the_other_persons_action_that_ended_a_cart_wait_is_forgotten_and_the_nudge_goes_once(
    tmp_path: Path, sandbox: SandboxProviders, cart_of: dict, other: dict, address: str
) -> None:
    """While merged, the other person's page view, 30 s after the cart, ended its wait. Once they are split,
    the cart's owner did nothing after it: the timer (restored or kept) is pending again, overdue, and fires
    once; the nudge reaches the cart owner's own address, once."""
    hub = sandboxed_hub(tmp_path, sandbox)
    take_in(hub, *BAD_LINK, message(**cart_of, event="Cart Viewed", timestamp=ago(minutes=3)),
           message("page", **other, name="Home", timestamp=ago(minutes=2, seconds=30)))
    amy, bo = split(hub)
    owner = bo if cart_of is BO else amy
    with hub.store.read() as connection:
        [timer] = timers.for_profile(connection, owner)
    assert (timer["status"], timer["reason"], timer["settled_at"]) == ("pending", None, None)
    fire_timers(hub)
    fire_timers(hub)
    deliver(hub)
    assert [d["status"] for d in cart_nudges(hub, owner)] == ["fired"]
    assert [email.rcpt_tos for email in sandbox.smtp.received] == [[address]]
    hub.store.dispose()


def test_a_reopened_wait_still_ends_at_its_own_sides_follow_up(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """Amy's page ended Bo's wait first; Bo's own page came after, within it. The unmerge reopens the timer,
    and the timer worker, looking again by event time, finds Bo's page: no nudge, and the timer names it."""
    own_follow_up = message("page", **BO, name="Pricing", timestamp=ago(minutes=2))
    hub = sandboxed_hub(tmp_path, sandbox)
    take_in(hub, *BAD_LINK, message(**BO, event="Cart Viewed", timestamp=ago(minutes=3)),
           message("page", **AMY, name="Home", timestamp=ago(minutes=2, seconds=30)), own_follow_up)
    _, bo = split(hub)
    fire_timers(hub)
    deliver(hub)
    with hub.store.read() as connection:
        [timer] = timers.for_profile(connection, bo)
    assert (timer["status"], timer["reason"]) == ("cancelled", FOLLOWED_UP_BY + event_id(own_follow_up))
    assert cart_nudges(hub, bo) == [] and sandbox.smtp.received == []
    hub.store.dispose()


def test_a_wait_superseded_by_the_other_persons_nudge_is_reopened(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """Amy's cart nudge fired and went; Bo's cart, inside Amy's wait but taken in after that nudge (a late batch),
    was then superseded by it. Split, Amy's nudge is not Bo's: Bo's timer fires his own. (Had Amy's email not gone
    yet, Bo's late cart would have withdrawn it instead: `timer_arming.withdraw_followed_up`.)"""
    hub = sandboxed_hub(tmp_path, sandbox)
    take_in(hub, *BAD_LINK, message(**AMY, event="Cart Viewed", timestamp=ago(minutes=5)))
    fire_timers(hub)
    deliver(hub)
    take_in(hub, message(**BO, event="Cart Viewed", timestamp=ago(minutes=4)))
    fire_timers(hub)
    with hub.store.read() as connection:
        [amys_nudge] = decisions.search(connection, limit=10, rule_id="cart_abandonment")
        superseded = [t for t in timers.for_profile(connection, amys_nudge["profile_id"]) if t["status"] == "superseded"]
    assert [t["reason"] for t in superseded] == [ALREADY_FIRED_BY + amys_nudge["decision_id"]]
    amy, bo = split(hub)
    fire_timers(hub)
    assert [d["status"] for d in cart_nudges(hub, bo)] == ["fired"]
    assert [d["decision_id"] for d in cart_nudges(hub, amy)] == [amys_nudge["decision_id"]]
    hub.store.dispose()


def test_a_message_held_for_quiet_hours_to_the_other_persons_address_is_withdrawn_and_says_why(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """Amy's cart nudge went to the merged profile's newest email, Bo's, held until morning. After the split
    that address is Bo's alone: the message is not sent, and the delivery log says why."""
    start, end = utcnow() - timedelta(hours=1), utcnow() + timedelta(hours=3)
    hub = sandboxed_hub(tmp_path, sandbox, quiet_hours=f"{start:%H:%M}-{end:%H:%M}")
    take_in(hub, *BAD_LINK, message(**AMY, event="Cart Viewed", timestamp=ago(minutes=3)))
    fire_timers(hub)
    with hub.store.read() as connection:
        [held] = delivery_log.search(connection, limit=10)
    assert (held["status"], held["target"][-12:]) == ("pending", "@example.com") and held["next_attempt_at"] > utcnow()
    amy, _ = split(hub)
    with hub.store.read() as connection:
        [withdrawn] = delivery_log.search(connection, limit=10)
    assert (withdrawn["profile_id"], withdrawn["status"], withdrawn["last_error"]) == (amy, "failed", WITHDRAWN_IN_UNMERGE)
    assert withdrawn["attempt_log"] == []
    hub.store.dispose()


def test_a_retrying_message_to_the_other_persons_address_is_never_sent(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """The same message, not held but retrying after the mail server's 451: after the split the delivery
    worker sends Bo nothing of Amy's."""
    retry_within = 0.3
    hub = sandboxed_hub(tmp_path, sandbox, retry_base_delay_seconds=retry_within, retry_max_delay_seconds=retry_within)
    take_in(hub, *BAD_LINK, message(**AMY, event="Cart Viewed", timestamp=ago(minutes=3)))
    fire_timers(hub)
    sandbox.smtp.fail_next("451 4.3.0 try again later", stage="rcpt", times=100)  # until the split
    deliver_until_retrying(hub)
    split(hub)
    sandbox.smtp.reset()  # the mail server is back
    time.sleep(retry_within)
    deliver(hub)
    with hub.store.read() as connection:
        [withdrawn] = delivery_log.search(connection, limit=10)
    assert (withdrawn["status"], withdrawn["last_error"]) == ("failed", WITHDRAWN_IN_UNMERGE)
    assert sandbox.smtp.received == []
    hub.store.dispose()


def test_the_survivors_email_trait_is_not_the_address_the_other_person_took_back(tmp_path: Path) -> None:
    """Bo typed his email (capitalised) into Ana's phone once: merged, then split. Ana's `email` trait, which
    the shipped CRM templates write into the Salesforce Lead, is her own again (the newest value from her
    other touchpoints), and Bo's is his."""
    hub = hub_on(tmp_path)
    take_in(hub,
            message("identify", anonymousId="ana-phone", traits={"email": "ana@x.io", "name": "Ana"}, timestamp=ago(hours=5)),
            message("identify", anonymousId="bo-laptop", traits={"email": "bo@x.io"}, timestamp=ago(hours=4)),
            message("identify", anonymousId="ana-phone", traits={"email": "Bo@X.io"}, timestamp=ago(hours=3)))
    ana, bo = split(hub)
    with hub.store.read() as connection:
        ana_view, bo_view = profile_view(connection, ana), profile_view(connection, bo)
    assert ana_view["identifiers"]["email"] == ["ana@x.io"] and bo_view["identifiers"]["email"] == ["bo@x.io"]
    assert ana_view["traits"] == {"email": "ana@x.io", "name": "Ana"}
    assert bo_view["traits"] == {"email": "bo@x.io"}
    hub.store.dispose()


def test_a_trait_that_only_equals_one_of_the_other_sides_ids_is_kept(tmp_path: Path) -> None:
    """Only addresses are looked for in traits: Bo's age "42" is not Ana's user id "42"."""
    hub = hub_on(tmp_path)
    take_in(hub, message("identify", userId="42", traits={"email": "ana@x.io"}, timestamp=ago(days=2)),
            message("identify", anonymousId="bo-laptop", traits={"email": "bo@x.io", "name": "Bo", "age": "42"}, timestamp=ago(days=1)),
            message("identify", userId="42", anonymousId="bo-laptop", timestamp=ago(hours=4)))
    _, bo = split(hub)
    with hub.store.read() as connection:
        assert profile_view(connection, bo)["traits"] == {"email": "bo@x.io", "name": "Bo", "age": "42"}


def _waiting(connection: object, delivery_id: str, profile_id: str, channel: str, target: str, content: dict) -> None:
    destination = {"email": "email_smtp", "crm": "salesforce", "chat": "chat_webhook"}[channel]
    outbox.plan(connection, [PlannedDelivery(delivery_id, f"dec-{delivery_id}", profile_id, channel, destination, target,
                                             content)], utcnow())


def test_an_unmerge_keeps_a_message_carrying_an_address_that_merely_contains_the_others(store: Store) -> None:
    """Bo's bo@example.com is inside Jimbo's own jimbo@example.com: Jimbo's CRM update, his own email in its
    fields, is his, and stays (a withdrawal is for good: never replayed)."""
    with store.write() as connection:
        _waiting(connection, "d-jimbo", "p-jimbo", "crm", "p-jimbo", {"params": {"fields": {"Email": "jimbo@example.com"}}})
        others = {"p-jimbo": {Identifier("email", "bo@example.com")}, "p-bo": {Identifier("email", "jimbo@example.com")}}
        assert withdraw_misaddressed(connection, others, utcnow()) == 0


def test_an_unmerge_withdraws_a_message_to_the_others_identifier_of_any_type(store: Store) -> None:
    """routes.yaml may target any identifier type (a user id for an in-app inbox): Amy's message waiting for
    Bo's user id goes no more than one waiting for his email."""
    with store.write() as connection:
        _waiting(connection, "d-inbox", "p-amy", "chat", "u-bo", {"body": "your cart"})
        others = {"p-amy": {Identifier("user_id", "u-bo")}, "p-bo": {Identifier("user_id", "u-amy")}}
        assert withdraw_misaddressed(connection, others, utcnow()) == 1


def test_a_withdrawal_worded_before_the_upgrade_is_still_refused_a_replay(store: Store) -> None:
    """Unmerge withdrawals before 2026-12-06 carry another text; replaying one would reach the other person."""
    with store.write() as connection:
        _waiting(connection, "d-old", "p-amy", "email", "bo@example.com", {"body": "hi"})
        connection.execute(update(deliveries).where(deliveries.c.delivery_id == "d-old").values(
            status="failed", last_error="not sent: recipient left the profile in an unmerge"))
        assert delivery_replay.replay(connection, "d-old", utcnow(), delivery_log.unrouted) == delivery_replay.MISADDRESSED
