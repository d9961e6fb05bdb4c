"""The mappings folder (HUB_MAPPINGS_DIR) as the hub runs on it: each file loaded and checked against the others.

The hub starts on `load_mappings_folder` and `touchhub mappings check` runs
it, so a clean check means the hub will start; the rules' checks across files
(`_rules_served`) run again at each reload of triggers.yaml, and a mapping's
(`check_identifier_types`) at each reload of the mapping.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from connectors.base import Destination, Registry
from hub.config_files import line_of, yaml_tree
from hub.delivery_policy import DeliveryPolicyFile, check_destination_ids, load_policy_file
from hub.errors import ConfigError, collect
from hub.identity import PREVIOUS_ID
from hub.identity_config import IDENTITY_FILE, IdentityConfig, identity_config_in
from hub.mapping import Mapping as SourceMapping, load_mapping
from hub.mapping_catalog import MappingCatalog
from hub.routes_file import ChannelRoute, load_routes
from hub.routing import ContactPolicy, Router, destination_params
from hub.rule_lines import RuleLines
from hub.rulebook import RuleBook
from hub.rules import RuleSpec
from hub.templates import TemplateRenderer, template_places


@dataclass(frozen=True)
class MappingsFolder:
    """What the hub runs on from its mappings folder (HUB_MAPPINGS_DIR), each file checked against the others."""

    mappings: MappingCatalog
    identity: IdentityConfig
    router: Router
    rulebook: RuleBook
    policy_file: DeliveryPolicyFile


def load_mappings_folder(
    folder: Path, registry: Registry, mapping_files: Mapping[str, str], *, policy: ContactPolicy | None = None,
    served: Collection[str] | None = None, mappings_reload_seconds: float = 1.0, rules_reload_seconds: float = 1.0,
) -> MappingsFolder:
    """Every start-up check of the mappings folder that needs no secret and no database, in one place: the hub
    starts on it and `touchhub mappings check` runs it, so a clean check means the hub will start.

    Args:
        mapping_files: source id -> the mapping file it reads.
        policy: the contact policy from the settings (default: ContactPolicy's).
        served: the destinations this process has settings for (None: every route is taken as served).

    Raises:
        ConfigError: every problem at once, each naming its file (a required file missing, a template that does
        not parse or does not exist, an identifier type identity.yaml does not declare, ...).
    """
    problems: list[str] = []
    identity = collect(problems, lambda: identity_config_in(folder))
    load = partial(checked_mapping, identity) if identity is not None else load_mapping
    mappings = collect(problems, lambda: MappingCatalog(folder, dict(mapping_files), mappings_reload_seconds, load))
    templates = TemplateRenderer(folder / "templates", rules_reload_seconds)
    router = collect(problems, lambda: Router(
        load_routes(folder / "routes.yaml"), templates, policy, configured=served, destinations=registry.destinations,
    ))
    rulebook = collect(problems, lambda: RuleBook(
        folder / "triggers.yaml", partial(_rules_served, router, registry.destinations, folder / "triggers.yaml"),
        rules_reload_seconds,
    ))
    policy_file = collect(problems, lambda: load_policy_file(folder))
    if policy_file is not None:
        collect(problems, lambda: check_destination_ids(policy_file, registry.destinations))
    if problems:
        raise ConfigError(problems)
    assert mappings is not None and identity is not None and router is not None
    assert rulebook is not None and policy_file is not None
    return MappingsFolder(mappings, identity, router, rulebook, policy_file)


def checked_mapping(identity: IdentityConfig, path: Path) -> SourceMapping:
    """The mapping in `path` as the hub takes it at start-up, at each reload and in a draft preview: loaded, its
    identifier types checked against identity.yaml."""
    mapping = load_mapping(path)
    check_identifier_types(identity, path, mapping)
    return mapping


def check_identifier_types(identity: IdentityConfig, path: Path, mapping: SourceMapping) -> None:
    """Refuse a mapping file producing an identifier type identity.yaml does not declare (at start-up, at each
    reload and in a draft preview), at the mapping's line: its values would be stored unnormalized under a type no
    route reads, and most often the type is a typo in the mapping (`emial`)."""
    undeclared = undeclared_identifier_types(identity, mapping)
    if undeclared:
        root = yaml_tree(path)
        raise ConfigError([
            f"{path}:{line_of(root, ('identifiers', type_))}: {undeclared_problem(type_)}" for type_ in undeclared
        ])


def undeclared_identifier_types(identity: IdentityConfig, mapping: SourceMapping) -> list[str]:
    """The identifier types `mapping` produces that `identity` does not declare (`previous_id`, an alias's
    previousId, needs none: resolution types it as a user_id or an anonymous_id)."""
    return [type_ for type_, _ in mapping.identifiers if type_ not in identity.types and type_ != PREVIOUS_ID]


def undeclared_problem(type_: str) -> str:
    """``identifiers.TYPE: reason; what to do`` for an undeclared identifier type, wherever the mapping is."""
    return f"identifiers.{type_}: not declared in {IDENTITY_FILE}; fix the type or declare it under identifier_types"


def _rules_served(
    router: Router | None, destinations: Mapping[str, type[Destination]], path: Path, rules: list[RuleSpec]
) -> None:
    """Every channel routed, every template parsing, every action's params taken by its destinations (at start-up
    and each reload of triggers.yaml): all that is wrong reported at once, each at its line of the rules file
    (`path`, read as it is now: the lines of the edit being checked)."""
    if router is None:
        return
    problems: list[str] = []
    lines = RuleLines(path)
    named = template_places(rules)
    collect(problems, lambda: router.check_channels(rules, lines))
    collect(problems, lambda: router.templates.check(sorted(named), lambda name: lines.where(*named[name])))
    collect(problems, lambda: check_action_params(rules, router.routes, destinations, lines))
    if problems:
        raise ConfigError(problems)


def check_action_params(
    rules: Sequence[RuleSpec], routes: Mapping[str, ChannelRoute], destinations: Mapping[str, type[Destination]],
    lines: RuleLines,
) -> None:
    """Refuse rules (at start-up and reload) whose action params a destination serving one of the action's
    channels would refuse, each at the action's line of the rules file: found only at send time, every message
    of the rule failed for good, and so did its replays, which send the params stored with the delivery.
    Destinations no route names, or that no installed connector provides, are not asked."""
    problems: list[str] = []
    for rule in rules:
        for number, action in enumerate(rule.respond):
            params = destination_params(action, action.fields)  # `fields` unrendered: a string renders to one
            asked: set[str] = set()
            for _, channel, _ in action.choices():
                route = routes.get(channel)
                if route is None or route.destination in asked or route.destination not in destinations:
                    continue
                asked.add(route.destination)
                problems.extend(
                    f"{lines.where(rule.id, 'respond', number)}: rule {rule.id!r}: channel {channel!r} "
                    f"(respond.{number}): {problem}; fix the action's params, which destination "
                    f"{route.destination!r} refuses at every send"
                    for problem in destinations[route.destination].check_params(params)
                )
    if problems:
        raise ConfigError(problems)
