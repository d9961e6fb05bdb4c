"""Stage 4: turn a decision into planned deliveries, and record each action's fate.

Routing picks the destination for each channel (mappings/routes.yaml), the
recipient from the profile's identifiers, checks consent, the per-profile
daily cap and quiet hours, falls back to the next channel when one cannot
reach the person, and renders the message. The rendered content is stored
with the delivery, so a retry or a replay sends exactly what was decided.

Each action ends with one fate, as the decision log shows it:
`planned`, `delayed_quiet_hours`, `capped`, `blocked_by_consent`,
`fell_back` (to the channel named in `to`), or `skipped` (with the reason).
A channel that cannot reach the person (no address, only a phone with an
extension for a text, consent revoked, a template that rendered nothing to
send or more than the provider takes, an email without a subject) falls
back when the action says where; so does a delivery that failed, or was
withdrawn at its claim, because every address it went to left the profile
or consent to its channel was revoked since (`Router.fall_back`, from the
delivery worker's record of the failure or its claim).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jinja2 import TemplateError

from connectors.base import Destination, load_registry
from hub.consent import consent_revoked
from hub.daily_cap import has_room
from hub.errors import ConfigError
from hub.model import FALLBACK, QUIET_ZONE, SEND_BY, Action, Decision, Identifier, PlannedDelivery, ordered_id
from hub.quiet_hours import QuietHours
from hub.reachability import CannotReach, current_address, reachable, refuse_blank, refuse_too_long
from hub.routes_file import PROFILE_TARGET, ChannelRoute, Unrouted, addressee_of, recipient_of
from hub.rule_lines import RuleLines
from hub.rules import RuleSpec
from hub.template_values import template_context
from hub.templates import TemplateRenderer

@dataclass(frozen=True)
class ContactPolicy:
    """Limits that protect a person from the sum of all rules: a daily cap, quiet hours, and no messages about
    what happened long ago (`max_age`, judged from the decision's time: the event's, or a timer's due time)."""

    daily_cap: int | None = None
    quiet_hours: QuietHours | None = None
    max_age: timedelta | None = None


@dataclass(frozen=True)
class RoutingPlan:
    deliveries: list[PlannedDelivery]
    action_fates: list[dict[str, Any]]

    def fates(self) -> list[dict[str, Any]]:
        """Each action's fate, as the decision log records it."""
        return self.action_fates


class Router:
    def __init__(
        self, routes: dict[str, ChannelRoute], templates: TemplateRenderer, policy: ContactPolicy | None = None,
        configured: Collection[str] | None = None, destinations: Mapping[str, type[Destination]] | None = None,
    ) -> None:
        """`configured`: the destinations this hub has settings for (None: take every route as served).
        `destinations`: the installed destination connectors (default: `load_registry`'s)."""
        self.routes = routes
        connectors = load_registry().destinations if destinations is None else destinations
        # destination -> its connector, whose `message_parts` and `required_parts` say when a message rendered
        # blank is not sent (Twilio refuses an empty SMS; an email without a subject went out under the rule id)
        self._composers = {
            route.destination: connectors[route.destination] for route in routes.values() if route.destination in connectors
        }
        self.templates = templates
        self.policy = policy or ContactPolicy()
        # channel -> its destination, for channels whose destination has no settings here
        self.unserved = {} if configured is None else {
            channel: route.destination for channel, route in routes.items() if route.destination not in configured
        }

    def recipient(self, channel: str, target: str) -> Identifier | None:
        return recipient_of(self.routes, channel, target)

    def addressee(self, channel: str, target: str) -> Identifier | Unrouted | None:
        return addressee_of(self.routes, channel, target)

    def check_channels(self, rules: Sequence[RuleSpec], lines: RuleLines) -> None:
        """Refuse rules (at start-up and reload) that name a channel routes.yaml does not route, each at its line
        of the rules file: found only when the rule fired, a typo (`emial`) skipped every message it was meant to
        send."""
        problems = [
            f"{lines.where(rule.id, 'respond', number, *keys, 'channel')}: rule {rule.id!r}: channel {channel!r} "
            f"has no route in routes.yaml; use one of {', '.join(sorted(self.routes))} or add a route for it"
            for rule in rules
            for number, action in enumerate(rule.respond)
            for keys, channel, _ in action.choices()
            if channel not in self.routes
        ]
        if problems:
            raise ConfigError(problems)

    def plan(
        self, decision: Decision, profile: dict[str, Any], touchpoint: dict[str, Any], *, now: datetime | None = None,
        messages_going: Sequence[datetime] = (),
    ) -> RoutingPlan:
        """`profile` is the view from `hub.store.profile_views.profile_view`; `messages_going` is when the
        profile's messages that reach the person go (or went), from a day ago on (`hub.daily_cap`)."""
        if decision.status == "capped":
            cap = decision.evidence.get("cap", {})
            reason = f"rule cap reached: at most {cap.get('max')} decision(s) within {cap.get('within_seconds')} s"
            return RoutingPlan([], [{"channel": a.channel, "fate": "capped", "reason": reason} for a in decision.actions])
        now = now or decision.decided_at
        deliveries: list[PlannedDelivery] = []
        fates: list[dict[str, Any]] = []
        going = list(messages_going)
        context = template_context(profile["traits"], touchpoint, decision.variables)
        for place, action in enumerate(decision.actions):
            tries = [(action.channel, action.template), *action.fallback]
            delivery, tried = self._first_reaching(
                decision, place, action, tries, profile, touchpoint, context, now, going,
                quiet=_waits_out_quiet_hours(decision, action),
            )
            fates.extend(tried)
            if delivery is not None:
                deliveries.append(delivery)
                if self.routes[delivery.channel].reaches_person:
                    going.append(delivery.not_before or now)
        return RoutingPlan(deliveries, fates)

    def fall_back(
        self,
        decision: Decision,
        place: int,
        action: Action,
        failed: tuple[str, str],
        profile: dict[str, Any],
        touchpoint: dict[str, Any],
        *,
        now: datetime,
        messages_going: Sequence[datetime] = (),
        quiet: bool,
    ) -> RoutingPlan:
        """The action's fallbacks routed as `plan` routes them, after its delivery `failed` (its id, and why it
        can no longer reach the person: every address it went to left the profile, or consent to its channel
        was revoked): planning had no reason to fall back. `quiet`: whether quiet hours hold the action's
        messages, as the fallback record says (`_fallback_record`): the action's `delay` is spent by now. The
        first fate says the failed delivery fell back."""
        delivery_id, why = failed
        context = template_context(profile["traits"], touchpoint, decision.variables)
        tries = list(action.fallback)
        delivery, tried = self._first_reaching(
            decision, place, action, tries, profile, touchpoint, context, now, messages_going, quiet=quiet
        )
        fell_back = {"channel": action.channel, "fate": "fell_back", "because": "failed", "reason": why,
                     "to": tries[0][0], "delivery_id": delivery_id}
        return RoutingPlan([] if delivery is None else [delivery], [fell_back, *tried])

    def _first_reaching(
        self,
        decision: Decision,
        place: int,
        action: Action,
        tries: Sequence[tuple[str, str]],
        profile: dict[str, Any],
        touchpoint: dict[str, Any],
        context: dict[str, Any],
        now: datetime,
        going: Sequence[datetime],
        *,
        quiet: bool,
    ) -> tuple[PlannedDelivery | None, list[dict[str, Any]]]:
        """The delivery of the first of `tries` (channel, template) that reaches the person, if one does, and
        the fate of each tried; `context`: the templates' (`template_context`), `quiet`: whether quiet hours
        hold the action's messages."""
        fates: list[dict[str, Any]] = []
        for number, (channel, template) in enumerate(tries):
            then = tries[number + 1:]
            try:
                delivery, fate = self._route(
                    decision, place, action, channel, template, profile, touchpoint, context, now, going, then=then,
                    quiet=quiet,
                )
            except CannotReach as cannot:
                entry = {"channel": channel, "fate": cannot.fate, "reason": cannot.reason}
                if then:
                    entry.update(fate="fell_back", because=cannot.fate, to=then[0][0])
                fates.append(entry)
                continue
            fates.append({"channel": channel, **fate})
            return delivery, fates
        return None, fates

    def _route(
        self,
        decision: Decision,
        place: int,
        action: Action,
        channel: str,
        template: str,
        profile: dict[str, Any],
        touchpoint: dict[str, Any],
        context: dict[str, Any],
        now: datetime,
        going: Sequence[datetime],
        *,
        then: Sequence[tuple[str, str]],
        quiet: bool,
    ) -> tuple[PlannedDelivery | None, dict[str, Any]]:
        """`then`: the fallbacks after this channel. A channel with one after it falls back when its destination
        has no settings here; the last is planned all the same, its dead letter to be replayed once the
        destination is configured. `quiet`: whether quiet hours hold the action's messages. The action's `delay`
        runs from the decision's time (its event's), not `now`: an event taken in late has waited part of it."""
        route = self.routes.get(channel)
        if route is None:
            raise CannotReach("skipped", f"no route for channel {channel!r} in routes.yaml")
        if consent_revoked(profile["traits"], channel):
            raise CannotReach("blocked_by_consent", f"{channel} consent revoked by the profile")
        recipients = [decision.profile_id] if route.target == PROFILE_TARGET else reachable(route.target, profile["identifiers"])
        if then and channel in self.unserved:
            raise CannotReach("skipped", f"destination {route.destination!r} is not configured on this hub")
        max_age = self.policy.max_age
        if route.reaches_person and max_age is not None and now - decision.decided_at > max_age:
            return None, {"fate": "skipped", "reason": f"too old to send: its cause was at {decision.decided_at:%Y-%m-%d %H:%M} UTC, "
                          f"over {_hours(max_age)} before it was routed (HUB_MESSAGE_MAX_AGE_HOURS)"}
        try:
            rendered = self.templates.render(template, context)
        except TemplateError as exc:  # the fallback's template may render
            raise CannotReach("skipped", f"template {template}: {exc}") from exc
        fields = self._fields(decision.rule_id, action.fields, context)
        if composer := self._composers.get(route.destination):
            refuse_blank(rendered, composer.message_parts, composer.required_parts, template)
            refuse_too_long(rendered, composer.part_limits, composer.title, template)
        target = current_address(recipients, profile["traits"].get(route.target))
        send_at = max(now, decision.decided_at + action.delay) if action.delay else now
        fate: dict[str, Any] = {"fate": "planned"}
        quiet_hours = self.policy.quiet_hours
        held_in: dict[str, str] = {}
        if quiet_hours is not None and route.reaches_person and quiet:
            local_zone = quiet_hours.zone_of(profile["traits"], touchpoint)
            held_in = {QUIET_ZONE: local_zone.key}  # the delivery engine holds its retries and replays there too
            release = quiet_hours.release_time(send_at, local_zone)
            if release is not None:
                send_at = release
                fate = {"fate": "delayed_quiet_hours", "reason": quiet_hours.why_held(profile["traits"], touchpoint, local_zone)}
        cap = self.policy.daily_cap
        if route.reaches_person and cap is not None and not has_room(going, send_at, cap):
            return None, {"fate": "capped", "reason": f"daily cap per profile reached ({cap} messages in 24 h)"}
        if route.reaches_person and max_age is not None:  # retries, replays and outages must not send it later
            held_in[SEND_BY] = (send_at + max_age).isoformat()
        params = destination_params(action, fields)
        delivery = PlannedDelivery(
            # The action's place too: two actions of a decision may reach one target on one channel (an email
            # now and a follow-up in two days, an SMS beside a push that fell back to SMS).
            delivery_id=ordered_id(decision.decided_at, "delivery", decision.decision_id, str(place), channel, target),
            decision_id=decision.decision_id,
            profile_id=decision.profile_id,
            channel=channel,
            destination_id=route.destination,
            target=target,
            content={
                **rendered, "template": template, "rule_id": decision.rule_id, "params": params,
                **({"recipients": recipients} if route.multicast else {}), **held_in,
                **({FALLBACK: _fallback_record(decision, place, then, quiet)} if then else {}),
            },
            not_before=send_at if send_at > now else None,
        )
        fate.update(delivery_id=delivery.delivery_id, destination=route.destination)
        if delivery.not_before is not None:
            fate["not_before"] = delivery.not_before.isoformat()
        if channel != action.channel:
            fate["fallback_for"] = action.channel
        return delivery, fate

    def _fields(self, rule_id: str, fields: Mapping[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        """The action's CRM fields rendered, leaving out those that render blank.

        A null trait renders as nothing (hub/templates.py); sent as
        "", it would blank what the CRM holds (the phone a sales rep keeps on
        the Lead), as the template's `field_<ApiName>` blocks never do. A value
        that fails to render skips the update naming the rule's field, not the
        message template: the fix is in triggers.yaml.
        """
        rendered: dict[str, Any] = {}
        for name, value in fields.items():
            try:
                result = self.templates.render_value(value, context)
            except TemplateError as exc:
                why = f"rule {rule_id!r}: fields.{name}: {exc}; fix the field's value in triggers.yaml"
                raise CannotReach("skipped", why) from exc
            if not (isinstance(result, str) and not result.strip()):
                rendered[name] = result
        return rendered


def _waits_out_quiet_hours(decision: Decision, action: Action) -> bool:
    """An `immediate` rule's message goes while the person is there; one it sends later (`delay`) does not."""
    return decision.urgency != "immediate" or bool(action.delay)


def _fallback_record(decision: Decision, place: int, then: Sequence[tuple[str, str]], quiet: bool) -> dict[str, Any]:
    """What planning `then` later needs that the delivery's content does not hold already (`FALLBACK`); `quiet`
    too, since the action's delay that made quiet hours hold it is not kept, and the zone is judged again then
    (the person may have moved)."""
    return {"decision_id": decision.decision_id, "place": place, "then": [list(tried) for tried in then],
            "vars": decision.variables, "quiet": quiet}


def destination_params(action: Action, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``params`` a delivery of `action` hands its destination: the action's own, its CRM `fields` (rendered,
    when routed) and its webhook `endpoint`."""
    return {**action.params, **({"fields": dict(fields)} if fields else {}), **({"endpoint": action.endpoint} if action.endpoint else {})}


def _hours(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:g} h"
