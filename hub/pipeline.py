"""The one place that wires the stages: inbox row -> touchpoint -> profile -> decisions -> outbox.

A claimed batch is processed in one write transaction (one fsync for the
batch), each row inside its own savepoint: a row that fails rolls back alone
and is quarantined or retried, its neighbours commit. Everything a row
produces (touchpoint, identity changes, decisions, planned deliveries, the
inbox status) commits together, so a crash anywhere leaves either all of it
or none of it, and reprocessing is idempotent thanks to deterministic ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from collections.abc import Mapping as MappingType
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection

from hub import identity, metrics, triggers
from hub.clock import utcnow
from hub.errors import EventDropped, ForgottenIdentityError, ItemProblem, MappingError
from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.mapping import Mapping
from hub.model import RawEvent
from hub.normalize import normalize
from hub.respond import Responder, StoreHistory
from hub.rulebook import RuleBook
from hub.store import Store, identity_repair, inbox, quarantine, timers, touchpoints
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.inbox import InboxRow
from hub.store.sql import lock_profiles

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    batch_size: int
    lease: timedelta
    max_attempts: int
    default_phone_region: str
    identity: IdentityConfig = field(default_factory=lambda: DEFAULT_IDENTITY)


class Pipeline:
    def __init__(
        self,
        store: Store,
        mappings: MappingType[str, Mapping],
        rulebook: RuleBook,
        responder: Responder,
        config: PipelineConfig,
        deliveries_planned: threading.Event,
        timers_armed: Callable[[datetime], None],
    ) -> None:
        """`deliveries_planned` is set, and `timers_armed` called with the earliest due time armed, after a batch commits."""
        self.store = store
        self.mappings = mappings
        self.rulebook = rulebook
        self.responder = responder
        self.config = config
        self._deliveries_planned = deliveries_planned
        self._timers_armed = timers_armed

    def run_once(self, now: datetime | None = None) -> int:
        """Claim and process one batch; returns the number of inbox rows handled.

        `now` is the wall clock unless a simulation (`touchhub triggers test`) runs its own.
        """
        now = now or utcnow()
        planned = 0
        armed: list[datetime] = []  # due times of the timers the batch arms
        with self.store.write() as connection:
            rows = inbox.claim(connection, self.config.batch_size, now, self.config.lease)
            if rows:
                lock_profiles(connection)
            done = []
            for row in rows:
                outcome = self._process_isolated(connection, row, now, armed)
                if outcome is not None:
                    done.append(row.id)
                    planned += outcome
            inbox.mark_done(connection, done, now)
        if planned:
            self._deliveries_planned.set()
        if armed:
            self._timers_armed(min(armed))
        return len(rows)

    def _process_isolated(self, connection: Connection, row: InboxRow, now: datetime, armed: list[datetime]) -> int | None:
        """Deliveries planned for the row, or None when it failed (quarantined or postponed)."""
        try:
            with connection.begin_nested():
                planned = self._process(connection, row, now, armed)
        except MappingError as exc:
            self._give_up(connection, row, now, "mapping", str(exc))
            return None
        except ForgottenIdentityError:
            # Not quarantined: that would keep the very data the person asked to erase.
            identity_repair.forget_inbox_payloads(connection, [row.id])
            log.info("event of a forgotten person dropped", inbox_id=row.id)
            return 0
        except Exception as exc:
            log.exception("pipeline failed on inbox row", inbox_id=row.id, attempt=row.attempts + 1)
            if row.attempts + 1 >= self.config.max_attempts:
                self._give_up(connection, row, now, "pipeline", f"{type(exc).__name__}: {exc}")
            else:
                retry_at = now + timedelta(seconds=2 ** (row.attempts + 1))
                inbox.postpone(connection, row.id, retry_at, f"{type(exc).__name__}: {exc}")
            return None
        metrics.TOUCHPOINTS_PROCESSED.inc()
        return planned

    def _process(self, connection: Connection, row: InboxRow, now: datetime, armed: list[datetime]) -> int:
        """Deliveries planned for the row; the due times of the timers it arms are added to `armed`."""
        mapping = self.mappings.get(row.source_id)
        if mapping is None:
            raise MappingError(f"source: no mapping is configured for source {row.source_id!r}")
        raw = RawEvent(row.source_id, row.message_id, row.payload)
        try:
            touchpoint = normalize(raw, mapping, row.received_at, self.config.default_phone_region, self.config.identity)
        except EventDropped as exc:
            log.info("event dropped", inbox_id=row.id, reason=str(exc))
            return 0
        graph = SqlIdentityGraph(connection)
        resolution = identity.resolve(touchpoint, graph, now, self.config.identity)
        graph.update_traits(resolution.profile_id, touchpoint.traits, touchpoint.occurred_at)
        planned = 0
        if touchpoints.insert(connection, touchpoint, resolution.profile_id, row.id):
            rules = self.rulebook.for_event(touchpoint.event)
            traits = graph.traits(resolution.profile_id)
            changes = triggers.timer_changes(touchpoint, rules, traits)
            timers.follow_event(
                connection, resolution.profile_id, touchpoint.touchpoint_id, touchpoint.occurred_at, now,
                cancel=changes.cancel, arm=changes.arm,
            )
            armed.extend(due_at for _, due_at in changes.arm)
            history = StoreHistory(connection)
            document = touchpoint.as_document()
            for decision in triggers.evaluate(touchpoint, resolution.profile_id, rules, history, traits):
                routed = self.responder.route(connection, decision, document, now)
                planned += self.responder.record(connection, [routed], now)  # before the next is routed: daily cap
        return planned

    def _give_up(self, connection: Connection, row: InboxRow, now: datetime, stage: str, reason: str) -> None:
        field, _, detail = reason.partition(": ")
        quarantine.add(
            connection,
            stage=stage,
            source_id=row.source_id,
            reason=reason,
            problems=[ItemProblem(None, field if detail else "(event)", detail or reason)],
            raw_body=_json_bytes(row.payload),
            content_type="application/json",
            received_at=now,
            inbox_id=row.id,
        )
        inbox.mark_failed(connection, row.id, now, reason)
        log.warning("event quarantined", inbox_id=row.id, stage=stage, reason=reason)


def _json_bytes(payload: object) -> bytes:
    return json.dumps(payload, default=str).encode("utf-8")
