"""What is kept of an event that carries a forgotten person's identifiers (their email, typed again by someone
else): README, "an event carrying their email again is stored without it". The pipeline stores a new event so
(`hub.pipeline`), and `touchhub replay` a touchpoint it rewrites with a new mapping (`hub.replay`), which wrote
the erased email back when it skipped this step."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

from hub.model import Identifier, Touchpoint
from hub.pii import address_values, without_values


def without_erased(touchpoint: Touchpoint, erased: tuple[Identifier, ...]) -> Touchpoint:
    """The touchpoint as stored when it carried a forgotten person's identifiers (`erased`, as it carries them):
    without them, nor their values in its fields, so neither the touchpoint nor the profile's traits write back
    what was erased. Its raw body is to be dropped as a forgotten person's own are."""
    values = address_values(erased)
    return replace(
        touchpoint, identifiers=tuple(ident for ident in touchpoint.identifiers if ident not in erased),
        properties=without_values(touchpoint.properties, values), traits=without_values(touchpoint.traits, values),
        context=without_values(touchpoint.context, values),
    )


def anchored_by_erased(carried: Sequence[Identifier], erased: Collection[Identifier], rank: Callable[[str], int]) -> bool:
    """Whether the event's highest-priority identifier (`rank`: mappings/identity.yaml) is a forgotten person's:
    resolution kept such an event with that identifier's profile, so one queued before the forget was the person's
    own, to be dropped whole. Another's event only carrying their address (Ana's order, sent from a laptop whose
    SDK still held Bo's email) was dropped too, an acknowledged event lost; it is kept without the address.

    Ties go to the first carried, as resolution's stable sort does; an alias's `previous_id` ranks last.
    """
    return min(carried, key=lambda ident: rank(ident.type)) in erased
