"""From a decision to its record and planned deliveries, in the caller's transaction.

The pipeline (decisions of an event) and the timer engine (decisions of an
absence running out) both end here, so caps, consent, quiet hours and the
decision log behave the same whichever way a rule fired. So does a delivery
that failed, or was withdrawn unsent, because it can no longer reach its
person (every address it went to left the profile, they revoked consent to its
channel, or its provider said it cannot reach them there: `Responder.fall_back`):
its action's fallback is planned here too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from hub import metrics
from hub.consent import consent_revoked
from hub.daily_cap import CAP_PERIOD
from hub.model import FALLBACK, Action, Decision, Delivery
from hub.routing import Router, RoutingPlan
from hub.rule_predicates import Selector
from hub.store import decisions, outbox, touchpoints
from hub.store.profile_views import profile_view



@dataclass(frozen=True)
class Recorded:
    """What recording decisions did: deliveries planned, decisions fired by rule.

    Counted into metrics by `count` once the transaction commits, not as they
    are recorded: a set of events or timers rolled back to its savepoint and
    run again one by one must count each decision once.
    """

    planned: int = 0
    fired: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: Recorded) -> Recorded:
        return Recorded(self.planned + other.planned, self.fired + other.fired)

    def count(self) -> None:
        for rule_id, fired in self.fired.items():
            metrics.DECISIONS.labels(rule=rule_id).inc(fired)


class StoreHistory:
    """`rule_history.History` answered from the store, inside the caller's transaction."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def events(self, profile_id: str, since: datetime, until: datetime, selector: Selector | None) -> list[dict[str, Any]]:
        if selector is None:
            return touchpoints.events(self.connection, profile_id, since, until)
        return touchpoints.events(
            self.connection, profile_id, since, until, names=selector.events, stage=selector.stage, moment=selector.moment
        )

    def decided_between(self, profile_id: str, rule_id: str, since: datetime, until: datetime) -> list[datetime]:
        return decisions.decided_between(self.connection, profile_id, rule_id, since, until)


class CapsReadAhead(StoreHistory):
    """`StoreHistory` answering frequency caps from one read of when these rules fired for these profiles.

    A set of timers asks each capped rule's decision times once per timer; one
    read of the fired decisions since the earliest any of them looks back (made
    when the first cap asks), filtered in memory, makes that one statement per
    set. A span the read does not cover asks the store. The read is exact only as
    long as no decision it covers is recorded meanwhile: the timer engine
    records a set's decisions after all of them are decided, and gives each
    profile one timer per set.
    """

    def __init__(self, connection: Connection, profile_ids: Collection[str], rule_ids: Collection[str], since: datetime) -> None:
        super().__init__(connection)
        self.profile_ids, self.rule_ids, self.since = frozenset(profile_ids), frozenset(rule_ids), since
        self._fired: dict[tuple[str, str], list[datetime]] | None = None

    def decided_between(self, profile_id: str, rule_id: str, since: datetime, until: datetime) -> list[datetime]:
        if profile_id not in self.profile_ids or rule_id not in self.rule_ids or since < self.since:
            return super().decided_between(profile_id, rule_id, since, until)
        if self._fired is None:
            self._fired = decisions.fired_since(self.connection, self.profile_ids, self.rule_ids, self.since)
        return [decided_at for decided_at in self._fired.get((profile_id, rule_id), ()) if since < decided_at < until]


@dataclass(frozen=True, slots=True)
class Routed:
    """A decision with its routing plan, ready to be recorded."""

    decision: Decision
    plan: RoutingPlan


