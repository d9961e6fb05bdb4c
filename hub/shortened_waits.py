"""After an edit that shortens an absence rule's wait, its pending timers are brought forward to it.

Split from the timer engine (`hub.absence`), which asks `follow` at each run
and `next_look` for when to wake.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from hub.rules import RuleSpec
from hub.store import Store, timer_waits, timers

log = structlog.get_logger(__name__)

RESCHEDULE_CHUNK = 500  # timers whose due time one write transaction brings forward after a rule edit
# After an edit shortened a wait, when its rule's timers are looked at again for ones armed, or sent back, on the
# old wait by nodes the edit had not reached (each look walks the pending timers: under a second at 1M); the
# last look is at the end of the rollout (`absence.RULE_ROLLOUT`).
LOOKS_AGAIN_AFTER = (timedelta(minutes=1), timedelta(minutes=5))


class ShortenedWaits:
    def __init__(self, store: Store, rollout: timedelta) -> None:
        self.store = store
        self._looks_after = (*LOOKS_AGAIN_AFTER, rollout)
        self._rules_seen: object = None
        self._waits_seen: dict[str, timedelta] = {}
        self._looks_again: list[tuple[datetime, dict[str, timedelta]]] = []  # (when, shortened waits), soonest first

    def follow(self, now: datetime, rules: list[RuleSpec]) -> None:
        """After an edit that shortens a rule's wait, bring its pending timers' due times forward to it.

        A timer is judged by the rule in force when it is claimed, but it is
        claimed by its stored due time: shortened from 30 minutes to 2, it
        would have waited the 30, and a follow-up in between cancelled a nudge
        the rule now sends. (A longer wait needs nothing here: the claim sends
        the timer back.) The waits are compared with those noted in the store
        and with this worker's own before the edit: an edit made while no
        timer worker ran is found by the next to start, and a node the edit
        reaches after another still brings forward what it armed meanwhile.
        A rule no worker has noted (added while none ran) may have been
        shortened since its first timers were armed, so its timers are
        compared too. Nodes that had not loaded the edit yet may still arm
        timers on the old wait, or send brought-forward ones back to it, so
        the shortened rules are looked at again over the rollout
        (`LOOKS_AGAIN_AFTER`). The waits only pick the rules to look at: each
        of their pending timers is judged by its own anchor and the wait in
        force. They are noted after the timers are moved: a crash in between
        moves them again, which changes nothing.
        """
        if rules is not self._rules_seen:  # each run: unchanged rules cost one comparison
            self._rules_changed(rules, now)
        while self._looks_again and self._looks_again[0][0] <= now:
            self._bring_forward(self._looks_again.pop(0)[1])

    def _rules_changed(self, rules: list[RuleSpec], now: datetime) -> None:
        waits = {rule.id: rule.absence.within for rule in rules if rule.absence is not None}
        with self.store.read() as connection:
            noted = timer_waits.noted_waits(connection)
        maybe_shortened = {
            rule_id: wait for rule_id, wait in waits.items()
            if rule_id not in noted or wait < noted[rule_id] or wait < self._waits_seen.get(rule_id, wait)
        }
        if maybe_shortened:
            self._bring_forward(maybe_shortened)
            self._looks_again = sorted(self._looks_again + [(now + after, maybe_shortened) for after in self._looks_after],
                                       key=lambda look: look[0])
        if any(noted.get(rule_id) != wait for rule_id, wait in waits.items()):
            with self.store.write() as connection:
                timer_waits.note_waits(connection, waits)
        self._rules_seen, self._waits_seen = rules, waits

    def _bring_forward(self, waits: dict[str, timedelta]) -> None:
        """These rules' pending timers due later than their anchor plus their rule's wait, due then instead."""
        with self.store.read() as connection:
            earlier = timer_waits.due_after_their_wait(connection, waits)
        for start in range(0, len(earlier), RESCHEDULE_CHUNK):  # short write transactions beside ingest
            with self.store.write() as connection:
                timers.wait_until(connection, earlier[start:start + RESCHEDULE_CHUNK])
        if earlier:
            log.info("timers brought forward to a shortened wait", rules=sorted(waits), timers=len(earlier))

    def next_look(self) -> datetime | None:
        """When the next look again at shortened waits is due, if one is."""
        return self._looks_again[0][0] if self._looks_again else None
