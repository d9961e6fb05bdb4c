"""Canonical types that flow between the stages of DESIGN.md's pipeline.

They are plain frozen dataclasses: cheap to build on the hot path, hashable
where it matters (identifiers are dictionary keys during resolution), and with
no knowledge of storage or HTTP.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple

# Namespace of every deterministic id the hub derives; changing it would change
# every touchpoint, decision and delivery id, so it is fixed forever.
HUB_NAMESPACE = uuid.UUID("6f1c1f7e-5b7a-4a8e-9a57-0c3d2f4b9e10")


_NAMESPACE_HASH = hashlib.sha1(HUB_NAMESPACE.bytes, usedforsecurity=False)


def derived_id(*parts: str) -> str:
    """A UUIDv5 over the parts: the same inputs give the same id on any node, on any replay.

    `uuid.uuid5`'s own steps (RFC 9562: SHA-1 of namespace and name, version
    and variant bits, hyphenated hex) without its UUID object, which cost two
    thirds of its 3.9 microseconds; the pipeline derives several ids per event.
    tests/test_model.py holds it to `uuid.uuid5`.
    """
    return _hyphenated(_name_hash(parts), version=5)


def ordered_id(at: datetime, *parts: str) -> str:
    """A deterministic id that sorts by `at`: a UUIDv8 laid out as UUIDv7 (RFC 9562), the first 48 bits
    `at` in Unix milliseconds, the rest `derived_id`'s SHA-1 of the parts.

    For rows written in about time order into tables that only grow (decisions
    and their deliveries): a random key sends each insert to a random leaf of
    the primary key's index, so a commit of 100 rows rewrites about 100 pages;
    a key that grows with time appends to the same few. The timer engine
    alone fired 17-25% more timers per second at 1M pending (bench/README).
    `at` must be as deterministic as the parts (an event or due time, never
    the clock), so a replay derives the same id.
    """
    name_hash = _name_hash(parts)
    name_hash[:6] = ((at - _UNIX_EPOCH) // _MILLISECOND % _TIME_SPAN).to_bytes(6, "big")
    return _hyphenated(name_hash, version=8)


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)
_TIME_SPAN = 1 << 48  # milliseconds in UUIDv7's time field: until the year 10889


def _name_hash(parts: tuple[str, ...]) -> bytearray:
    digest = _NAMESPACE_HASH.copy()
    digest.update("\x1f".join(parts).encode())
    return bytearray(digest.digest()[:16])


def _hyphenated(raw: bytearray, version: int) -> str:
    """`raw` as a UUID's text, its version and variant bits set in place (the caller's hash is not kept)."""
    raw[6] = raw[6] & 0x0F | version << 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC variant
    hex_ = raw.hex()
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One event as a source accepted it, before any mapping.

    `message_id` is the sender's id when it has one, otherwise a canonical hash
    of the payload, so duplicates from retries collapse in the inbox.
    """

    source_id: str
    message_id: str
    payload: dict[str, Any]

    @property
    def dedup_key(self) -> str:
        return f"{self.source_id}:{self.message_id}"


class Identifier(NamedTuple):
    """A typed, normalized identifier such as ('email', 'jane@example.com').

    A named tuple rather than a dataclass: identity resolution hashes millions
    of them, and a tuple's hash runs in C.
    """

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class Touchpoint:
    """The canonical form of one customer interaction."""

    touchpoint_id: str
    source_id: str
    message_id: str
    kind: str  # the sender's message type: track, identify, page, screen, alias, group
    event: str
    stage: str
    moment: str
    occurred_at: datetime
    received_at: datetime
    identifiers: tuple[Identifier, ...]
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    mapping_version: str = ""

    def as_document(self) -> dict[str, Any]:
        """The touchpoint as a JSON-like document, the shape rule predicates and templates see."""
        return {
            "touchpoint_id": self.touchpoint_id,
            "source_id": self.source_id,
            "kind": self.kind,
            "event": self.event,
            "stage": self.stage,
            "moment": self.moment,
            "occurred_at": self.occurred_at.isoformat(),
            "identifiers": {ident.type: ident.value for ident in self.identifiers},
            "properties": self.properties,
            "traits": self.traits,
            "context": self.context,
        }


@dataclass(frozen=True, slots=True)
class RefusedLink:
    """An identifier a touchpoint carried that resolution did not link, and the rule that refused it."""

    identifier: Identifier
    profile_id: str | None  # the profile the identifier already belongs to; None when it was new
    rule: str


@dataclass(frozen=True, slots=True)
class MovedIdentifier:
    """A device's identifier a touchpoint moved to its profile from another one (`follows_last_login`)."""

    identifier: Identifier
    from_profile_id: str
    rule: str


@dataclass(frozen=True, slots=True)
class Resolution:
    """Which profile a touchpoint belongs to, and what resolving it changed."""

    profile_id: str
    created: bool = False
    merged_profile_ids: tuple[str, ...] = ()
    refused: tuple[RefusedLink, ...] = ()
    erased: tuple[Identifier, ...] = ()  # identifiers it carried of a person forgotten since: not to be stored
    moved: tuple[MovedIdentifier, ...] = ()  # a shared device's push token, now with whoever signed in on it


