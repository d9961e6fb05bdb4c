"""Stage 4: turn a decision into planned deliveries, or say why an action cannot be sent.

Routing picks the destination for each channel (mappings/routes.yaml), the
recipient from the profile's identifiers, checks consent, and renders the
message. The rendered content is stored with the delivery, so a retry or a
replay sends exactly what was decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field

from hub.config_files import load_model
from hub.model import Decision, PlannedDelivery, SkippedAction, derived_id
from hub.templates import TemplateRenderer

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


class RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: dict[str, ChannelRoute]


def load_routes(path: Path) -> dict[str, ChannelRoute]:
    return load_model(path, RoutesFile).channels


@dataclass(frozen=True)
class RoutingPlan:
    deliveries: list[PlannedDelivery]
    skipped: list[SkippedAction]

    def fates(self) -> list[dict[str, Any]]:
        """Each action's fate, as the decision log records it."""
        planned = [{"channel": d.channel, "fate": "planned", "delivery_id": d.delivery_id} for d in self.deliveries]
        return planned + [{"channel": s.channel, "fate": "skipped", "reason": s.reason} for s in self.skipped]


class Router:
    def __init__(self, routes: dict[str, ChannelRoute], templates: TemplateRenderer) -> None:
        self.routes = routes
        self.templates = templates

    def plan(self, decision: Decision, profile: dict[str, Any], touchpoint: dict[str, Any]) -> RoutingPlan:
        """`profile` is the view from `hub.store.identity_graph.profile_view`."""
        deliveries: list[PlannedDelivery] = []
        skipped: list[SkippedAction] = []
        for action in decision.actions:
            route = self.routes.get(action.channel)
            if route is None:
                skipped.append(SkippedAction(action.channel, f"no route for channel {action.channel!r} in routes.yaml"))
                continue
            if _consent_revoked(profile["traits"], action.channel):
                skipped.append(SkippedAction(action.channel, f"{action.channel} consent revoked by the profile"))
                continue
            recipients = [decision.profile_id] if route.target == PROFILE_TARGET else profile["identifiers"].get(route.target, [])
            if not recipients:
                skipped.append(SkippedAction(action.channel, f"profile has no {route.target}"))
                continue
            context = {"profile": profile["traits"], "touchpoint": touchpoint, "vars": decision.variables}
            try:
                rendered = self.templates.render(action.template, context)
            except TemplateError as exc:
                skipped.append(SkippedAction(action.channel, f"template {action.template}: {exc}"))
                continue
            target = recipients[0]  # newest first
            deliveries.append(
                PlannedDelivery(
                    delivery_id=derived_id("delivery", decision.decision_id, action.channel, target),
                    decision_id=decision.decision_id,
                    profile_id=decision.profile_id,
                    channel=action.channel,
                    destination_id=route.destination,
                    target=target,
                    content={
                        **rendered,
                        "template": action.template,
                        "rule_id": decision.rule_id,
                        "params": action.params,
                        **({"recipients": recipients} if route.multicast else {}),
                    },
                )
            )
        return RoutingPlan(deliveries, skipped)


def _consent_revoked(traits: dict[str, Any], channel: str) -> bool:
    """Opt-outs as Segment-style traits: `sms_opt_out: true` or `consent: {sms: false}`."""
    consent = traits.get("consent")
    explicit_no = isinstance(consent, dict) and consent.get(channel) is False
    return bool(traits.get(f"{channel}_opt_out")) or explicit_no
