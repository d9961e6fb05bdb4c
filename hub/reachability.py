"""Whether a channel can reach the person, and with what: the checks routing makes of each channel it tries.

Each refusal is a `CannotReach` with the fate and reason the decision log
shows (`skipped`: the rule's fallback may reach the person where this channel
cannot): no address of the route's type, only phones behind a switchboard for
a text, a message that rendered blank or longer than the provider takes.
Kept apart from `hub.routing`, which decides what is planned, when, and for
whom, from these answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hub.identifiers import split_extension
from hub.pii import holds_values

PHONE_TARGET = "phone"


class CannotReach(Exception):
    """This channel cannot reach the person; a fallback may."""

    def __init__(self, fate: str, reason: str) -> None:
        super().__init__(reason)
        self.fate = fate
        self.reason = reason


def refuse_blank(rendered: Mapping[str, str], parts: Sequence[str], required: Sequence[str], template: str) -> None:
    """Raise `CannotReach` (skipped: the fallback may have a template that renders) when every part the
    destination sends is blank, or a part it cannot go without (`required`) is; render strips each part
    already."""
    if parts and not any(rendered.get(part) for part in parts):
        raise CannotReach("skipped", (
            f"template rendered empty: {template} ({', '.join(parts)} all blank); check its {{% if %}} conditions "
            "and that the file is saved whole"
        ))
    missing = [part for part in required if not rendered.get(part)]
    if missing:
        raise CannotReach("skipped", (
            f"template rendered empty: {template} ({', '.join(missing)} blank or missing); give it a "
            f"{{% block {missing[0]} %}} that renders text in every case"
        ))


def refuse_too_long(rendered: Mapping[str, str], limits: Mapping[str, int], provider: str, template: str) -> None:
    """Raise `CannotReach` (skipped: the fallback may reach the person) when a part is longer than the provider
    takes (`limits`, in characters): sent, it was refused for good (Twilio's 21617), and no fallback was tried."""
    for part, limit in limits.items():
        length = len(rendered.get(part, ""))
        if length > limit:
            raise CannotReach("skipped", (
                f"template rendered too long: {template} ({part} is {length:,} characters; {provider} takes at most "
                f"{limit:,}); shorten it, or cut a long value short with `| truncate(...)`"
            ))


def reachable(target: str, identifiers: Mapping[str, list[str]]) -> list[str]:
    """The profile's addresses of type `target` that its channel can reach; raise `CannotReach` (skipped, so the
    fallback is tried) when there are none.

    A channel routed to a phone sends a message (an SMS), which reaches the
    number dialled: for a phone with an extension, a switchboard, not the
    person behind it. Sent to that number, one person's message went to
    whoever answers for the company.
    """
    held = identifiers.get(target, [])
    if not held:
        raise CannotReach("skipped", f"profile has no {target}")
    if target != PHONE_TARGET:
        return held
    reachable = [phone for phone in held if not split_extension(phone)[1]]
    if not reachable:
        raise CannotReach("skipped", (
            f"profile has no {target} a text can reach: {'its' if len(held) == 1 else 'each'} {target} has an "
            "extension (behind a switchboard); a text needs the person's own mobile number"
        ))
    return reachable


def current_address(addresses: Sequence[str], trait: Any) -> str:
    """The address the person gave last: of the profile's addresses of a type (newest first by the hub's clock),
    the one its trait of the same name holds (`email`, `phone`), else the newest.

    Traits are last-write-wins by event time; identifiers are ordered by when
    the hub took them in, so an SDK's offline queue flushed late made the
    address the person had left the newest. The trait is as the sender wrote
    it ("(415) 555-0142"), so it is matched as `forget` finds a value
    (`hub.pii.holds_values`); with one address there is nothing to choose.
    """
    if len(addresses) > 1 and isinstance(trait, str):
        return next((address for address in addresses if holds_values(trait, {address.lower()})), addresses[0])
    return addresses[0]