class Responder:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._capped_channels = [name for name, route in router.routes.items() if route.reaches_person]

    def route(
        self,
        connection: Connection,
        decision: Decision,
        touchpoint: dict[str, Any],
        now: datetime,
        profile: dict[str, Any] | None = None,
        messages_going: Sequence[datetime] | None = None,
    ) -> Routed:
        """Each action's fate and the deliveries to plan; nothing is stored until `record`.

        `profile` is the `profile_view`, and `messages_going` the profile's times
        from `messages_going`, when the caller has them already. The daily cap
        counts the deliveries stored so far, so a decision must be recorded
        before the next one of its profile is routed.
        """
        profile = profile or profile_view(connection, decision.profile_id)
        if profile is None:
            raise LookupError(f"decision {decision.decision_id} names unknown profile {decision.profile_id}")
        if messages_going is None:
            messages_going = self.messages_going(connection, [profile["profile_id"]], now).get(profile["profile_id"], [])
        plan = self.router.plan(decision, profile, touchpoint, now=now, messages_going=messages_going)
        if decision.status == "fired" and not plan.deliveries:
            # Reaching nobody spends none of the rule's cap: once the person has an address, the next event tries again.
            decision = replace(decision, status="unreached")
        return Routed(decision, plan)

    def messages_going(self, connection: Connection, profile_ids: Collection[str], now: datetime) -> dict[str, list[datetime]]:
        """What the daily cap counts for each profile (those with none left out): when its messages go, from a
        day ago on, in one statement; no statement when there is no daily cap or no profile."""
        if self.router.policy.daily_cap is None or not profile_ids:
            return {}
        return outbox.going_since(connection, profile_ids, self._capped_channels, now - CAP_PERIOD)

    def record(self, connection: Connection, routed: Sequence[Routed], now: datetime) -> Recorded:
        """Store routed decisions (one insert) and plan their deliveries (one more).

        A decision already recorded (the same event or timer processed again) plans nothing and counts no firing.
        """
        new = decisions.record(connection, [(item.decision, item.plan.fates()) for item in routed], now)
        recorded = [item for item in routed if item.decision.decision_id in new]
        fired = Counter(item.decision.rule_id for item in recorded if item.decision.status in decisions.FIRED)
        planned = outbox.plan(connection, [delivery for item in recorded for delivery in item.plan.deliveries], now)
        return Recorded(planned, fired)

    def fall_back(
        self, connection: Connection, delivery: Delivery, why: str, now: datetime, *, unreachable: bool = False
    ) -> int:
        """Plan the next channel of a delivery that failed, or was withdrawn before it was sent, once it can no
        longer reach its person (`_cannot_reach`), and record on its decision that it fell back and why; returns
        how many deliveries that planned. Routing falls back while planning only, when it sees no address or
        no consent: the person reachable on the rule's fallback heard nothing. Consent, caps and quiet hours
        apply as at planning, in the transaction that records the failure, so a crash loses neither.

        The caller has set the delivery `failed` first (the daily cap no longer counts a message that reached
        nobody), holds the profiles lock as planning does, and passes the delivery as claimed: its id, channel,
        target, profile id and content (`recipients`, `FALLBACK`); `why` is its attempt's error or its last
        error. One whose fallbacks found no way, with nothing else of its decision left to go, leaves the
        decision `unreached` (`decisions.unreached_unless_going`), spending none of the rule's cap.

        `unreachable`: its provider said the channel cannot reach the person at that address, their address and
        consent still in place: refusing the message at send (`DeliveryFailure.unreachable`: Twilio's 21614, a
        landline), or reporting one it took undelivered (`CallbackReceiver.cannot_reach`: 30005, a number that
        no longer exists).
        """
        route = self.router.routes.get(delivery.channel)
        profile = profile_view(connection, delivery.profile_id)  # a profile merged away since gives its survivor's
        if route is None or profile is None:
            return 0
        cannot = _cannot_reach(delivery, route.target, profile) or (UNREACHABLE if unreachable else None)
        if cannot is None:
            return 0
        planned = self._plan_fallback(connection, delivery, f"{cannot} ({why})", profile, now)
        if not planned:
            decisions.unreached_unless_going(connection, delivery.delivery_id)
        return planned

    def _plan_fallback(self, connection: Connection, delivery: Delivery, why: str, profile: dict[str, Any], now: datetime) -> int:
        """The delivery's action's fallbacks planned, if it has any left and its decision still records it as
        planned (not a record run again); returns how many deliveries that planned."""
        left = delivery.content.get(FALLBACK)
        row = decisions.get(connection, left["decision_id"]) if left else None
        if left is None or row is None or not _planned_in(row["actions"], delivery.delivery_id):
            return 0
        action = Action(delivery.channel, delivery.content["template"], params=delivery.content.get("params") or {},
                        fallback=tuple((channel, template) for channel, template in left["then"]))
        decision = Decision(
            row["decision_id"], row["rule_id"], row["rule_version"], profile["profile_id"], row["touchpoint_id"],
            row["decided_at"], (action,), variables=left["vars"], evidence=row["evidence"], status=row["status"],
        )
        found = touchpoints.get_many(connection, [row["touchpoint_id"]]).get(row["touchpoint_id"])
        going = self.messages_going(connection, [profile["profile_id"]], now).get(profile["profile_id"], [])
        plan = self.router.fall_back(
            decision, left["place"], action, (delivery.delivery_id, why), profile,
            found.as_document() if found else {}, now=now, messages_going=going,
            # records planned before `quiet` was kept name the rule's urgency only
            quiet=left.get("quiet", left.get("urgency") != "immediate"),
        )
        decisions.replace_fate(connection, row, delivery.delivery_id, plan.fates())
        return outbox.plan(connection, plan.deliveries, now)


# Why a delivery its provider refused, or reported undelivered, for a reason of its person can no longer reach them,
# as its decision records it (the provider's code follows).
UNREACHABLE = "the provider cannot reach the person at this address"


def _cannot_reach(delivery: Delivery, target: str, profile: dict[str, Any]) -> str | None:
    """Why the delivery can no longer reach its person, as its decision records it; None while it still could
    (an address it went to is still theirs, and they consent to its channel).

    Consent first: Twilio refusing an SMS as unsubscribed (21610) revokes SMS consent but leaves the phone on the
    profile, and a STOP that reached the hub a second earlier would have had routing plan the fallback.
    """
    if consent_revoked(profile["traits"], delivery.channel):
        return f"{delivery.channel} consent revoked by the profile"
    held = set(profile["identifiers"].get(target, ()))
    if any(address in held for address in delivery.content.get("recipients") or [delivery.target]):
        return None
    return f"every {target} it went to turned out dead and left the profile"


def _planned_in(fates: list[dict[str, Any]], delivery_id: str) -> bool:
    """Whether the decision still records the delivery as planned (not yet fallen back: a record run again)."""
    return any(fate.get("delivery_id") == delivery_id and fate["fate"] != "fell_back" for fate in fates)
