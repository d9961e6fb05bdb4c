"""Assembling a running hub from settings: store, connectors, mappings, rules, workers.

Every configuration problem is gathered before anything starts, so a bad
setup is reported in full at once (`ConfigError` with one line per problem).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import partial

import structlog

from connectors.base import Destination, InboundRequest, Registry, Source, load_registry
from connectors.destinations.smtp_session import is_local_host
from connectors.sources.segment import MISSING_WRITE_KEY
from hub.absence import TimerEngine
from hub.delivery import DeliveryEngine
from hub.delivery_policy import PolicyBook
from hub.mappings_folder import load_mappings_folder
from hub.destination_settings import build_destinations
from hub.errors import AuthenticationError, ConfigError, collect
from hub.pipeline import Pipeline, PipelineConfig
from hub.quiet_hours import QuietHours
from hub.respond import Responder
from hub.routes_file import check_route_ends
from hub.retention import retention_worker
from hub.routing import ContactPolicy
from hub.settings import HubSettings
from hub.sources import DEFAULT_SOURCE_ID, build_source, environment, load_entries, shared_write_keys
from hub.stats import is_idle
from hub.store import forget_digest, sql
from hub.store.identity_graph import SqlIdentityGraph
from hub.store.opening import open_store
from hub.wakeups import Wakeups
from hub.workers import Worker, stop_workers

log = structlog.get_logger(__name__)
# The role in HUB_WORKERS of a worker not named after one: the timers role also keeps the store's retention.
ROLE_OF = {"retention": "timers"}
DEFAULT_SOURCE_WHERE = "HUB_DEFAULT_WRITE_KEY"  # where the default source is configured, for the problems naming it


class Hub:
    """A configured hub; `start()` runs its workers (all, or those in HUB_WORKERS) in this process."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        problems: list[str] = []
        self.registry: Registry = collect(problems, load_registry) or Registry()
        self.mapping_files: dict[str, str] = {}  # source id -> mapping file, filled by _build_sources
        self.sources: dict[str, Source] = collect(problems, lambda: self._build_sources()) or {}
        self.destinations: dict[str, Destination] = collect(problems, lambda: self._build_destinations()) or {}
        contact_policy = collect(problems, lambda: self._contact_policy())
        # Only a process that delivers knows which destinations are configured; one that leaves delivery to other
        # processes (HUB_WORKERS) may run without their credentials, and routes as if every one were.
        served = self.destinations if "delivery" in settings.worker_roles else None
        folder = collect(problems, lambda: load_mappings_folder(
            settings.mappings_dir, self.registry, self.mapping_files, policy=contact_policy, served=served,
            mappings_reload_seconds=settings.mappings_reload_seconds, rules_reload_seconds=settings.rules_reload_seconds,
        ))
        if folder is not None:
            collect(problems, lambda: check_route_ends(
                settings.mappings_dir / "routes.yaml", folder.router.routes, self.registry.destinations, folder.identity.types,
            ))
        if problems:
            raise ConfigError(problems)
        assert folder is not None
        self.mappings, self.identity, self.router, self.rulebook = folder.mappings, folder.identity, folder.router, folder.rulebook
        policy_file = folder.policy_file
        lease = timedelta(seconds=settings.lease_seconds)
        self.store = open_store(
            settings.database_url, migrate=True, lease=lease, lock_timeout=settings.sqlite_lock_timeout_seconds
        )
        try:
            keyed = forget_digest.use_keys(self.store, settings.forget_keys())
        except ConfigError:  # a node without the key on a keyed blocklist: nothing else is open yet
            self.store.dispose()
            raise
        if keyed:
            log.info("keyed the plain digests of forgotten identifiers with HUB_FORGET_KEY", rows=keyed)
        self.wakeups = Wakeups(self.store.url)
        self.pipeline_wake = self.wakeups.events["pipeline"]
        self.delivery_wake = self.wakeups.events["delivery"]
        self.timer_wake = self.wakeups.events["timers"]
        self.responder = responder = Responder(self.router)  # one for the workers and the provider callbacks
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
            quiet_hours=self.router.policy.quiet_hours, recipient=self.router.recipient, fall_back=responder.fall_back,
        )
        self.wakeups.wake_while_busy("delivery", self.delivery.wake)
        self._workers = [
            Worker("pipeline", self.pipeline.run_once, self.pipeline_wake, settings.worker_poll_seconds),
            timer_worker,
            Worker("delivery", self.delivery.run_once, self.delivery_wake, settings.worker_poll_seconds),
        ]
        if settings.retention_days:
            self._workers.append(retention_worker(self.store, settings.retention_days))

    def start(self) -> None:
        if development := self.settings.development_credentials():
            log.warning(f"using development secrets; set {', '.join(development)} before the hub is reachable")
        if self.settings.forget_key_missing():
            log.warning(
                "HUB_FORGET_KEY is not set: forgetting a person (DELETE /api/profiles/{id}) keeps plain sha256 digests of "
                "their identifiers, from which anyone reading the database or a backup gets their phone number and email "
                "back by hashing guesses; set it to a long random secret (openssl rand -hex 32), kept outside the "
                "database and the same on every node"
            )
        if self._unsubscribe_links_unreachable():
            log.warning(
                "email goes out through a relay not on this machine, but its unsubscribe links are on "
                f"{self.settings.public_url('/v1/unsubscribe')}: recipients cannot follow them to opt out, and mailbox "
                "providers take only https for one-click unsubscribe (RFC 8058); set HUB_PUBLIC_BASE_URL to the hub's "
                "public https address", smtp_host=self.settings.smtp_host,
            )
        for channel, destination in sorted(self.router.unserved.items()):
            log.warning(
                "a channel's destination is not configured: its messages fall back where a rule says, else wait "
                "in the outbox for a process that has its settings (configure it here to send them from this one), and "
                "are dead-lettered past HUB_DELIVERY_MAX_AGE_SECONDS",
                channel=channel, destination=destination,
            )
        if not self.settings.worker_roles:
            log.warning(
                "HUB_WORKERS is empty: this process runs no pipeline, timers or delivery worker and only takes events "
                "in; they wait in the inbox until other processes run the workers (touchhub worker --only pipeline "
                "--only timers --only delivery), or set HUB_WORKERS=pipeline,timers,delivery here"
            )
        for worker in self._workers:
            if ROLE_OF.get(worker.name, worker.name) in self.settings.worker_roles:
                worker.start()
        if self.settings.worker_roles:
            self.wakeups.start()

    def _unsubscribe_links_unreachable(self) -> bool:
        """Whether emails that leave this machine carry unsubscribe links no recipient can use: HUB_PUBLIC_BASE_URL
        unset (http://127.0.0.1:8000 by default, the recipient's own machine) or not https. Email is always built
        for a local relay, where the hub is a demo and its links are followed on this machine."""
        if "email_smtp" not in self.destinations or is_local_host(self.settings.smtp_host):
            return False
        return not (self.settings.public_base_url or "").lower().startswith("https://")

    def stop(self, join_seconds: float = 10.0) -> None:
        """Stop the workers, all within `join_seconds` (not that much each: `stop_workers`), then close what they used.

        What a worker still in its step uses is left open, with a warning: the
        delivery engine's loop would be closed under the send running on it
        (RuntimeError: the loop is running), the store disposed under the
        transaction that is to record the step's work. Waiting
        longer only delays an exit the process is making anyway; what the
        step claimed comes back to the queue when its lease runs out.
        """
        running = [worker.name for worker in stop_workers(self._workers, join_seconds)]
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
            source = collect(problems, lambda: build_source(self.registry, entry, where, env, folder))
            if source is None:
                continue
            sources[entry.id] = source
            located.append((where, source))
            self.mapping_files[entry.id] = entry.mapping or source.default_mapping
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
