"""What a claimed delivery must still pass before it is sent: quiet hours, its send-by time, consent, and for a
push to several devices, that they are still its person's.

Routing judged all three when it planned the message, but a retry, a replay,
a delay or a send held back by an outage can come due much later: at 2 a.m.
in the person's zone, days after what caused it, or after the person texted
STOP. Every path to a send meets here, in the delivery claim's transaction.
The send-by time reads only what routing wrote into the message (`SEND_BY`).
Consent and quiet hours read profiles for messages planned a while ago, and
for those whose profile changed since, once for both; quiet hours fall back
to the zone routing wrote (`QUIET_ZONE`) where the profile names none.
A multicast retried, or planned a while ago, has its recipients read again.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection

from hub.consent import consent_revoked
from hub.model import QUIET_ZONE, SEND_BY, Delivery
from hub.quiet_hours import QuietHours
from hub.store import outbox, withdrawals
from hub.store.profile_views import changed_since, live_traits
from hub.store.sql import lock_profiles
from hub.store.withdrawals import FallBack

log = structlog.get_logger(__name__)

# A delivery claimed this long after it was planned has its person's consent read again before it is sent; sooner,
# only if their profile changed since (`profile_views.changed_since`), and the check routing made stands for the rest.
# A multicast this old, or retried, has its recipients read again too (`_to_devices_still_theirs`).
CONSENT_RECHECK_AFTER = timedelta(seconds=2)
# A profile's change is stamped on its writer's clock under the profiles lock (`profiles.updated_at`), so after any
# message the pipeline planned to the person before it; the leeway covers the clocks of two nodes disagreeing.
REVOCATION_STAMP_LEEWAY = timedelta(seconds=5)


class ClaimChecks:
    def __init__(self, quiet_hours: QuietHours | None, fall_back: FallBack | None = None) -> None:
        """`quiet_hours`: the window routing holds non-urgent messages in; retries and replays are held in it too.
        `fall_back`: plans the fallback of a delivery withdrawn for consent (`Responder.fall_back`; None: never)."""
        self.quiet_hours = quiet_hours
        self.fall_back = fall_back

    def may_go(self, connection: Connection, claimed: list[Delivery], now: datetime) -> list[Delivery]:
        """The claimed deliveries to send now; the others go back to the outbox (quiet hours) or fail unsent."""
        traits = _traits_to_recheck(connection, claimed, now)
        timely = self._still_timely(connection, self._outside_quiet_hours(connection, claimed, traits, now), now)
        return self._to_devices_still_theirs(connection, self._still_consented(connection, timely, traits, now), now)

    def _outside_quiet_hours(
        self, connection: Connection, claimed: list[Delivery], traits: dict[str, dict[str, Any]], now: datetime
    ) -> list[Delivery]:
        """The claimed deliveries that may go now; a non-urgent one in its person's quiet hours goes back to
        the outbox until they end, no attempt spent.

        Routing holds a message planned in quiet hours, but a retry, a replay
        or a send held back by an outage can come due at 2 a.m. Routing marks
        the messages quiet hours apply to (`QUIET_ZONE`), with the zone it
        judged them in; a person who moved since has a new `timezone` trait,
        among the `traits` read again (`_traits_to_recheck`). One never tried
        is first due when they end: its maximum age counts from then.
        """
        if self.quiet_hours is None:
            return claimed
        kept = []
        for delivery in claimed:
            release = _release_time(self.quiet_hours, delivery, traits.get(delivery.profile_id, {}), now)
            if release is None:
                kept.append(delivery)
            else:
                outbox.defer(connection, delivery.delivery_id, release, first_due=delivery.attempts == 0)
                log.info("delivery held for quiet hours", delivery_id=delivery.delivery_id, until=release.isoformat())
        return kept

    def _still_timely(self, connection: Connection, claimed: list[Delivery], now: datetime) -> list[Delivery]:
        """The claimed deliveries not past their send-by time; the others fail unsent.

        Routing skips a message whose cause is older than
        HUB_MESSAGE_MAX_AGE_HOURS, and marks each message to a person with the
        time it may still go by (`SEND_BY`: that long after it was due). Past it,
        retries through a long provider outage, a dead letter replayed days
        later or a delivery worker down overnight would message people about
        the past. This reads nothing more.
        """
        stale = [d.delivery_id for d in claimed if SEND_BY in d.content and datetime.fromisoformat(d.content[SEND_BY]) < now]
        if not stale:
            return claimed
        withdrawals.withdraw(connection, stale, now, "not sent: too old to send, past HUB_MESSAGE_MAX_AGE_HOURS after it was due")
        log.info("deliveries withdrawn: too old to send", deliveries=len(stale))
        return [delivery for delivery in claimed if delivery.delivery_id not in stale]

    def _still_consented(
        self, connection: Connection, claimed: list[Delivery], traits: dict[str, dict[str, Any]], now: datetime
    ) -> list[Delivery]:
        """The claimed deliveries whose person still consents to their channel; the others fail unsent.

        Routing checked consent when it planned them, but a message held by a
        delay, quiet hours (up to a night), retries or an outage may meet an
        SMS STOP, an unsubscribe or an opt-out trait before it goes: sending
        it then is the one thing consent must prevent. Their people's traits
        are read again (`_traits_to_recheck`) where consent may have changed.
        Each withdrawn one falls back as routing would have had the person
        opted out before it was planned (`_fall_back`).
        """
        if not traits:
            return claimed
        revoked = [d for d in claimed if d.profile_id in traits and consent_revoked(traits[d.profile_id], d.channel)]
        if not revoked:
            return claimed
        withdrawn = self._withdraw(connection, revoked, now, withdrawals.WITHDRAWN_CONSENT_REVOKED)
        log.info("deliveries withdrawn: consent revoked since they were planned", deliveries=len(withdrawn))
        return [delivery for delivery in claimed if delivery.delivery_id not in withdrawn]

    def _to_devices_still_theirs(self, connection: Connection, claimed: list[Delivery], now: datetime) -> list[Delivery]:
        """The claimed deliveries, each multicast that lost recipients since it was planned going to the others
        only; one that lost them all fails unsent and falls back.

        Routing wrote a push's `recipients` (every device of the person) when
        it planned it. A token FCM calls dead, one a newer device evicted or
        one another person signed in on leaves the person, not the list: a
        retry sent to it again, and when every device then answered
        SENDER_ID_MISMATCH, the push was parked as a wrong service-account key.
        Only retries and multicasts held a while are read again
        (`withdrawals.lost_recipients`): a first attempt soon after planning
        goes where routing found the person's devices, at no cost.
        """
        rechecked = [delivery for delivery in claimed if _may_have_lost_devices(delivery, now)]
        lost = withdrawals.lost_recipients(connection, rechecked) if rechecked else {}
        if not lost:
            return claimed
        going, unreachable = [], []
        for delivery in claimed:
            if delivery.delivery_id not in lost:
                going.append(delivery)
            elif narrowed := withdrawals.without_recipients(delivery.target, delivery.content, lost[delivery.delivery_id]):
                withdrawals.readdress(connection, delivery.delivery_id, narrowed, now)
                going.append(replace(delivery, **narrowed))
            else:
                unreachable.append(delivery)
        withdrawn = self._withdraw(connection, unreachable, now, withdrawals.WITHDRAWN_DEVICES_GONE)
        log.info("multicasts readdressed: devices left their person since", deliveries=len(lost), withdrawn=len(withdrawn))
        return going

    def _withdraw(self, connection: Connection, claimed: list[Delivery], now: datetime, reason: str) -> set[str]:
        """Fail these claimed deliveries unsent with `reason` and plan the fallbacks of those withdrawn (one another
        node settled meanwhile is not); the ids withdrawn."""
        withdrawn = set(withdrawals.withdraw(connection, sorted(delivery.delivery_id for delivery in claimed), now, reason))
        self._fall_back(connection, [delivery for delivery in claimed if delivery.delivery_id in withdrawn], now)
        return withdrawn

    def _fall_back(self, connection: Connection, withdrawn: list[Delivery], now: datetime) -> None:
        """Plan the fallbacks of deliveries withdrawn at their claim (a push after a push opt-out, or with none of
        its devices left: the email the rule names), and leave a decision that reached nobody `unreached`, in the
        claim's transaction, so a crash loses neither. Planning takes the profiles lock, after the claim locked its
        rows: only for a claim that withdrew one, rare (`hub.consent.lock_before_deliveries` says why the order
        matters)."""
        if self.fall_back is None or not withdrawn:
            return
        lock_profiles(connection)
        for delivery in withdrawn:
            self.fall_back(connection, delivery, "withdrawn unsent at its claim", now)


def _may_have_lost_devices(delivery: Delivery, now: datetime) -> bool:
    """Whether a claimed delivery is a multicast whose recipients may have left its person since routing listed
    them: a retry or replay (an attempt's refusal detaches dead tokens), or one held past
    `CONSENT_RECHECK_AFTER` (a delay, quiet hours, an outage)."""
    return "recipients" in delivery.content and (delivery.attempts > 0 or delivery.created_at < now - CONSENT_RECHECK_AFTER)


def _release_time(quiet_hours: QuietHours, delivery: Delivery, traits: dict[str, Any], now: datetime) -> datetime | None:
    """When `delivery`, due `now`, may go if its person's quiet hours hold it; None: they do not (an urgent
    message, or outside them). `traits`: its person's as they are now, or none if unchanged since planning,
    which leaves the zone routing stamped on it."""
    stamped = delivery.content.get(QUIET_ZONE)
    return quiet_hours.release_time(now, quiet_hours.zone_at_claim(traits, stamped)) if stamped else None


def _traits_to_recheck(connection: Connection, claimed: list[Delivery], now: datetime) -> dict[str, dict[str, Any]]:
    """The live traits of the people whose consent or zone may have changed since their deliveries were planned:
    those planned over `CONSENT_RECHECK_AFTER` ago, and those whose profile changed since. The others' traits are
    as routing read them, so the consent it checked and the zone it stamped (`QUIET_ZONE`) stand.

    A claim of fresh deliveries, the common case under load, takes routing's
    word for them, but on PostgreSQL another node, or a delivery worker in
    another process, may claim an SMS while the pipeline goes on and takes in
    the person's STOP or an identify with `sms_opt_out: true` a second later.
    Either writes the profile, so one read by primary key finds the profiles
    changed since, with their traits; only messages held a while, and people
    merged away since, cost two more statements.
    """
    held = {delivery.profile_id for delivery in claimed if delivery.created_at < now - CONSENT_RECHECK_AFTER}
    fresh = [delivery for delivery in claimed if delivery.profile_id not in held]
    since = min((delivery.created_at for delivery in fresh), default=now) - REVOCATION_STAMP_LEEWAY
    changed = changed_since(connection, {delivery.profile_id for delivery in fresh}, since)
    merged_away = {profile_id for profile_id, traits in changed.items() if traits is None}
    live = {profile_id: traits for profile_id, traits in changed.items() if traits is not None}
    return live | live_traits(connection, held | merged_away)