@dataclass(frozen=True, slots=True)
class Action:
    """One response of a rule: a message on a channel, rendered from a template."""

    channel: str
    template: str
    params: dict[str, Any] = field(default_factory=dict)  # passed to the destination as they are
    delay: timedelta | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # CRM fields to set; string values are templates
    endpoint: str | None = None  # outbound webhook target
    fallback: tuple[tuple[str, str], ...] = ()  # (channel, template) tried in order when this one cannot reach the person


@dataclass(frozen=True, slots=True)
class Decision:
    """A rule fired for a profile because of a touchpoint."""

    decision_id: str
    rule_id: str
    rule_version: str
    profile_id: str
    touchpoint_id: str
    decided_at: datetime
    actions: tuple[Action, ...]
    variables: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    # fired | capped (the rule's frequency cap was reached: nothing is sent) | unreached (fired, but no action
    # could reach the person: no address, consent, the daily cap; it spends none of the rule's cap)
    status: str = "fired"
    urgency: str = "immediate"  # immediate | delayed (waits out quiet hours; an immediate rule's `delay`ed action does too)


# How the reasons of waits ended by an event begin; the event's touchpoint id follows. Named once, as the
# pipeline writes them in SQL (`timer_arming.follow_event`) and the timer worker here, and both must read alike.
FOLLOWED_UP_BY = "the follow-up came: touchpoint "
RESTARTED_BY = "a later event restarted the wait: touchpoint "


@dataclass(frozen=True, slots=True)
class WaitEnded:
    """How an absence timer's wait ended without a decision, and why in a few words.

    The reason is kept on the timer row and logged, so ops asking why
    someone never got a nudge read "rule disabled (enabled: false)" or "the
    follow-up came" instead of replaying the rules. `failed`: firing it
    raised every time (the reason is the last error).
    """

    status: Literal["cancelled", "superseded", "lapsed", "failed"]
    reason: str

    @classmethod
    def followed_up(cls, touchpoint_id: str) -> WaitEnded:
        """Seen by the pipeline as the follow-up comes in, or by the timer worker when the timer comes due."""
        return cls("cancelled", FOLLOWED_UP_BY + touchpoint_id)

    @classmethod
    def restarted(cls, touchpoint_id: str) -> WaitEnded:
        """Seen by the pipeline as the later event comes in, or by the timer worker when the timer comes due."""
        return cls("superseded", RESTARTED_BY + touchpoint_id)


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """A message routing decided to send; becomes one outbox row."""

    delivery_id: str  # also the idempotency key: decision + channel + target
    decision_id: str
    profile_id: str
    channel: str
    destination_id: str
    target: str
    content: dict[str, Any]
    not_before: datetime | None = None  # a delay or quiet hours hold it until then


# Keys routing adds to a message's content for the delivery engine (never sent to a provider):
QUIET_ZONE = "quiet_zone"  # the zone whose quiet hours hold it, for non-urgent messages (retries and replays too)
SEND_BY = "send_by"  # past this (ISO time), a message to a person is too old to send
# What planning an action's fallbacks needs once every address its delivery went to turned out dead, and its
# content does not hold already (`Responder.fall_back`); never sent to a provider:
# {"decision_id", "place", "then": [[channel, template], ...], "vars", "quiet"} ("quiet": whether quiet hours hold the action's messages).
FALLBACK = "fallback"
ENGINE_KEYS = (QUIET_ZONE, SEND_BY, FALLBACK)  # all of them: a destination that sends content whole leaves them out
# The content key of a CRM erasure (`hub.store.erasures`): {"external_id": "<profile id>"}, with "sobject" only when
# the update named one; a destination that erases records deletes the one it names instead of writing.
ERASURE = "erase"


@dataclass(frozen=True, slots=True)
class Delivery:
    """An outbox row a delivery worker has claimed and hands to its destination."""

    delivery_id: str
    destination_id: str
    channel: str
    target: str
    content: dict[str, Any]
    attempts: int  # attempts made before this one
    created_at: datetime
    profile_id: str = ""
    retry_from_attempt: int = 0  # attempts made before the last replay; the retry policy counts from here
    retry_from: datetime | None = None  # when the last replay happened; the retry policy's age starts here
    first_due_at: datetime | None = None  # when it was first due to go (None: planned before this was kept)
    # Ids of profiles merged into this one since, that earlier deliveries of its destination went to: where a
    # record the provider keeps per profile (a CRM Lead) may still be keyed (`hub.store.merged_targets`).
    previous_targets: tuple[str, ...] = ()

    @property
    def retry_budget_used(self) -> int:
        return self.attempts - self.retry_from_attempt

    def retry_age(self, now: datetime) -> timedelta:
        """How long the retry policy has been trying: since the last replay, else since it was first due.

        Not since it was planned: a `delay: 2d` follow-up, or a message held
        overnight by quiet hours, would start out of budget and go to the
        dead-letter queue on its first transient error.
        """
        return now - (self.retry_from or self.first_due_at or self.created_at)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a destination reports after the provider accepted a message."""

    status: str  # provider-side status such as 'queued' or 'sent'
    provider_message_id: str | None
    response_summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """A provider's later word on a message it accepted (a Twilio status callback).

    `final_status` is the delivery status it settles on (`delivered` or
    `failed`), or None while the message is still on its way (queued, sent).
    """

    provider_message_id: str
    provider_status: str
    final_status: str | None = None
    error: str | None = None
    revokes_consent: bool = False
