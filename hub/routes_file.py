"""routes.yaml: which destination serves each channel, and which of a person's identifiers it sends to.

What the file says, apart from the router that plans by it (`hub.routing`):
the delivery log, replays and the CLI read routes to mask and check
recipients without building a router.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hub.config_files import load_model
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


def recipient_of(routes: dict[str, ChannelRoute], channel: str, target: str) -> Identifier | None:
    """The identifier a delivery on `channel` went to (its `target`); None for channels routed to the profile
    itself (a CRM update), or not routed."""
    route = routes.get(channel)
    return None if route is None or route.target == PROFILE_TARGET else Identifier(route.target, target)


def load_routes(path: Path) -> dict[str, ChannelRoute]:
    return load_model(path, RoutesFile).channels
