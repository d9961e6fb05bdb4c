"""Table definitions shared by every engine; migrations create them, queries use them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine.

    SQLite has no time zone type and hands back naive values; the hub compares
    times across stages, so everything is stored and returned as aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else _utc_to_store(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else _utc_from_store(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], str | None] | None:
        """On SQLite, one function in place of `process_bind_param` and SQLAlchemy's string formatting.

        The pipeline converts a dozen datetimes per event; SQLAlchemy's SQLite
        DATETIME builds its text with a %-format of a dict (and the decorator
        adds a call around it), 2.8 us each, where `isoformat` is C: 1.1 us.
        The text is SQLAlchemy's own, byte for byte (``2026-12-02 09:13:00.000000``,
        microseconds always written), so stored rows and their ordering are unchanged.
        """
        return _sqlite_text if dialect.name == "sqlite" else super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], datetime | None] | None:
        """On SQLite, `datetime.fromisoformat` and the UTC stamp in one function (see `bind_processor`)."""
        return _sqlite_datetime if dialect.name == "sqlite" else super().result_processor(dialect, coltype)


def _utc_to_store(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use timezone-aware UTC")
    return value.astimezone(timezone.utc)


def _utc_from_store(value: datetime) -> datetime:
    """Naive values (SQLite's) are UTC; aware ones are converted to it."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _sqlite_text(value: datetime | None) -> str | None:
    """An aware datetime as SQLAlchemy's SQLite DATETIME writes it, in UTC: the isoformat's first 26 characters."""
    if value is None:
        return None
    return _utc_text(value if value.tzinfo is timezone.utc else _utc_to_store(value))


@lru_cache(maxsize=4096)
def _utc_text(value: datetime) -> str:
    """`_sqlite_text` of a UTC datetime, cached: a pipeline batch binds about 14 datetimes per event, and 70% of
    them are ones it bound already (the batch's clock, an event's time in each statement about it), where a
    lookup costs a twentieth of the conversion. Only UTC values are keys: two UTC datetimes that compare
    equal are one instant, where in a zone with summer time the two 01:30s of the night clocks go back do too.
    """
    return value.isoformat(" ", "microseconds")[:26]


def _sqlite_datetime(value: str | None) -> datetime | None:
    """SQLite's text back as an aware UTC datetime (text written with an offset is converted to UTC)."""
    return None if value is None else _utc_from_store(datetime.fromisoformat(value))


metadata = MetaData()

inbox = Table(
    "inbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedup_key", String(300), nullable=False, unique=True),
    Column("source_id", String(100), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("status", String(20), nullable=False),  # pending | done | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("available_at", UTCDateTime, nullable=False),
    Column("processed_at", UTCDateTime),
    Column("error", Text),
    Index("ix_inbox_status_available", "status", "available_at"),
    Index("ix_inbox_status_received", "status", "received_at"),  # the timer worker's `inbox.oldest_waiting`
    Index("ix_inbox_source_received", "source_id", "received_at"),  # replay --source --since
)

touchpoints = Table(
    "touchpoints",
    metadata,
    Column("touchpoint_id", String(36), primary_key=True),
    Column("inbox_id", Integer, nullable=False),
    Column("source_id", String(100), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("event", String(200), nullable=False),
    Column("stage", String(40), nullable=False),
    Column("moment", String(80), nullable=False),
    Column("profile_id", String(26), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("identifiers", JSON, nullable=False),
    Column("properties", JSON, nullable=False),
    Column("traits", JSON, nullable=False),
    Column("context", JSON, nullable=False),
    Column("mapping_version", String(80), nullable=False),
    Index("ix_touchpoints_profile_event_time", "profile_id", "event", "occurred_at"),
    Index("ix_touchpoints_received", "received_at"),
)

profiles = Table(
    "profiles",
    metadata,
    Column("profile_id", String(26), primary_key=True),  # ULID: sorts by creation time
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("merged_into", String(26), index=True),  # aliases of a survivor are found by this on every merge
    Column("traits", JSON, nullable=False),
    Column("trait_times", JSON, nullable=False),  # trait (and `consent[part]`) -> ISO time of the event that set it
)

identifiers = Table(
    "identifiers",
    metadata,
    Column("type", String(40), primary_key=True),
    Column("value", String(320), primary_key=True),
    Column("profile_id", String(26), nullable=False, index=True),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("touchpoint_id", String(36), nullable=False),  # the touchpoint that brought it in
    Column("origin_profile_id", String(26)),  # the profile it first joined; what an unmerge splits by
    # An alias's previousId no one knew yet, stored as an anonymous_id: a userId of its value joins its profile.
    Column("from_alias", Boolean, nullable=False, server_default=false()),
)

merges = Table(
    "merges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("survivor_id", String(26), nullable=False, index=True),
    Column("merged_id", String(26), nullable=False, index=True),
    Column("touchpoint_id", String(36), nullable=False),
    Column("linking_identifiers", JSON, nullable=False),
    Column("merged_at", UTCDateTime, nullable=False),
)

identity_events = Table(
    "identity_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),  # refused | unmerge | forget | detached
    Column("profile_id", String(26), nullable=False, index=True),
    Column("other_profile_id", String(26), index=True),
    Column("touchpoint_id", String(36)),
    Column("identifiers", JSON, nullable=False),
    Column("rule", String(200), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    # A refused link is one row however often it recurs (a kiosk's device on every event of its second user):
    # keyed by a digest of the profiles, identifier and rule, counted, with when it was last refused.
    Column("refusal_key", String(64), unique=True, index=True),
    Column("times", Integer, nullable=False, server_default="1"),
    Column("last_at", UTCDateTime),
)

kept_apart = Table(
    "kept_apart",  # pairs of live profiles an unmerge separated; never merged again
    metadata,
    Column("profile_a", String(26), primary_key=True),
    Column("profile_b", String(26), primary_key=True),
    Column("since", UTCDateTime, nullable=False),
)

forgotten_identifiers = Table(
    "forgotten_identifiers",
    metadata,
    # sha256 of type and value, or its HMAC under HUB_FORGET_KEY (`hub.store.forget_digest`); never the value itself
    Column("digest", String(64), primary_key=True),
    Column("forgotten_at", UTCDateTime, nullable=False),
    Column("keyed", Boolean, nullable=False, server_default=false()),  # false: plain sha256, until a keyed hub starts
)

consent_changes = Table(
    "consent_changes",  # what a person told a provider, kept so an unmerge can give it to the side it came from
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("profile_id", String(26), nullable=False, index=True),  # moves with merges, as decisions do
    Column("channel", String(40), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("identifier_digest", String(64)),  # sha256 of the identifier it came through; none for old links
    Column("delivery_id", String(36)),  # the message whose unsubscribe link made it; none for any other word
    Column("origin_profile_id", String(26)),  # the profile it was asked of, as named; a merge does not move it
    Column("reason", String(100), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

absence_waits = Table(
    "absence_waits",  # each absence rule's wait as the timer workers last saw it, to find a shortening across restarts
    metadata,
    Column("rule_id", String(100), primary_key=True),
    Column("wait_ms", BigInteger, nullable=False),
)

graph_epoch = Table(
    "graph_epoch",  # one row; triggers bump it on every write to identity state (migration i7_graph_epoch)
    metadata,
    Column("value", BigInteger, nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", String(36), primary_key=True),
    Column("rule_id", String(100), nullable=False),
    Column("rule_version", String(80), nullable=False),
    Column("profile_id", String(26), nullable=False),
    Column("touchpoint_id", String(36), nullable=False),
    Column("decided_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("actions", JSON, nullable=False),  # each action's fate: planned or skipped and why
    Column("status", String(20), nullable=False, server_default="fired"),  # fired | capped | unreached
    Index("ix_decisions_profile_rule_time", "profile_id", "rule_id", "decided_at"),
    Index("ix_decisions_created", "created_at", "decided_at", "decision_id"),  # GET /api/decisions, page by page
)

timers = Table(
    "timers",
    metadata,
    Column("timer_id", String(36), primary_key=True),  # derived from rule + the touchpoint that armed it
    Column("rule_id", String(100), nullable=False),
    Column("profile_id", String(26), nullable=False),
    Column("touchpoint_id", String(36), nullable=False),  # the `after` event the absence is measured from
    Column("anchor_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("status", String(20), nullable=False),  # pending | fired | cancelled | superseded | lapsed | failed
    Column("claimed_until", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("settled_at", UTCDateTime),
    Column("decision_id", String(36)),
    Column("attempts", Integer, nullable=False, server_default="0"),  # firings that raised; at the limit it is `failed`
    Column("reason", Text),  # why it ended without firing (or why its last attempt failed): `model.WaitEnded`
    Column("rule_version", String(120)),  # of the rule that armed it; an edit since is judged when it comes due
    Index("ix_timers_status_due", "status", "due_at"),
    Index("ix_timers_profile_rule_status_due", "profile_id", "rule_id", "status", "due_at"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("delivery_id", String(36), primary_key=True),  # idempotency key
    Column("decision_id", String(36), nullable=False, index=True),
    Column("profile_id", String(26), nullable=False, index=True),
    Column("channel", String(40), nullable=False),
    Column("destination_id", String(100), nullable=False),
    Column("target", String(320), nullable=False),
    Column("content", JSON, nullable=False),
    Column("status", String(20), nullable=False),  # pending | retrying | sent | delivered | failed | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_until", UTCDateTime),
    Column("provider_message_id", String(100), index=True),  # provider callbacks find the delivery by it
    Column("last_error", Text),
    Column("provider_status", String(20)),  # latest status a provider callback reported (Twilio MessageStatus)
    # A replay gives the delivery a fresh retry budget: the policy counts
    # attempts and age from here, while attempt numbers keep growing.
    Column("retry_from_attempt", Integer, nullable=False, default=0, server_default="0"),
    Column("retry_from", UTCDateTime),
    Column("first_due_at", UTCDateTime),  # the end of its delay or quiet-hours hold: the retry policy's age runs from here
    Column("sent_at", UTCDateTime),  # when a provider last took it: the daily cap counts it then, not when first due
    Index("ix_deliveries_due", "status", "next_attempt_at"),
    Index("ix_deliveries_created", "created_at", "delivery_id"),  # GET /api/deliveries, page by page
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(36), nullable=False, index=True),
    Column("attempt_no", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("outcome", String(20), nullable=False),  # sent | retryable | permanent | auth
    Column("provider_message_id", String(100)),
    Column("error_class", String(100)),
    Column("error_message", Text),
    Column("request_summary", JSON, nullable=False),
    Column("response_summary", JSON, nullable=False),
)

held_reports = Table(
    "held_reports",  # provider status reports that came before their send was recorded (`hub.store.held_reports`)
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("destination_id", String(100), nullable=False),
    Column("provider_message_id", String(100), nullable=False),
    Column("provider_status", String(20), nullable=False),
    Column("final_status", String(20)),
    Column("error", Text),
    Column("revokes_consent", Boolean, nullable=False),
    Column("received_at", UTCDateTime, nullable=False, index=True),
    Index("ix_held_reports_message", "destination_id", "provider_message_id"),
)

consent_messages = Table(
    "consent_messages",  # the provider messages whose consent word was applied (`hub.store.consent_changes.first_said`)
    metadata,
    Column("destination_id", String(100), primary_key=True),
    Column("message_id", String(100), primary_key=True),
    Column("received_at", UTCDateTime, nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source_id", String(100)),
    Column("received_at", UTCDateTime, nullable=False),
    Column("stage", String(20), nullable=False),  # ingest | item | mapping | pipeline
    Column("reason", Text, nullable=False),
    Column("problems", JSON, nullable=False),
    Column("content_type", String(200)),
    Column("raw_body", LargeBinary, nullable=False),
    Column("inbox_id", Integer, index=True),  # set for events the pipeline gave up on: replayable
    Column("replayed_at", UTCDateTime),
)

api_keys = Table(
    "api_keys",  # bearer keys for the admin API (`hub.store.api_keys`): only a digest of each is kept
    metadata,
    Column("key_id", String(26), primary_key=True),  # a ULID, public: `touchhub keys list` shows it
    Column("name", String(100), nullable=False),
    Column("secret_digest", LargeBinary, nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
)
