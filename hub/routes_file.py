"""routes.yaml: which destination serves each channel, and which of a person's identifiers it sends to.

What the file says, apart from the router that plans by it (`hub.routing`):
the delivery log, replays and the CLI read routes to mask and check
recipients without building a router.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hub.config_files import line_of, load_model, yaml_tree
from hub.errors import ConfigError
from hub.model import Identifier

PROFILE_TARGET = "profile_id"


class ChannelRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")
    destination: str = Field(description="Destination id that serves this channel.")
    target: str = Field(
        description="Identifier type the recipient is taken from (e.g. phone), or `profile_id` for the profile itself."
    )
    multicast: bool = Field(
        False,
        description="Hand the destination every value of the target type (e.g. all push tokens) as `recipients`, "
        "not only the newest.",
    )
    reaches_person: bool = Field(
        True, description="Messages a person (counts toward the daily cap, waits out quiet hours); false for CRM updates."
    )


class RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: dict[str, ChannelRoute]


class Unrouted(Enum):
    """What `addressee_of` answers for a channel routes.yaml does not route (any more)."""

    CHANNEL = "unrouted"


# What a delivery's channel and target name by the routes (`addressee_of`): a replay checks its address by it.
AddresseeOf = Callable[[str, str], Identifier | Unrouted | None]


def addressee_of(routes: Mapping[str, ChannelRoute], channel: str, target: str) -> Identifier | Unrouted | None:
    """The identifier a delivery on `channel` went to (its `target`); None for a channel routed to the profile
    itself (a CRM update), `Unrouted.CHANNEL` for a channel routes.yaml does not route: only the route says what kind of
    identifier the target is, and a replay that took it for a profile's, with no address to lose, mailed an
    address that had bounced."""
    route = routes.get(channel)
    if route is None:
        return Unrouted.CHANNEL
    return None if route.target == PROFILE_TARGET else Identifier(route.target, target)


def recipient_of(routes: Mapping[str, ChannelRoute], channel: str, target: str) -> Identifier | None:
    """`addressee_of`, with a channel not routed answered as a profile's (None): for what only masks a target
    (shown as text then) or names the address a consent change came through."""
    addressee = addressee_of(routes, channel, target)
    return None if isinstance(addressee, Unrouted) else addressee


def load_routes(path: Path) -> dict[str, ChannelRoute]:
    return load_model(path, RoutesFile).channels


# Why a route's destination or target is refused, by its key.
_UNKNOWN_END = {
    "destination": "no installed destination connector has this id",
    "target": f"not an identifier type identity.yaml declares, nor {PROFILE_TARGET}",
}


def check_route_ends(
    path: Path, routes: Mapping[str, ChannelRoute], destinations: Collection[str], identifier_types: Collection[str]
) -> None:
    """Refuse a route to a destination no installed connector has (`twilo_sms`) or from an identifier type
    identity.yaml does not declare (`phonee`), at `mappings check` and at start: taken, every message of the
    channel waited in the outbox for a process that could send it, none could, and it was dead-lettered a day
    later; or no profile was ever reachable on the channel.

    `destinations`: the installed destination connectors' ids, configured or not (a node may lack credentials).
    """
    targets = {*identifier_types, PROFILE_TARGET}
    wrong = [
        *((channel, "destination", route.destination, destinations) for channel, route in routes.items()
          if route.destination not in destinations),
        *((channel, "target", route.target, targets) for channel, route in routes.items() if route.target not in targets),
    ]
    if wrong:
        root = yaml_tree(path)
        raise ConfigError([
            f"{path}:{line_of(root, ('channels', channel, key))}: channels.{channel}.{key}: {value!r}: {_UNKNOWN_END[key]}; "
            f"correct it to one of {', '.join(sorted(known))}"
            for channel, key, value, known in wrong
        ])
