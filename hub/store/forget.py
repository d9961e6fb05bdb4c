"""Forgetting a person on request (the right to be forgotten).

Forgetting erases identifiers, traits and the personal content of touchpoints,
raw inbox payloads and delivery logs, keeping the rows themselves so counts
(events per day, deliveries per channel) still add up. Messages not yet sent
to the person are withdrawn, and their identifiers are taken out of other
people's touchpoints that carried them (a bad link an unmerge undid), and
out of those people's delivery log; quarantined bodies holding their
addresses, or naming them by an id, are wiped, with the inbox rows kept for replaying them. With
blocking on, each identifier's digest (keyed: `hub.store.forget_digest`) joins a blocklist, so an old install
sending the same email cannot bring the person back (`hub.identity`). The
records the hub wrote for them in a CRM are erased there too, by deliveries
planned here (`hub.store.erasures`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, case, delete, exists, insert, or_, select, union, update

from hub.identity import USER_ID, carried_one_of, meanings_of
from hub.model import Identifier, derived_id
from hub.pii import address_values, holding, without_values
from hub.store import consent_changes, outbox, quarantine, withdrawals
from hub.store.inbox import DROPPED
from hub.store.erasures import plan_erasures
from hub.store.forget_digest import forget_keys
from hub.store.identity_repair import held_by, locked_live_profile
from hub.store.profile_views import aliases_of, live_profile_ids
from hub.store.schema import (
    attempts,
    deliveries,
    forgotten_identifiers,
    identifiers,
    identity_events,
    inbox,
    merges,
    profiles,
    touchpoints,
)
from hub.store.sql import insert_ignoring_conflicts
from hub.store.traits import with_part_times

FORGOTTEN_REASON = "not sent: profile forgotten"
# What an audit row naming the person keeps once emptied: no identifiers and, for a refused link, no key. The key
# is a plain digest of the identifier, and the two profile ids and the rule beside it let anyone hashing guesses of
# a phone number find it, HUB_FORGET_KEY or not. A refusal recurring later gets a row of its own.
EMPTIED_AUDIT_ROW = {"identifiers": [], "refusal_key": None}
DROPPED_READ_BATCH = 1000  # inbox rows read at a time, so a long inbox is never held in memory whole


def forget(
    connection: Connection, profile_id: str, now: datetime, block_identifiers: bool,
    erase_records_in: Collection[str] = (),
) -> dict[str, Any]:
    """Erase a person: identifiers, traits and personal content; returns the counts kept.

    `erase_records_in`: the CRM destinations whose records of the person go
    too (`hub.destination_settings.record_erasures`).
    """
    live_id = locked_live_profile(connection, profile_id)
    ids = [live_id, *sorted(aliases_of(connection, [live_id]).get(live_id, ()))]
    erased = held_by(connection, live_id)
    values = address_values(erased)
    if block_identifiers:
        _block(connection, [*erased, *_previous_ids_as_user_ids(connection, live_id)], now)
    connection.execute(delete(identifiers).where(identifiers.c.profile_id == live_id))
    inbox_ids = list(connection.execute(select(touchpoints.c.inbox_id).where(touchpoints.c.profile_id == live_id)).scalars())
    wiped = connection.execute(
        update(touchpoints)
        .where(touchpoints.c.profile_id == live_id)
        .values(identifiers=[], properties={}, traits={}, context={})
    ).rowcount
    forget_inbox_payloads(connection, [*inbox_ids, *_dropped_events_holding(connection, erased)])
    refusals = _refusals_naming(connection, erased)
    refused_at = [touchpoint_id for _, touchpoint_id in refusals]
    linked = _linked_profiles(connection, ids)
    gone = set(erased)
    _scrub_carried_elsewhere(connection, _carried_elsewhere(connection, ids, linked, gone, refused_at), gone)
    _forget_quarantined_events(connection, quarantine.forget_holding(connection, erased))
    # Locked (PostgreSQL; SQLite's writer is serialized already): a claim of one on another node, not yet
    # committed, is waited for and then seen, else its update went out with no erasure planned for its record.
    statuses = dict(connection.execute(
        select(deliveries.c.delivery_id, deliveries.c.status).where(deliveries.c.profile_id.in_(ids)).with_for_update()
    ).all())
    # Read before the wipe below takes the updates' targets and params; planned after it and the withdrawal,
    # which would take the erasures' keys (they are these profiles' ids) and withdraw them.
    erasures = plan_erasures(connection, ids, erase_records_in, derived_id("forget", live_id), now)
    delivery_ids = list(statuses)
    connection.execute(
        update(deliveries).where(deliveries.c.profile_id.in_(ids)).values(target=outbox.FORGOTTEN_TARGET, content={}, last_error=None)
    )
    # The messages still to go (due, held, dead) never go: their address and content are gone, and the person
    # asked to hear nothing more (as deleting a subscriber in Novu cancels what was queued for them).
    unsent = [delivery_id for delivery_id, status in statuses.items() if status in outbox.UNSENT_STATUSES]
    withdrawals.withdraw(connection, unsent, now, FORGOTTEN_REASON)
    outbox.plan(connection, erasures, now)
    _wipe_attempts(connection, delivery_ids)
    _scrub_deliveries_elsewhere(connection, linked, values, now)
    # Audit rows keep the fact of a merge or refusal, never the values that caused it.
    # Rows where the person is the merged side too: an unmerge split them off a survivor that is not forgotten.
    connection.execute(
        update(merges).where(or_(merges.c.survivor_id.in_(ids), merges.c.merged_id.in_(ids))).values(linking_identifiers=[])
    )
    for emptied in (
        identity_events.c.profile_id.in_(ids), identity_events.c.other_profile_id.in_(ids),
        identity_events.c.id.in_([refusal for refusal, _ in refusals]),
    ):
        connection.execute(update(identity_events).where(emptied).values(EMPTIED_AUDIT_ROW))
    consent_changes.forget(connection, ids)
    connection.execute(delete(profiles).where(profiles.c.profile_id.in_(ids)))
    connection.execute(
        insert(identity_events).values(
            kind="forget", profile_id=live_id, other_profile_id=None, touchpoint_id=None,
            identifiers=[[ident.type, "(erased)"] for ident in erased], rule="right to be forgotten", at=now,
        )
    )
    return {
        "profile_id": live_id, "identifiers": len(erased), "touchpoints": wiped, "deliveries": len(delivery_ids),
        "crm_erasures": len(erasures),
    }


def forgotten_since(connection: Connection, carried: Sequence[Identifier], received_at: datetime) -> bool:
    """Whether one of these identifiers of forgotten people (as an event carries them: `Resolution.erased`) was
    forgotten at or after `received_at`: an event of the person's own (`hub.erased.anchored_by_erased`) was then
    accepted before the forget and still queued, and is dropped whole. One received later is someone new typing the
    address again, stored without it.

    Asked only of an event that carries a forgotten identifier, never on the pipeline's common path.
    """
    keys = forget_keys(connection)
    digests = [digest for ident in carried for meaning in meanings_of(ident) for digest in keys.candidates(meaning)]
    return connection.execute(
        select(exists().where(forgotten_identifiers.c.digest.in_(digests), forgotten_identifiers.c.forgotten_at >= received_at))
    ).scalar_one()


def _block(connection: Connection, idents: Sequence[Identifier], now: datetime) -> None:
    """Put the identifiers' digests on the blocklist, keyed when HUB_FORGET_KEY is set (`hub.store.forget_digest`)."""
    keys = forget_keys(connection)
    insert_ignoring_conflicts(
        connection, forgotten_identifiers,
        [{"digest": keys.stored(ident), "keyed": keys.keyed, "forgotten_at": now} for ident in idents], ["digest"],
    )


