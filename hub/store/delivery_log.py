"""The delivery log: deliveries with every attempt, masked for the ops people who read and export it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, exists, func, select

from hub.identifiers import DEFAULT_PHONE_REGION
from hub.model import Identifier
from hub.pii import mask_recipient, mask_traits
from hub.store.keyset import Key, Keyset
from hub.store.schema import attempts, deliveries

if TYPE_CHECKING:
    from hub.routes_file import ChannelRoute

# What a delivery's channel and target name (`Router.recipient`): how the delivery log masks its recipients.
RecipientOf = Callable[[str, str], Identifier | None]
PAGES = Keyset("deliveries", (deliveries.c.created_at, deliveries.c.delivery_id))  # ix_deliveries_created


def unrouted(channel: str, target: str) -> Identifier | None:
    """A `RecipientOf` that knows no routes (tests, tools without mappings): every target is masked as text."""
    return None


def search(
    connection: Connection,
    *,
    limit: int,
    profile_id: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    destination_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    decision_id: str | None = None,
    recipient: RecipientOf = unrouted,
    region: str = DEFAULT_PHONE_REGION,
    after: Key | None = None,
) -> list[dict[str, Any]]:
    """The delivery log, newest first, each delivery with its attempts; recipients and the emails and phone
    numbers in what was sent (a CRM field, a greeting) are masked: ops people read and export it.

    `since` (inclusive) and `until` (exclusive) bound when the delivery was planned. `recipient` says what
    each delivery's target is (`Router.recipient`), so a push token is masked as one; without it every target
    is masked as text, which leaves tokens whole. `region` (HUB_DEFAULT_PHONE_REGION) is where a phone written
    without its country code is read, as ingest reads it: a field holding just "4155550123" is masked as a phone.
    `after` is the key (`PAGES`) of the last delivery of the page before.
    """
    query = PAGES.newest_first(select(deliveries), after).limit(limit)
    for column, wanted in (
        (deliveries.c.profile_id, profile_id),
        (deliveries.c.status, status),
        (deliveries.c.channel, channel),
        (deliveries.c.destination_id, destination_id),
        (deliveries.c.decision_id, decision_id),
    ):
        if wanted:
            query = query.where(column == wanted)
    if since is not None:
        query = query.where(deliveries.c.created_at >= since)
    if until is not None:
        query = query.where(deliveries.c.created_at < until)
    found = [dict(row) for row in connection.execute(query).mappings()]
    by_delivery: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if found:
        rows = connection.execute(
            select(attempts)
            .where(attempts.c.delivery_id.in_([item["delivery_id"] for item in found]))
            .order_by(attempts.c.attempt_no)
        ).mappings()
        for row in rows:
            by_delivery[row["delivery_id"]].append({key: value for key, value in row.items() if key != "delivery_id"})
    for item in found:
        _mask_recipients(item, recipient(item["channel"], item["target"]), region)
        item.pop("claimed_until")
        # The latest replay out of the dead-letter queue (or of a failure): the attempts after it are its.
        replayed_at, after_attempt = item.pop("retry_from"), item.pop("retry_from_attempt")
        item["replayed"] = {"at": replayed_at, "after_attempt": after_attempt} if replayed_at else None
        item["attempt_log"] = by_delivery[item["delivery_id"]]
    return found


def unmatched_filters(
    connection: Connection, destinations: Collection[str], routes: Mapping[str, ChannelRoute], *,
    destination: str | None = None, channel: str | None = None,
) -> dict[str, str]:
    """Why each of the `destination` and `channel` filters names nothing this hub has, by filter name, with the
    ids there are; empty when both may match. A typo (`twilo_sms`) matched nothing, which read as an empty delivery
    log, or during an incident as an empty dead-letter queue, while the real one stayed dead. `destinations` are
    the installed destination connectors' slugs; routes.yaml may name others.

    A name neither knows is looked for in the log (`_logged`): the dead letters of a channel taken out of
    routes.yaml are still there to be looked at and replayed or dropped, and filtering by it was refused."""
    known = {
        "destination": (destination, {*destinations, *(route.destination for route in routes.values())}, "destination"),
        "channel": (channel, set(routes), "channel routes.yaml has"),
    }
    unknown = {name: value for name, (value, ids, _) in known.items() if value is not None and value not in ids}
    logged = _logged(connection, unknown) if unknown else set()
    return {
        name: f"{value!r} is no {what}, nor in the delivery log; use one of: {', '.join(sorted(ids))}"
        for name, (value, ids, what) in known.items()
        if name in unknown and name not in logged
    }


_FILTERED = {"destination": deliveries.c.destination_id, "channel": deliveries.c.channel}


def _logged(connection: Connection, values: Mapping[str, str]) -> set[str]:
    """Which of the filters (by name: `_FILTERED`) some delivery in the log matches, in one statement: an EXISTS
    per filter, each stopping at the first delivery found."""
    names = list(values)
    found = connection.execute(select(*(exists().where(_FILTERED[name] == values[name]) for name in names))).one()
    return {name for name, matched in zip(names, found) if matched}


def _mask_recipients(item: dict[str, Any], identifier: Identifier | None, region: str) -> None:
    """Mask a delivery row's target and content in place; a multicast route's `recipients` (every device of
    the person) are of the target's kind, and masked as it is. Content is masked as a profile's traits are: a
    CRM field or greeting holds a phone as the person typed it ("4155550123", "(415)555-0123"), which no pattern
    for free text can tell from an id."""
    content = mask_traits(item["content"], (), region)
    if "recipients" in content:
        content["recipients"] = [mask_recipient(each, identifier) for each in item["content"]["recipients"]]
    item["target"], item["content"] = mask_recipient(item["target"], identifier), content


def count_by_channel_and_status(connection: Connection) -> list[dict[str, Any]]:
    """Deliveries and the attempts they took, per channel and status."""
    rows = connection.execute(
        select(deliveries.c.channel, deliveries.c.status, func.count(), func.sum(deliveries.c.attempts))
        .group_by(deliveries.c.channel, deliveries.c.status)
        .order_by(deliveries.c.channel, deliveries.c.status)
    )
    return [{"channel": ch, "status": st, "count": n, "attempts": int(a or 0)} for ch, st, n, a in rows]
