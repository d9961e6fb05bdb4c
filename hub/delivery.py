"""Delivery workers: claim due outbox rows, call destinations, log every attempt.

A claimed batch is sent from one asyncio event loop, at most `concurrency`
sends in flight (an asyncio.Semaphore): destinations with an async client
(webhooks, Twilio's SMS) await their I/O, and those built on blocking vendor
SDKs run `send` in the loop's worker threads (as many as sends may be in
flight).
One loop and one async client cost far less CPU per send than a thread and
a blocking client each (bench/README.md). The outcomes of a batch are
written back in one transaction, which also claims the next batch: the look
for more work after a batch costs no transaction of its own, and a batch
follows a batch without one.

A run waits for the sends in flight `SEND_WAIT_SECONDS` at most, and less
when deliveries are planned meanwhile (`wake`): it then claims them at
once instead of after the wait. Sends still running then (a slow
receiver, one that hangs until its timeout) carry over: they go on beside
the next batches, and the first run they have finished by records them.
Waiting for a batch's slowest send instead held back every delivery
planned meanwhile, SMS included, for as long as that receiver took (up to
its timeout: 15 s for a webhook). A run waits for the sends it carried over too,
not only for its own, so a batch that just missed the wait rejoins the
next: waiting for its own sends alone, a loaded engine split its batches
and sent up to 15% fewer per second (bench/README.md).

Every record also renews the leases of the sends still in flight once half
spent, and a claim never takes a delivery the engine is still sending: a
send that outlived its lease (an SMTP relay slow on each command) was
claimed again, by this engine or another, and sent twice. A renewal, a
record and a put-back move a row on only while it still has the lease this
engine set: one that stalled past its lease (a paused VM) finds another
node's, whose send is in flight, and leaves the row's status, lease and due
time to it (its attempt is still logged and counted, numbered by the row).
A crash between a send and its record means the row's lease expires and it
is sent again: delivery is at-least-once, and idempotency keys let providers
that accept them collapse the duplicate. A batch whose record fails is recorded again
one outcome at a time (`hub.delivery_record`), and committed before the next
claim, so one row the database refuses costs its own delivery only, not the
whole batch sent again after every lease.

Each destination has its own policy (`hub.delivery_policy`; each delivery's
attempt is judged by it in `hub.delivery_attempts`): a retry budget,
a circuit breaker, an optional rate limit and an optional limit of sends in
flight. The breaker and the limits only ever make a delivery wait (it goes
back to the outbox with a later due time and no attempt logged, or a claim
passes it over); only the retry policy dead-letters. A claim takes any due
delivery; one to a destination not configured in this process (in a rolling
deploy, not yet) is put back the same way for `UNCONFIGURED_PAUSE_SECONDS`,
for a process with its settings to take, until its destination's max age
dead-letters it (`config.unknown_destination`). A claim that raises (a row
the hub cannot read or check, written by hand or by an older version) is
rolled back with its transaction, and the next claim takes the due rows one
by one, each in a savepoint: one that raises again is dead-lettered
(`hub.internal`, with the error), replayable once its row is mended, and the
others go (`hub.store.savepoints.ClaimsAfterFailure`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection

from connectors.base import Destination
from hub.clock import utcnow
from hub.claim_checks import ClaimChecks
from hub.delivery_attempts import SEND_WAIT_SECONDS, DeliveryAttempts
from hub.delivery_policy import PolicyBook
from hub.delivery_record import AttemptRecorder, Outcome
from hub.store.withdrawals import FallBack
from hub.model import Delivery, Identifier
from hub.quiet_hours import QuietHours
from hub.store import Store, merged_targets, outbox, sends_in_flight
from hub.store.savepoints import ClaimsAfterFailure, each_or_set_aside, set_aside_reason

log = structlog.get_logger(__name__)


class DeliveryEngine:
    def __init__(
        self,
        store: Store,
        destinations: Mapping[str, Destination],
        policies: PolicyBook,
        *,
        batch_size: int,
        lease: timedelta,
        concurrency: int,
        quiet_hours: QuietHours | None = None,
        recipient: Callable[[str, str], Identifier | None] = lambda channel, target: None,
        fall_back: FallBack | None = None,
    ) -> None:
        """`quiet_hours`: the window routing holds non-urgent messages in; retries and replays are held in it too.
        `recipient`: the identifier a delivery's channel and target name (`Router.recipient`), which a
        provider's refusal of it revokes consent through. `fall_back`: plans a failed delivery's fallback when
        its addresses turned out dead or its consent was refused (`Responder.fall_back`), and a delivery's
        withdrawn at its claim because its person revoked consent (`ClaimChecks`)."""
        self.store = store
        # The lease (`claimed_until`) this engine set on each delivery it claimed and has not recorded, at its claim
        # or last renewal, once committed: its renewal and its record move the row on only while the row still has
        # it (`hub.store.outbox`). A stalled engine's late record released the lease of another that was sending.
        self._leases: dict[str, datetime] = {}
        self._recorder = AttemptRecorder(store, destinations, recipient, self._leases, fall_back)
        self._checks = ClaimChecks(quiet_hours, fall_back)
        self.recipient = recipient
        self.destinations = destinations
        self.policies = policies
        self._attempts = DeliveryAttempts(destinations, policies, recipient)
        self.batch_size = batch_size
        self.lease = lease
        # One loop for the engine's life: clients keep their connections open from batch to batch.
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send"))
        self._concurrency = concurrency
        self._in_flight = asyncio.Semaphore(concurrency)
        # What the last batch's record claimed: the next batch to send, [] when that look found nothing
        # due, None when the next call must look itself.
        self._claimed: list[Delivery] | None = None
        # Sends started and not recorded, this batch's and carried over, by delivery id: their rows are this engine's.
        self._sending: dict[str, asyncio.Task[Outcome]] = {}
        self._woken = asyncio.Event()  # set (through `wake`) when deliveries are planned during a run's wait
        self._waiting = False  # a run is waiting for its sends: a wake cuts the wait short
        self._claims = ClaimsAfterFailure("delivery")  # a delivery the hub cannot send sets aside, not stops, the rest

    def run_once(self) -> int:
        """Start a batch of due deliveries' sends, wait for every send in flight `SEND_WAIT_SECONDS` at most
        (until a `wake`), then record those finished and claim the next batch in one transaction.

        The batch is the one the previous call's record claimed, or claimed
        now (`_look`), or, after a claim that failed with sends in flight,
        none: the record after the wait claims. When that look found nothing
        and no send is in flight, this call returns 0 without looking again,
        and the next call looks: the worker naps in between until a producer
        wakes it, which producers do after they commit, so work committed
        after that look is never missed.
        Otherwise it returns how many sends it recorded or still has in
        flight, so the worker calls again at once and the sends carried over
        keep going.
        """
        due, self._claimed = self._claimed, None
        if due is None:
            due = [] if self._sending else self._look()
        if not due and not self._sending:
            return 0
        self._sending.update(
            (delivery.delivery_id, self._loop.create_task(self._attempt_bounded(delivery))) for delivery in due
        )
        self._loop.run_until_complete(self._wait_for_sends())
        finished = self._finished()
        in_flight = [delivery_id for delivery_id in self._sending if delivery_id not in finished]
        taken = self._recorder.write_back(list(finished.values()), lambda connection: self._claim(connection, in_flight))
        self._claimed, leases = taken or (None, {})  # a record that failed rolled back its claim and renewals
        self._leases.update(leases)
        for delivery_id in finished:  # only now: outcomes whose record failed are recorded by the next run
            self._done(delivery_id)
        return len(finished) + len(self._sending)

    def _look(self) -> list[Delivery]:
        """Claim a batch in a transaction of its own: only with no send in flight, nor one finished and unrecorded.

        With sends in flight the run waits for them and records them in the
        transaction that claims: a look first, which the database refused
        (locked, a lost connection), raised before the loop had run those
        sends to their end or recorded them, run after run while it refused,
        and each was sent again once its lease ran out. A batch claim that
        fails is made again at once, one delivery at a time (`_claims`).
        """
        return self._claims.run(self._claim_alone)

    def _claim_alone(self) -> list[Delivery]:
        with self.store.write() as connection:
            going, leases = self._claim(connection, [])
        self._leases.update(leases)
        return going

    def _done(self, delivery_id: str) -> None:
        """The send is no longer this engine's: recorded, or dropped."""
        del self._sending[delivery_id]
        self._leases.pop(delivery_id, None)

    def wake(self) -> None:
        """Deliveries were planned (from any thread): a run waiting for its sends stops waiting, records those
        finished and claims the new ones beside those still in flight.

        Otherwise a delivery planned just after a claim waited for the sends
        of that claim's batch (up to `SEND_WAIT_SECONDS`, more on a busy
        process) before the next claim could take it.
        """
        if self._waiting:
            self._loop.call_soon_threadsafe(self._woken.set)

    async def _wait_for_sends(self) -> None:
        """Until every send in flight has finished, `wake` is called, or `SEND_WAIT_SECONDS` have passed."""
        self._woken.clear()
        self._waiting = True
        all_sent = self._loop.create_task(asyncio.wait(self._sending.values()))
        woken = self._loop.create_task(self._woken.wait())
        try:
            await asyncio.wait((all_sent, woken), timeout=SEND_WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting = False
            all_sent.cancel()  # only the waits: the sends go on
            woken.cancel()

    def _finished(self) -> dict[str, Outcome]:
        """The outcomes of the sends that have finished, by delivery id.

        A send that raised has none (a bug: `attempt` never raises): it is
        dropped, loudly, and its delivery is claimed again when its lease
        runs out. Kept, its error was raised again by every run. A send that
        ended cancelled (a connector's `asyncio.CancelledError`) is one that
        raised: asking it for its exception raises the CancelledError.
        """
        finished: dict[str, Outcome] = {}
        for delivery_id, task in list(self._sending.items()):
            if not task.done():
                continue
            if (error := asyncio.CancelledError() if task.cancelled() else task.exception()) is None:
                finished[delivery_id] = task.result()
            else:
                log.error("a send raised out of the delivery engine", delivery_id=delivery_id, exc_info=error)
                self._done(delivery_id)
        return finished

    def _claim(self, connection: Connection, in_flight: Sequence[str]) -> tuple[list[Delivery], dict[str, datetime]]:
        """Renew the leases of the sends `in_flight` that are half spent (`_renew_leases`), then claim a batch, or
        beside them as many as there is room for, none of them: a delivery claimed beyond the room would wait
        for a slow send to give up its place. Returns the batch, and the leases renewed and taken, for the
        caller to keep once they are committed (rolled back, they are not the rows')."""
        now = utcnow()
        renewed = self._renew_leases(connection, in_flight, now)
        room = min(self.batch_size, self._concurrency - len(in_flight)) if in_flight else self.batch_size
        if room <= 0:
            return [], renewed
        skip, held = self._attempts.at_their_limit(), frozenset(in_flight)
        going = self._claims.claim(
            lambda: self._checked(connection, outbox.claim_due(connection, room, now, self.lease, skip, held), now),
            lambda: each_or_set_aside(
                connection, outbox.due_ids(connection, room, now, skip, held),
                lambda delivery_id: self._claim_one(connection, delivery_id, now),
                lambda delivery_id, error: _set_aside(connection, delivery_id, now, error), judged=True,
            ),
        )
        renewed.update((delivery.delivery_id, now + self.lease) for delivery in going)  # `claim_due`'s lease
        return going, renewed

    def _claim_one(self, connection: Connection, delivery_id: str, now: datetime) -> list[Delivery]:
        """The delivery, claimed and past its checks, or nothing (not due any more, or held back by a check)."""
        claimed = outbox.claim_one(connection, delivery_id, now, self.lease)
        return self._checked(connection, [claimed] if claimed else [], now)

    def _checked(self, connection: Connection, claimed: list[Delivery], now: datetime) -> list[Delivery]:
        """The claimed deliveries that pass their claim checks (`ClaimChecks.may_go`), each addressed to the
        profile it now belongs to (`merged_targets.follow_merges`)."""
        return merged_targets.follow_merges(
            connection, self._checks.may_go(connection, claimed, now), now, self._addressed_to_profile,
            self._keeps_records,
        )

    def _renew_leases(self, connection: Connection, in_flight: Sequence[str], now: datetime) -> dict[str, datetime]:
        """Renew the leases of the sends `in_flight` taken or renewed half a lease ago or more, where the row still
        has this engine's lease; returns the leases set, to keep once committed (a row another worker took keeps
        its own, which they do not match).

        A send that outlived its lease was claimed again and sent twice, so
        a run renews them; renewing every one on every run cost most batches
        that carry sends over an UPDATE that changed nothing, when a run
        comes every `SEND_WAIT_SECONDS` and a lease lasts seconds. Half a
        lease is left on each at any run: as much margin as a stalled run
        needs.
        """
        renewing = {delivery_id: self._leases.get(delivery_id) for delivery_id in self._half_spent(in_flight, now)}
        sends_in_flight.extend_leases(connection, renewing, now + self.lease)
        return dict.fromkeys(renewing, now + self.lease)

    def _half_spent(self, in_flight: Sequence[str], now: datetime) -> list[str]:
        """The sends `in_flight` whose lease was taken or renewed half a lease ago or more (ends within half a lease)."""
        half_left = now + self.lease / 2
        return [delivery_id for delivery_id in in_flight if self._leases.get(delivery_id, now) <= half_left]

    def _addressed_to_profile(self, delivery: Delivery) -> bool:
        """Whether a delivery's target is a profile id (a route to `profile_id`), not a person's address."""
        return self.recipient(delivery.channel, delivery.target) is None

    def _keeps_records(self, destination_id: str) -> bool:
        destination = self.destinations.get(destination_id)
        return destination is not None and destination.keeps_record_per_profile

    async def _attempt_bounded(self, delivery: Delivery) -> Outcome:
        async with self._in_flight:
            return await self._attempts.attempt(delivery)

    def close(self) -> None:
        """Let the sends in flight finish (each within its destination's timeout) and record them, put back a
        batch claimed and not sent (due now, as it was; after a failed record, when its lease runs out), close
        every destination's connections (async ones on the loop that opened them), then the loop."""
        self._finish_sends()
        if self._sending or self._claimed:
            self._recorder.write_back(list(self._finished().values()), self._put_back)
            self._sending, self._claimed = {}, None
            self._leases.clear()  # the recorder's view of them too
        self._loop.run_until_complete(self._close_async())
        self._loop.close()
        for destination in self.destinations.values():
            destination.close()

    def _finish_sends(self) -> None:
        """Wait for the sends in flight, renewing their leases as a run does: a send may outlast a lease (an SMTP
        relay has 10 minutes to answer the end of a message), and one whose lease ran out while the engine closed
        was claimed and sent again by another node."""
        while going := [delivery_id for delivery_id, send in self._sending.items() if not send.done()]:
            now = utcnow()
            if self._half_spent(going, now):  # a write transaction only when a lease is due for renewal
                with self.store.write() as connection:
                    renewed = self._renew_leases(connection, going, now)
                self._leases.update(renewed)
            self._loop.run_until_complete(asyncio.wait(
                [self._sending[delivery_id] for delivery_id in going], timeout=self.lease.total_seconds() / 4
            ))

    def _put_back(self, connection: Connection) -> None:
        """The batch claimed and not sent, due now again, as it was; those whose lease ran out while the engine
        closed, and which another worker took, left to it."""
        for delivery in self._claimed or ():
            outbox.defer(connection, delivery.delivery_id, utcnow(), lease=self._leases.get(delivery.delivery_id))

    async def _close_async(self) -> None:
        await asyncio.gather(*(destination.close_async() for destination in self.destinations.values()))
        await self._loop.shutdown_default_executor()


def _set_aside(connection: Connection, delivery_id: str, now: datetime, error: Exception) -> None:
    """Dead-letter a delivery whose claim raised, its savepoint rolled back, with the error as its reason."""
    reason = set_aside_reason(error, "the hub could not read or check this delivery's row at its claim; mend the row, "
                                     "then replay it")
    log.error("a delivery the hub cannot send was set aside as dead", delivery_id=delivery_id, reason=reason,
              exc_info=error)
    outbox.set_aside(connection, delivery_id, now, reason)