def _previous_ids_as_user_ids(connection: Connection, profile_id: str) -> list[Identifier]:
    """The user_ids the profile's alias previousIds, stored as anonymous ids (`from_alias`), may yet prove to be.

    Had the person stayed, a user_id of such a value would have joined them
    (`hub.identity`); forgotten, its digest refuses it. The anonymous id's own
    digest refuses only anonymous ids: a forgotten cookie never refuses
    another person's login of the same value.
    """
    previous_ids = select(identifiers.c.value).where(identifiers.c.profile_id == profile_id, identifiers.c.from_alias)
    return [Identifier(USER_ID, value) for value in connection.execute(previous_ids).scalars()]


def _wipe_attempts(connection: Connection, delivery_ids: Sequence[str]) -> None:
    """Drop what the attempts of these deliveries said of the request and the answer (masked, but still the
    person's: "b***@x.io")."""
    connection.execute(
        update(attempts)
        .where(attempts.c.delivery_id.in_(list(delivery_ids)))
        .values(request_summary={}, response_summary={}, error_message=None)
    )


def _linked_profiles(connection: Connection, profile_ids: list[str]) -> list[str]:
    """The live profiles, not these, that the audit trail links to these profiles: the other side of each merge
    (an unmerge split them since) and of each refused link. Only they can have planned messages to these
    profiles' addresses, or carrying them, so none is looked for among all deliveries."""
    pairs = connection.execute(union(
        select(merges.c.survivor_id, merges.c.merged_id)
        .where(or_(merges.c.survivor_id.in_(profile_ids), merges.c.merged_id.in_(profile_ids))),
        select(identity_events.c.profile_id, identity_events.c.other_profile_id)
        .where(or_(identity_events.c.profile_id.in_(profile_ids), identity_events.c.other_profile_id.in_(profile_ids)),
               identity_events.c.other_profile_id.is_not(None)),
    )).all()
    others = sorted({profile_id for pair in pairs for profile_id in pair} - set(profile_ids))
    return sorted(set(live_profile_ids(connection, others).values()) - set(profile_ids))


