"""Assembling a running hub from settings: store, connectors, mappings, rules, workers.

Every configuration problem is gathered before anything starts, so a bad
setup is reported in full at once (`ConfigError` with one line per problem).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TypeVar

import structlog

from connectors.base import Destination, Registry, Source, load_registry
from hub.delivery import DeliveryEngine
from hub.errors import AuthenticationError, ConfigError
from hub.mapping import Mapping as SourceMapping
from hub.mapping import load_mapping
from hub.pipeline import Pipeline, PipelineConfig
from hub.absence import TimerEngine
from hub.quiet_hours import QuietHours
from hub.respond import Responder
from hub.retry import RetryPolicy
from hub.routing import ContactPolicy, Router, load_routes
from hub.rulebook import RuleBook
from hub.settings import HubSettings
from hub.stats import is_idle
from hub.store import Store
from hub.rules import RuleSpec
from hub.templates import TemplateRenderer, template_names
from hub.workers import Worker

log = structlog.get_logger(__name__)
T = TypeVar("T")
DEFAULT_SOURCE_ID = "default"
DEFAULT_SMS_DESTINATION_ID = "twilio_sms"


class Hub:
    """A configured hub; `start()` runs its pipeline and delivery workers in this process."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        problems: list[str] = []
        self.registry: Registry = _collect(problems, load_registry) or Registry()
        self.sources: dict[str, Source] = _collect(problems, lambda: self._build_sources()) or {}
        self.mappings: dict[str, SourceMapping] = _collect(problems, lambda: self._load_mappings()) or {}
        self.router = _collect(problems, lambda: self._build_router())
        self.rulebook = _collect(problems, lambda: self._build_rulebook())
        self.destinations: dict[str, Destination] = _collect(problems, lambda: self._build_destinations()) or {}
        if problems:
            raise ConfigError(problems)
        assert self.router is not None and self.rulebook is not None
        self.store = Store(settings.database_url)
        self.store.migrate()
        self.pipeline_wake = threading.Event()
        self.delivery_wake = threading.Event()
        lease = timedelta(seconds=settings.lease_seconds)
        responder = Responder(self.router)
        self.pipeline = Pipeline(
            self.store, self.mappings, self.rulebook, responder,
            PipelineConfig(settings.worker_batch_size, lease, settings.pipeline_max_attempts, settings.default_phone_region),
            deliveries_planned=self.delivery_wake,
        )
        self.delivery = DeliveryEngine(
            self.store, self.destinations,
            RetryPolicy(
                max_attempts=settings.delivery_max_attempts,
                max_age=timedelta(seconds=settings.delivery_max_age_seconds),
                base_delay=settings.retry_base_delay_seconds,
                max_delay=settings.retry_max_delay_seconds,
            ),
            batch_size=settings.worker_batch_size, lease=lease,
        )
        self.timer_wake = threading.Event()
        self.timers = TimerEngine(
            self.store, self.rulebook, responder, batch_size=settings.worker_batch_size, lease=lease,
            deliveries_planned=self.delivery_wake,
        )
        self._workers = [
            Worker("pipeline", self.pipeline.run_once, self.pipeline_wake, settings.worker_poll_seconds),
            Worker("timers", self.timers.run_once, self.timer_wake, settings.worker_poll_seconds),
            Worker("delivery", self.delivery.run_once, self.delivery_wake, settings.worker_poll_seconds),
        ]

    def start(self) -> None:
        if self.settings.uses_development_credentials():
            log.warning("using development write key or admin token; set HUB_DEFAULT_WRITE_KEY and HUB_ADMIN_TOKEN")
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        for worker in self._workers:
            worker.stop()
        self.delivery.close()
        self.store.dispose()

    def authenticate(self, headers: Mapping[str, str]) -> Source:
        """The source whose credentials the request carries; AuthenticationError if none."""
        error = AuthenticationError("missing write key: send HTTP Basic auth with the write key as user name")
        for source in self.sources.values():
            try:
                source.verify(headers)
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
        segment = self.registry.sources["segment"]
        config = segment.validate_config("HUB_DEFAULT_WRITE_KEY", {"write_key": self.settings.default_write_key})
        return {DEFAULT_SOURCE_ID: segment(DEFAULT_SOURCE_ID, config)}

    def _load_mappings(self) -> dict[str, SourceMapping]:
        return {
            source_id: load_mapping(self.settings.mappings_dir / source.default_mapping)
            for source_id, source in self.sources.items()
        }

    def _build_router(self) -> Router:
        settings = self.settings
        try:
            quiet_hours = QuietHours.parse(settings.quiet_hours, settings.default_timezone)
        except ValueError as exc:
            raise ConfigError(f"HUB_QUIET_HOURS / HUB_DEFAULT_TIMEZONE: {exc}") from None
        policy = ContactPolicy(daily_cap=settings.daily_message_cap, quiet_hours=quiet_hours)
        templates = TemplateRenderer(settings.mappings_dir / "templates")
        return Router(load_routes(settings.mappings_dir / "routes.yaml"), templates, policy)

    def _build_rulebook(self) -> RuleBook:
        router = self.router

        def templates_parse(rules: list[RuleSpec]) -> None:
            if router is not None:
                router.templates.check(sorted(template_names(rules)))

        return RuleBook(self.settings.mappings_dir / "triggers.yaml", templates_parse, self.settings.rules_reload_seconds)

    def _build_destinations(self) -> dict[str, Destination]:
        twilio = self.registry.destinations["twilio_sms"]
        settings = self.settings
        config = twilio.validate_config(
            "HUB_TWILIO_*",
            {
                "account_sid": settings.twilio_account_sid,
                "auth_token": settings.twilio_auth_token,
                "from_number": settings.twilio_from_number,
                "api_base_url": settings.twilio_api_base_url,
                "timeout_seconds": settings.send_timeout_seconds,
            },
        )
        return {DEFAULT_SMS_DESTINATION_ID: twilio(DEFAULT_SMS_DESTINATION_ID, config)}


def _collect(problems: list[str], build: Callable[[], T]) -> T | None:
    try:
        return build()
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
