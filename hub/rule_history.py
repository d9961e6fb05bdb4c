"""A profile's past as rules read it: the `History` they ask, and a read-ahead that asks the store once.

The pipeline answers `History` from the store (`hub.respond.StoreHistory`);
`ReadAhead` reads the widest span an event's windowed rules need, or the
follow-ups of a set of timers, in one query and filters it in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from hub.rule_predicates import Selector
from hub.rules import CountWindow, Window
from hub.selectors import event_names, kind, union_unless_open


class History(Protocol):
    """What rules may ask about a profile's past; the pipeline answers from the store."""

    def events(
        self, profile_id: str, since: datetime, until: datetime, selector: Selector | None
    ) -> list[dict[str, Any]]:
        """Touchpoint documents of the profile with `since <= occurred_at <= until`, pre-filtered by the
        selector's event / stage / moment (None: every event); `where` is checked by the engine."""
        ...

    def decided_between(self, profile_id: str, rule_id: str, since: datetime, until: datetime) -> list[datetime]:
        """When the rule's decisions for the profile with `since < decided_at < until` that reached the person
        (not capped, not unreached) were made, in any order."""
        ...


class ReadAhead:
    """A `History` answering `events` from one read of touchpoints over a span, and asking `history` the rest.

    Every `recent` / `count` condition asks for the profile's past; reading the
    widest span they need once (and only when the first of them asks) and
    filtering it in memory makes that one query per event instead of one per
    condition. The timer engine reads the follow-ups of a batch of timers,
    over all their profiles, the same way.
    """

    def __init__(
        self,
        history: History,
        since: datetime,
        until: datetime,
        names: frozenset[str] | None,
        read: Callable[[], Mapping[str, Sequence[dict[str, Any]]]],
        profile_id: str | None = None,
    ) -> None:
        """`read` returns, by profile id, the touchpoint documents in [since, until] (of `names`, if given);
        `profile_id`: the one profile it reads, when it reads one (`read_ahead`)."""
        self.history = history
        self.since, self.until, self.names = since, until, names
        self.profile_id = profile_id
        self._read = read
        self._documents: dict[str, list[tuple[datetime, dict[str, Any]]]] | None = None

    def events(
        self, profile_id: str, since: datetime, until: datetime, selector: Selector | None
    ) -> list[dict[str, Any]]:
        if not self.covers(since, until, selector):
            return self.history.events(profile_id, since, until, selector)
        return [
            doc for at, doc in self._read_once().get(profile_id, ())
            if since <= at <= until and (selector is None or kind(selector, doc["event"], doc["stage"], doc["moment"]))
        ]

    def decided_between(self, profile_id: str, rule_id: str, since: datetime, until: datetime) -> list[datetime]:
        return self.history.decided_between(profile_id, rule_id, since, until)

    def covers(self, since: datetime, until: datetime, selector: Selector | None) -> bool:
        """Whether the read holds every touchpoint this request asks for."""
        if not (self.since <= since and until <= self.until):
            return False
        asked = None if selector is None else selector.events
        return self.names is None or (asked is not None and self.names.issuperset(asked))

    def _read_once(self) -> dict[str, list[tuple[datetime, dict[str, Any]]]]:
        if self._documents is None:
            self._documents = {
                profile_id: [(datetime.fromisoformat(doc["occurred_at"]), doc) for doc in documents]
                for profile_id, documents in self._read().items()
            }
        return self._documents


@lru_cache(maxsize=1024)
def selector_of(names: frozenset[str] | None) -> Selector | None:
    """A selector of these event names (None: every event), to read a span through `History.events`; cached,
    as building one per event costs more than the read."""
    return None if names is None else Selector(event=sorted(names))


def read_ahead(
    history: History, profile_id: str, at: datetime, windows: Sequence[Window], ahead: Sequence[tuple[frozenset[str], timedelta]] = ()
) -> History:
    """`history`, reading the profile's touchpoints once for all these windows around `at`: back as far as the
    longest reaches, and on as far as the longest `count` (its events may arrive in any order) or `ahead`
    (events of these names within this long after `at`: those a late event may judge again, `triggers.rejudge`)."""
    if not windows and not ahead:
        return history
    back = forward = timedelta(0)
    for window in windows:  # one pass: every event with windowed rules comes here
        back = max(back, window.within)
        if isinstance(window, CountWindow):
            forward = max(forward, window.within)
    for _, within in ahead:
        forward = max(forward, within)
    since, until = at - back, at + forward
    names = event_names(windows) if windows else frozenset()
    if ahead:
        names = union_unless_open([names, *(later for later, _ in ahead)])

    if isinstance(history, ReadAhead) and history.profile_id == profile_id and history.covers(since, until, selector_of(names)):
        return history  # the pipeline's one read of the profile's past already holds these windows (`triggers.past_of`)

    def read() -> dict[str, list[dict[str, Any]]]:
        return {profile_id: history.events(profile_id, since, until, selector_of(names))}

    return ReadAhead(history, since, until, names, read, profile_id)