def _scrub_deliveries_elsewhere(connection: Connection, profile_ids: list[str], values: set[str], now: datetime) -> None:
    """Take the erased addresses out of other people's delivery log: while a bad merge made Ana and Bo one
    profile, her support email went to Bo's address and her CRM update carried it, and an unmerge leaves both
    with her.

    A delivery to one of the addresses is left as the person's own are
    (target FORGOTTEN_TARGET, attempts' summaries dropped, withdrawn if not
    yet sent), its content kept without the address; from the others'
    content and their attempts' summaries every string holding one goes.
    """
    if not profile_ids or not values:
        return
    holds = holding(values)
    rows = connection.execute(
        select(deliveries.c.delivery_id, deliveries.c.target, deliveries.c.content, deliveries.c.status)
        .where(deliveries.c.profile_id.in_(profile_ids))
    ).all()
    addressed, carrying = [], []
    for row in rows:
        content = _without_holding(row.content, holds)
        if row.target.lower() in values:
            addressed.append(row)
            changes = {"target": outbox.FORGOTTEN_TARGET, "content": content, "last_error": None}
        elif content != row.content:
            carrying.append(row.delivery_id)
            changes = {"content": content}
        else:
            continue
        connection.execute(update(deliveries).where(deliveries.c.delivery_id == row.delivery_id).values(changes))
    _wipe_attempts(connection, [row.delivery_id for row in addressed])
    withdrawals.withdraw(connection, [row.delivery_id for row in addressed if row.status in outbox.UNSENT_STATUSES], now,
                    FORGOTTEN_REASON)
    _scrub_attempts(connection, carrying, holds)


def _scrub_attempts(connection: Connection, delivery_ids: list[str], holds: Callable[[str], bool]) -> None:
    """The attempts of these deliveries without the strings that hold an erased address."""
    rows = connection.execute(
        select(attempts.c.id, attempts.c.request_summary, attempts.c.response_summary, attempts.c.error_message)
        .where(attempts.c.delivery_id.in_(delivery_ids))
    ).all()
    for row in rows:
        connection.execute(update(attempts).where(attempts.c.id == row.id).values(
            request_summary=_without_holding(row.request_summary, holds),
            response_summary=_without_holding(row.response_summary, holds),
            error_message=None if row.error_message and holds(row.error_message) else row.error_message,
        ))


def _without_holding(value: Any, holds: Callable[[str], bool]) -> Any:
    """`value` without the strings that hold an erased address, at any depth: not only a field that is the address
    (`hub.pii.without_values`) but the CRM note's body that names it among other lines."""
    if isinstance(value, dict):
        return {key: _without_holding(item, holds) for key, item in value.items() if not _holds(item, holds)}
    if isinstance(value, list):
        return [_without_holding(item, holds) for item in value if not _holds(item, holds)]
    return value


def _holds(value: Any, holds: Callable[[str], bool]) -> bool:
    return isinstance(value, str) and holds(value)


def _carried_elsewhere(
    connection: Connection, profile_ids: list[str], linked: list[str], gone: set[Identifier], refused_at: list[str]
) -> list[Row[Any]]:
    """Touchpoints of other people that carried one of the erased identifiers (`gone`), with what
    `_scrub_carried_elsewhere` changes: those of the `linked` profiles (`_linked_profiles`) that did, and those
    whose link to one was refused, whoever held it then, among `refused_at` (`_refusals_naming`).

    Only a profile the audit trail links to the person can hold such a
    touchpoint, and its touchpoints are read by their profile_id index, never
    all of them. Each is judged by what it carried, not by an audit row naming
    it: an unmerge leaves with the survivor every touchpoint that carried both
    sides' identifiers, not only the one that merged them.
    """
    columns = (touchpoints.c.touchpoint_id, touchpoints.c.profile_id, touchpoints.c.inbox_id, touchpoints.c.identifiers,
               touchpoints.c.properties, touchpoints.c.traits, touchpoints.c.context)
    refused = select(*columns).where(touchpoints.c.touchpoint_id.in_(refused_at), touchpoints.c.profile_id.not_in(profile_ids))
    found = {row.touchpoint_id: row for row in connection.execute(refused)}
    for row in connection.execute(select(*columns).where(touchpoints.c.profile_id.in_(linked))):
        if any(carried_one_of(Identifier(*pair), gone) for pair in row.identifiers):
            found[row.touchpoint_id] = row
    return [found[touchpoint_id] for touchpoint_id in sorted(found)]


