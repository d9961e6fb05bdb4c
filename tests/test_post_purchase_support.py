"""The post_purchase_support trigger through the real pipeline: who gets an SMS, who does not, and how often."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import RunningHub, message

NOW = datetime.now(timezone.utc)


def at(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat()


def person(user_id: str, phone: str) -> dict:
    return message("identify", userId=user_id, traits={"phone": phone, "first_name": user_id}, timestamp=at(days=40))


def order(user_id: str, **delta: float) -> dict:
    return message(userId=user_id, event="Order Completed", timestamp=at(**delta))


def ticket(user_id: str, **delta: float) -> dict:
    return message(userId=user_id, event="Ticket Submitted", timestamp=at(**delta))


def decisions(running_hub: RunningHub) -> dict[str, int]:
    return running_hub.admin("/api/stats")["decisions"]


def test_purchaser_with_a_ticket_gets_one_sms(running_hub: RunningHub) -> None:
    running_hub.send(person("buyer", "+14155550001"), order("buyer", days=29), ticket("buyer", minutes=1))
    running_hub.settle()
    assert [m["to"] for m in running_hub.sandbox.twilio.messages] == ["+14155550001"]
    assert decisions(running_hub) == {"post_purchase_support": 1}


def test_ticket_without_any_purchase_sends_nothing(running_hub: RunningHub) -> None:
    running_hub.send(person("browser", "+14155550002"), ticket("browser", minutes=1))
    running_hub.settle()
    assert running_hub.sandbox.twilio.messages == []
    assert decisions(running_hub) == {}


def test_purchase_older_than_30_days_does_not_count(running_hub: RunningHub) -> None:
    running_hub.send(person("lapsed", "+14155550003"), order("lapsed", days=31), ticket("lapsed", minutes=1))
    running_hub.settle()
    assert running_hub.sandbox.twilio.messages == []


@pytest.mark.hub_settings(message_max_age_hours=48)  # the first ticket is 30 h old: messages may be, here
def test_at_most_one_sms_per_profile_per_24_hours(running_hub: RunningHub) -> None:
    running_hub.send(
        person("needy", "+14155550004"),
        order("needy", days=3),
        ticket("needy", hours=30),  # fires
        ticket("needy", hours=10),  # 20 h after the first: capped
        ticket("needy", hours=8),   # 22 h after the first: capped
    )
    running_hub.settle()
    assert len(running_hub.sandbox.twilio.messages) == 1
    running_hub.send(ticket("needy", minutes=1))  # 29 h after the first decision: allowed again
    running_hub.settle()
    assert len(running_hub.sandbox.twilio.messages) == 2


def test_purchase_on_another_device_counts_once_profiles_merge(running_hub: RunningHub) -> None:
    running_hub.send(
        message(anonymousId="phone-session", event="Order Completed", timestamp=at(days=1)),
        message("identify", anonymousId="web-session", traits={"email": "sam@example.com", "phone": "+14155550005"},
                timestamp=at(hours=5)),
    )
    running_hub.settle()
    assert running_hub.admin("/api/stats")["profiles"] == 2
    running_hub.send(
        message("identify", anonymousId="phone-session", traits={"email": "SAM@example.com"}, timestamp=at(hours=2)),
        message(anonymousId="web-session", event="Ticket Submitted", timestamp=at(minutes=1)),
    )
    running_hub.settle()
    stats = running_hub.admin("/api/stats")
    assert (stats["profiles"], stats["merges"]) == (1, 1)
    profile = running_hub.admin("/api/profiles/lookup", type="anonymous_id", value="phone-session")
    assert sorted(profile["identifiers"]["anonymous_id"]) == ["phone-session", "web-session"]
    assert [m["to"] for m in running_hub.sandbox.twilio.messages] == ["+14155550005"]


def test_opted_out_profile_gets_no_sms_and_the_decision_says_why(running_hub: RunningHub) -> None:
    running_hub.send(
        message("identify", userId="quiet", traits={"phone": "+14155550006", "sms_opt_out": True}, timestamp=at(days=2)),
        order("quiet", days=1),
        ticket("quiet", minutes=1),
    )
    running_hub.settle()
    assert running_hub.sandbox.twilio.messages == []
    assert decisions(running_hub) == {"post_purchase_support": 1}
    assert running_hub.admin("/api/deliveries", channel="sms")["deliveries"] == []
    [decision] = running_hub.admin("/api/decisions")["decisions"]
    assert decision["actions"][0] == {"channel": "sms", "fate": "blocked_by_consent", "reason": "sms consent revoked by the profile"}


def test_an_order_taken_in_after_the_ticket_it_qualifies_still_gets_the_sms(running_hub: RunningHub) -> None:
    """The shop's order webhook lags the help desk's: the ticket is judged with no purchase, then again when the
    order comes in, as if they had arrived in order; sent again, the order changes nothing."""
    running_hub.send(person("late", "+14155550006"), ticket("late", minutes=1))
    running_hub.settle()
    assert running_hub.sandbox.twilio.messages == []
    late_order = order("late", days=2)
    running_hub.send(late_order)
    running_hub.settle()
    assert [m["to"] for m in running_hub.sandbox.twilio.messages] == ["+14155550006"]
    [decision] = running_hub.admin("/api/decisions", rule_id="post_purchase_support")["decisions"]
    assert decision["evidence"]["judged_again_after"]["event"] == "Order Completed"
    running_hub.send(order("late", days=1))
    running_hub.settle()
    assert len(running_hub.sandbox.twilio.messages) == 1 and decisions(running_hub) == {"post_purchase_support": 1}


def test_a_late_order_that_qualifies_two_tickets_sends_what_in_order_arrival_would(running_hub: RunningHub) -> None:
    """Two tickets an hour apart, then the order that qualifies both: the first decides, the second finds the
    first in the rule's cap (one a day), one SMS in all. A ticket at the order's very instant counts too."""
    running_hub.send(person("twice", "+14155550007"), ticket("twice", hours=3))
    running_hub.settle()
    running_hub.send(ticket("twice", hours=1))
    running_hub.settle()
    running_hub.send(person("same", "+14155550008"), ticket("same", minutes=5))
    running_hub.settle()
    running_hub.send(order("twice", days=2), message(userId="same", event="Order Completed", timestamp=at(minutes=5)))
    running_hub.settle()
    assert sorted(m["to"] for m in running_hub.sandbox.twilio.messages) == ["+14155550007", "+14155550008"]
    twice = running_hub.admin("/api/decisions", rule_id="post_purchase_support")["decisions"]
    assert sorted(d["status"] for d in twice) == ["capped", "fired", "fired"]



def web_ticket_then_phone_login(running_hub: RunningHub, phone: str, ticket: float, login: float) -> None:
    """Sam ordered on his phone (anonymous) yesterday and identified on the web; his web ticket (`ticket` minutes
    ago) is taken in, no purchase known, then his phone's login (`login` minutes ago), which merges the two."""
    running_hub.send(
        message(anonymousId="phone-session", event="Order Completed", timestamp=at(days=1)),
        message("identify", anonymousId="web-session", traits={"email": "sam@example.com", "phone": phone}, timestamp=at(hours=5)),
        message(anonymousId="web-session", event="Ticket Submitted", timestamp=at(minutes=ticket)),
    )
    running_hub.settle()
    assert running_hub.sandbox.twilio.messages == []
    running_hub.send(message("identify", anonymousId="phone-session", traits={"email": "SAM@example.com"}, timestamp=at(minutes=login)))
    running_hub.settle()


