"""Assembling a running hub from settings: store, connectors, mappings, rules, workers.

Every configuration problem is gathered before anything starts, so a bad
setup is reported in full at once (`ConfigError` with one line per problem).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import structlog

from connectors.base import Destination, InboundRequest, Registry, Source, load_registry
from connectors.sources.segment import MISSING_WRITE_KEY, SegmentSource
from hub.absence import TimerEngine
from hub.delivery import DeliveryEngine
from hub.delivery_policy import DeliveryPolicyFile, PolicyBook, check_destination_ids, load_policy_file
from hub.destination_settings import build_destinations
from hub.errors import AuthenticationError, ConfigError
from hub.identity import PREVIOUS_ID
from hub.identity_config import IDENTITY_FILE, IdentityConfig, identity_config_in
from hub.mapping_catalog import MappingCatalog
from hub.pipeline import Pipeline, PipelineConfig
from hub.quiet_hours import QuietHours
from hub.respond import Responder
from hub.routing import ChannelRoute, ContactPolicy, Router, destination_params, load_routes
from hub.rulebook import RuleBook
from hub.rule_lines import RuleLines
from hub.rules import RuleSpec
from hub.settings import HubSettings
from hub.sources import build_source, environment, load_entries
from hub.stats import is_idle
from hub.store import sql
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.opening import open_store
from hub.templates import TemplateRenderer
from hub.wakeups import Wakeups
from hub.workers import Worker

log = structlog.get_logger(__name__)
T = TypeVar("T")
DEFAULT_SOURCE_ID = "default"
DEFAULT_SOURCE_WHERE = "HUB_DEFAULT_WRITE_KEY"  # where the default source is configured, for the problems naming it


class Hub:
    """A configured hub; `start()` runs its workers (all, or those in HUB_WORKERS) in this process."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        problems: list[str] = []
        self.registry: Registry = _collect(problems, load_registry) or Registry()
        self.mapping_files: dict[str, str] = {}  # source id -> mapping file, filled by _build_sources
        self.sources: dict[str, Source] = _collect(problems, lambda: self._build_sources()) or {}
        self.destinations: dict[str, Destination] = _collect(problems, lambda: self._build_destinations()) or {}
        contact_policy = _collect(problems, lambda: self._contact_policy())
        # Only a process that delivers knows which destinations are configured; one that leaves delivery to other
        # processes (HUB_WORKERS) may run without their credentials, and routes as if every one were.
        served = self.destinations if "delivery" in settings.worker_roles else None
        folder = _collect(problems, lambda: load_mappings_folder(
            settings.mappings_dir, self.registry, self.mapping_files, policy=contact_policy, served=served,
            mappings_reload_seconds=settings.mappings_reload_seconds, rules_reload_seconds=settings.rules_reload_seconds,
        ))
        if problems:
            raise ConfigError(problems)
        assert folder is not None
        self.mappings, self.identity, self.router, self.rulebook = folder.mappings, folder.identity, folder.router, folder.rulebook
        policy_file = folder.policy_file
        lease = timedelta(seconds=settings.lease_seconds)
        self.store = open_store(settings.database_url, migrate=True, lease=lease)
        self.wakeups = Wakeups(self.store.url)
        self.pipeline_wake = self.wakeups.events["pipeline"]
        self.delivery_wake = self.wakeups.events["delivery"]
        self.timer_wake = self.wakeups.events["timers"]
        responder = Responder(self.router)
        self.timers = TimerEngine(
            self.store, self.rulebook, responder, batch_size=settings.timer_batch_size, lease=lease,
            max_attempts=settings.pipeline_max_attempts, deliveries_planned=partial(self.wakeups.announce, "delivery"),
        )
        timer_worker = Worker(
            "timers", self.timers.run_once, self.timer_wake, settings.worker_poll_seconds, next_due=self.timers.next_due,
            full_batch=settings.timer_batch_size, gather_seconds=settings.timer_gather_seconds,
        )
        self.wakeups.follow_timers(timer_worker.wake_by)  # a timer due before the worker's next look wakes it
        self.pipeline = Pipeline(
            self.store, self.mappings, self.rulebook, responder,
            PipelineConfig(
                settings.worker_batch_size, lease, settings.pipeline_max_attempts, settings.default_phone_region,
                self.identity, settings.identity_cache_size, settings.pipeline_backlog_batch_size,
            ),
            deliveries_planned=partial(self.wakeups.announce, "delivery"),
            timers_armed=partial(self.wakeups.announce, "timers"),
        )
        self.delivery = DeliveryEngine(
            self.store, self.destinations, PolicyBook(policy_file, settings),
            batch_size=settings.delivery_batch_size, lease=lease, concurrency=settings.delivery_concurrency,
            quiet_hours=self.router.policy.quiet_hours, recipient=self.router.recipient,
        )
        self.wakeups.wake_while_busy("delivery", self.delivery.wake)
        self._workers = [
            Worker("pipeline", self.pipeline.run_once, self.pipeline_wake, settings.worker_poll_seconds),
            timer_worker,
            Worker("delivery", self.delivery.run_once, self.delivery_wake, settings.worker_poll_seconds),
        ]

    def start(self) -> None:
        if development := self.settings.development_credentials():
            log.warning(f"using development secrets; set {', '.join(development)} before the hub is reachable")
        for channel, destination in sorted(self.router.unserved.items()):
            log.warning(
                "a channel's destination is not configured: its messages fall back where a rule says, else wait "
                "in the outbox for a process that has its settings (configure it here to send them from this one), and "
                "are dead-lettered past HUB_DELIVERY_MAX_AGE_SECONDS",
                channel=channel, destination=destination,
            )
        for worker in self._workers:
            if worker.name in self.settings.worker_roles:
                worker.start()
        if self.settings.worker_roles:
            self.wakeups.start()

    def stop(self, join_seconds: float = 10.0) -> None:
        """Stop the workers, giving each `join_seconds` to end its step, then close what they used.

        What a worker still in its step uses is left open, with a warning: the
        delivery engine's loop would be closed under the send running on it
        (RuntimeError: the loop is running), the store disposed under the
        transaction that is to record the step's work. Waiting
        longer only delays an exit the process is making anyway; what the
        step claimed comes back to the queue when its lease runs out.
        """
        running = [worker.name for worker in self._workers if not worker.stop(join_seconds)]
        for name in running:
            log.warning(
                "a worker is still in its step after the stop's wait; what it uses is left open, and the rows it "
                "claimed come back after HUB_LEASE_SECONDS", worker=name, waited_seconds=join_seconds,
            )
        self.wakeups.stop()
        if "delivery" not in running:
            self.delivery.close()
        if not running:
            self.store.dispose()

    def dead_workers(self) -> list[tuple[str, str]]:
        """(name, reason) of each worker this hub started whose thread ended without `stop()`: its work piles up
        until the process is restarted. Reads no store, for the liveness probe."""
        return [(worker.name, worker.death) for worker in self._workers if worker.death is not None]

    def authenticate(self, request: InboundRequest) -> Source:
        """The SDK-ingest source whose write key the request carries; AuthenticationError if none."""
        error = AuthenticationError(MISSING_WRITE_KEY)
        for source in self.sources.values():
            if not source.sdk_ingest:
                continue
            try:
                source.verify(request)
            except AuthenticationError as exc:
                error = exc
                continue
            return source
        raise error

    def wait_until_idle(self, timeout: float, settle: float = 0.2) -> bool:
        """Wait until no event is pending and no delivery is due or retrying (demo and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pipeline_wake.set()
            if is_idle(self.store):
                time.sleep(settle)
                if is_idle(self.store):
                    return True
            time.sleep(0.05)
        return False

    def _build_sources(self) -> dict[str, Source]:
        """The `default` Segment source (HUB_DEFAULT_WRITE_KEY) plus every source in sources.yaml."""
        segment = self.registry.sources["segment"]
        config = segment.validate_config(DEFAULT_SOURCE_WHERE, {"write_key": self.settings.default_write_key})
        sources: dict[str, Source] = {DEFAULT_SOURCE_ID: segment(DEFAULT_SOURCE_ID, config)}
        self.mapping_files[DEFAULT_SOURCE_ID] = segment.default_mapping
        located = [(DEFAULT_SOURCE_WHERE, sources[DEFAULT_SOURCE_ID])]
        folder = self.settings.mappings_dir
        problems: list[str] = []
        env = environment()
        for where, entry in load_entries(folder):
            if entry.id == DEFAULT_SOURCE_ID:
                problems.append(f"{where}.id: 'default' is the built-in source of HUB_DEFAULT_WRITE_KEY; pick another id")
                continue
            try:
                sources[entry.id] = build_source(self.registry, entry, where, env, folder)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            located.append((where, sources[entry.id]))
            self.mapping_files[entry.id] = entry.mapping or sources[entry.id].default_mapping
        problems.extend(shared_write_keys(located))
        if problems:
            raise ConfigError(problems)
        return sources

    def _contact_policy(self) -> ContactPolicy:
        settings = self.settings
        try:
            quiet_hours = QuietHours.parse(settings.quiet_hours, settings.default_timezone)
        except ValueError as exc:
            raise ConfigError(f"HUB_QUIET_HOURS / HUB_DEFAULT_TIMEZONE: {exc}") from None
        return ContactPolicy(
            daily_cap=settings.daily_message_cap, quiet_hours=quiet_hours,
            max_age=timedelta(hours=settings.message_max_age_hours),
        )

    def _build_destinations(self) -> dict[str, Destination]:
        return build_destinations(self.registry, self.settings, forget_tokens=self._forget_push_tokens)

    def _forget_push_tokens(self, tokens: Sequence[str], reason: str) -> None:
        """The push destination called these tokens dead, for `reason` (which names the provider's code, for
        `profiles explain`): routing must stop choosing them."""
        with self.store.write() as connection:
            sql.lock_profiles(connection)
            removed = SqlIdentityGraph(connection).detach("push_token", tokens, reason)
        log.info("forgot dead push tokens", reported=len(tokens), removed=removed, reason=reason)


def dead_workers_line(dead: Sequence[tuple[str, str]]) -> str:
    """`Hub.dead_workers` in one line, as the liveness probe and `touchhub worker` report them."""
    return "; ".join(f"worker {name} died ({reason})" for name, reason in dead)


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
    mappings = _collect(problems, lambda: MappingCatalog(folder, dict(mapping_files), mappings_reload_seconds))
    identity = _collect(problems, lambda: _identity_for(folder, mappings))
    templates = TemplateRenderer(folder / "templates", rules_reload_seconds)
    router = _collect(problems, lambda: Router(
        load_routes(folder / "routes.yaml"), templates, policy, configured=served, destinations=registry.destinations,
    ))
    rulebook = _collect(problems, lambda: RuleBook(
        folder / "triggers.yaml", partial(_rules_served, router, registry.destinations, folder / "triggers.yaml"),
        rules_reload_seconds,
    ))
    policy_file = _collect(problems, lambda: load_policy_file(folder))
    if policy_file is not None:
        _collect(problems, lambda: check_destination_ids(policy_file, registry.destinations))
    if problems:
        raise ConfigError(problems)
    assert mappings is not None and identity is not None and router is not None
    assert rulebook is not None and policy_file is not None
    return MappingsFolder(mappings, identity, router, rulebook, policy_file)


def _identity_for(folder: Path, mappings: MappingCatalog | None) -> IdentityConfig:
    """identity.yaml, checked against the mappings: every identifier type they produce must be declared.

    A mappings folder without the file (one made before it existed) gets the shipped defaults.
    """
    config = identity_config_in(folder)
    undeclared = [
        f"{folder / IDENTITY_FILE}: identifier_types: {type_!r} (used by mapping {mapping.name}) is not declared"
        for mapping in (mappings or {}).values()
        for type_ in dict(mapping.identifiers)
        if type_ not in config.types and type_ != PREVIOUS_ID
    ]
    if undeclared:
        raise ConfigError(undeclared)
    return config


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
    named = _templates_named(rules)
    _collect(problems, lambda: router.check_channels(rules, lines))
    _collect(problems, lambda: router.templates.check(sorted(named), lambda name: lines.where(*named[name])))
    _collect(problems, lambda: check_action_params(rules, router.routes, destinations, lines))
    if problems:
        raise ConfigError(problems)


def _templates_named(rules: Sequence[RuleSpec]) -> dict[str, tuple[str | int, ...]]:
    """Each template the rules may render -> (rule id, keys...) of the first place naming it, for `RuleLines.where`."""
    named: dict[str, tuple[str | int, ...]] = {}
    for rule in rules:
        for number, action in enumerate(rule.respond):
            for keys, _, template in action.choices():
                named.setdefault(template, (rule.id, "respond", number, *keys, "template"))
    return named


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


def shared_write_keys(located: Sequence[tuple[str, Source]]) -> list[str]:
    """A problem for each source whose write key an earlier one already has (each source given with where it is
    configured; the default one first, so a clash is always named at its sources.yaml entry).

    The SDK endpoints file a request under the first source its key opens
    (`Hub.authenticate`): the later source would silently receive nothing, and
    its traffic would go through the other's mapping. Keys are compared by the
    digest the sources keep, never in clear.
    """
    first: dict[bytes, str] = {}
    problems = []
    for where, source in located:
        digest = source.write_key_digest if isinstance(source, SegmentSource) else None
        if digest is None:
            continue
        if digest in first:
            problems.append(
                f"{where}.secrets.write_key: is the same write key as {first[digest]}, whose source would take "
                "all the SDK traffic sent with it; give each source a key of its own"
            )
        else:
            first[digest] = where
    return problems


def _collect(problems: list[str], build: Callable[[], T]) -> T | None:
    try:
        return build()
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