def _refusals_naming(connection: Connection, erased: list[Identifier]) -> list[tuple[int, str]]:
    """The refused links (id, touchpoint) naming one of the erased identifiers, whichever profiles they name: a
    limit refused another person's event the identifier before it had an owner (Ana's sixth email, later Bo's),
    or while another held it (Xavier's event with Bo's email, refused against Ana while Bo was merged into her,
    which an unmerge left naming Ana and Xavier), so no audit row names the person's profile.

    A refusal names one identifier (`IdentityGraph.record_refusals`), so
    emptying a matched row's identifiers takes only the forgotten person's
    out of it; its two profile ids, the live people's, stay. It is matched by
    its JSON path, which SQLAlchemy writes as json_extract on SQLite and #>>
    on PostgreSQL. Read once: every refusal is scanned."""
    if not erased:
        return []
    carried = identity_events.c.identifiers
    named = [and_(carried[(0, 0)].as_string() == ident.type, carried[(0, 1)].as_string() == ident.value) for ident in erased]
    return [(row.id, row.touchpoint_id) for row in connection.execute(
        select(identity_events.c.id, identity_events.c.touchpoint_id).where(
            identity_events.c.kind == "refused", or_(*named)
        )
    )]


def _dropped_events_holding(connection: Connection, erased: list[Identifier]) -> list[int]:
    """The inbox rows of events a mapping's `drop` rule left out whose raw body holds the person: processed into
    no touchpoint, they were marked done with their body kept (`inbox.mark_dropped`). Those behind a touchpoint
    are wiped by it, those quarantined with their quarantined body (`quarantine.forget_holding`), pending ones
    when processed (`hub.pipeline`).

    Nothing links such a body to a profile, so the dropped rows are read
    through, as the quarantine is; only those, found by their `error`, not the
    whole inbox.
    """
    holds = quarantine.body_holding(erased)
    if holds is None:
        return []
    rows = connection.execute(
        select(inbox.c.id, inbox.c.payload)
        .where(inbox.c.status == "done", inbox.c.error.startswith(DROPPED, autoescape=True))
        .execution_options(yield_per=DROPPED_READ_BATCH)
    )
    return [row.id for row in rows if row.payload and holds(json.dumps(row.payload, ensure_ascii=False).encode())]


def _scrub_carried_elsewhere(connection: Connection, rows: list[Row[Any]], gone: set[Identifier]) -> None:
    """Take the erased identifiers out of other people's touchpoints that carried them, and their values out of
    those touchpoints' fields and their owners' traits (which may have taken them from such a touchpoint).

    The raw payloads of those events are dropped whole, as the person's own
    are: a raw body holds the value as the sender wrote it, which may differ
    from the normalized identifier. Fields are matched on the normalized value
    in any case, and a phone also however it is written (`hub.pii.without_values`).
    """
    if not rows or not gone:
        return
    values = address_values(gone)
    for row in rows:
        connection.execute(update(touchpoints).where(touchpoints.c.touchpoint_id == row.touchpoint_id).values(
            identifiers=[pair for pair in row.identifiers if not carried_one_of(Identifier(*pair), gone)],
            properties=without_values(row.properties, values), traits=without_values(row.traits, values),
            context=without_values(row.context, values),
        ))
    forget_inbox_payloads(connection, [row.inbox_id for row in rows if row.inbox_id is not None])
    for profile_id in {row.profile_id for row in rows}:
        _scrub_traits(connection, profile_id, values)


def _scrub_traits(connection: Connection, profile_id: str, values: set[str]) -> None:
    """The profile's traits without the erased values; the traits left keep their times."""
    current = connection.execute(
        select(profiles.c.traits, profiles.c.trait_times).where(profiles.c.profile_id == profile_id)
    ).first()
    if current is None:
        return
    kept = without_values(current.traits, values)
    if kept != current.traits:
        connection.execute(update(profiles).where(profiles.c.profile_id == profile_id).values(
            traits=kept, trait_times=with_part_times(current.trait_times, list(kept)),
        ))


def _forget_quarantined_events(connection: Connection, inbox_ids: list[int]) -> None:
    """Drop the raw bodies of quarantined events that held the person's data, and the errors that may quote them.

    The pipeline keeps a quarantined event's inbox row, payload and all, for
    `touchhub replay`; emptied, it is never queued again, as no mapping makes
    a touchpoint of a body without an identifier.
    """
    connection.execute(
        update(inbox).where(inbox.c.id.in_(inbox_ids))
        .values(payload={}, error=case((inbox.c.error.is_not(None), quarantine.ERASED_REASON)))
    )


def forget_inbox_payloads(connection: Connection, inbox_ids: list[int]) -> None:
    """Drop raw event bodies; the inbox rows stay for counts and deduplication."""
    connection.execute(update(inbox).where(inbox.c.id.in_(inbox_ids)).values(payload={}))