def test_a_login_taken_in_after_the_ticket_brings_the_phones_order_and_the_ticket_is_judged_again(
    running_hub: RunningHub,
) -> None:
    """As above, but the phone's login (2 minutes ago) reaches the hub after the web ticket (1 minute ago): a
    mobile SDK flushing late. The merge brings the order in only then, and judges the ticket again, as if they
    had arrived in order; the merge of another device later changes nothing."""
    web_ticket_then_phone_login(running_hub, "+14155550009", ticket=1, login=2)
    assert [m["to"] for m in running_hub.sandbox.twilio.messages] == ["+14155550009"]
    [decision] = running_hub.admin("/api/decisions", rule_id="post_purchase_support")["decisions"]
    assert decision["evidence"]["judged_again_after"]["event"] == "Order Completed"
    running_hub.send(message("page", anonymousId="tablet-session", name="Help", timestamp=at(seconds=40)))
    running_hub.settle()
    running_hub.send(message("identify", anonymousId="tablet-session", traits={"email": "sam@example.com"}, timestamp=at(seconds=30)))
    running_hub.settle()
    assert running_hub.admin("/api/stats")["merges"] == 2
    assert len(running_hub.sandbox.twilio.messages) == 1 and decisions(running_hub) == {"post_purchase_support": 1}


def test_a_login_after_the_ticket_does_not_make_the_ticket_a_purchasers(running_hub: RunningHub) -> None:
    """The same events, but the phone's login comes a minute after the web ticket, and arrives last: when the
    ticket was opened the phone was someone else's, so in-order arrival sends nothing, and the merge does not."""
    web_ticket_then_phone_login(running_hub, "+14155550010", ticket=2, login=1)
    assert running_hub.admin("/api/stats")["merges"] == 1
    assert running_hub.sandbox.twilio.messages == [] and decisions(running_hub) == {}
