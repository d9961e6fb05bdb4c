"""Per-destination delivery policy from `mappings/delivery.yaml`: retries, circuit breaker, rate limit, sends in flight.

Ops tune how hard the hub pushes each provider without a deploy. Every value
left out falls back to the hub-wide defaults in settings (HUB_DELIVERY_*,
HUB_RETRY_*, HUB_BREAKER_*), so the file lists only what differs. The file
itself is optional: without it every destination gets the defaults.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from hub.config_files import load_model
from hub.durations import PositiveDuration
from hub.errors import ConfigError
from hub.retry import LONGEST_PROVIDER_WAIT_SECONDS, RetryPolicy
from hub.settings import HubSettings
from hub.throttle import CircuitBreaker, GoneMark, ProviderWait, TokenBucket

POLICY_FILE = "delivery.yaml"
T = TypeVar("T")


class RetrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_attempts: int | None = Field(None, ge=1, description="Tries before the delivery is dead-lettered.")
    max_age: PositiveDuration | None = Field(None, description="Give up (dead-letter) once a delivery is this long past the time it was due (the end of its `delay` or quiet hours), or its last replay.")
    base_delay: PositiveDuration | None = Field(None, description="First backoff step; doubles per try, full jitter.")
    max_delay: PositiveDuration | None = Field(None, description="Longest wait between two tries (Retry-After may exceed it).")


class BreakerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    failure_threshold: int | None = Field(None, ge=1, description="Consecutive retryable failures that open it.")
    reset_after: PositiveDuration | None = Field(None, description="How long it stays open before one probe is sent.")


class RateLimitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_second: float = Field(gt=0, description="Average sends per second from this process.")
    burst: int = Field(1, ge=1, description="Sends allowed back to back before the average applies.")


class DestinationPolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retry: RetrySpec = RetrySpec()
    circuit_breaker: BreakerSpec = BreakerSpec()
    rate_limit: RateLimitSpec | None = None
    max_in_flight: int | None = Field(
        None, ge=1,
        description="Sends to this destination in flight at once in each process (default: any of "
                    "HUB_DELIVERY_CONCURRENCY). More wait, due, in the outbox: a receiver that slows down or hangs "
                    "cannot take every place and hold back the other destinations' deliveries.",
    )


class DeliveryPolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    destinations: dict[str, DestinationPolicySpec] = Field(
        default_factory=dict, description="Policy by destination id; destinations not listed use the defaults."
    )


@dataclass(frozen=True)
class DestinationPolicy:
    """What the delivery engine applies to one destination; breaker, bucket, wait and gone mark hold live state."""

    retry: RetryPolicy
    breaker: CircuitBreaker
    rate_limit: TokenBucket | None
    max_in_flight: int | None
    provider_wait: ProviderWait
    gone: GoneMark


def load_policy_file(folder: Path) -> DeliveryPolicyFile:
    path = folder / POLICY_FILE
    return load_model(path, DeliveryPolicyFile) if path.exists() else DeliveryPolicyFile()


def build_policy(destination_id: str, spec: DestinationPolicySpec, settings: HubSettings) -> DestinationPolicy:
    retry, breaker = spec.retry, spec.circuit_breaker
    max_age = _given(retry.max_age, timedelta(seconds=settings.delivery_max_age_seconds))
    return DestinationPolicy(
        retry=RetryPolicy(
            max_attempts=_given(retry.max_attempts, settings.delivery_max_attempts),
            max_age=max_age,
            base_delay=_seconds(retry.base_delay, settings.retry_base_delay_seconds),
            max_delay=_seconds(retry.max_delay, settings.retry_max_delay_seconds),
        ),
        breaker=CircuitBreaker(
            destination_id,
            failure_threshold=_given(breaker.failure_threshold, settings.breaker_failure_threshold),
            reset_after=_seconds(breaker.reset_after, settings.breaker_reset_seconds),
        ),
        rate_limit=TokenBucket(spec.rate_limit.per_second, spec.rate_limit.burst) if spec.rate_limit else None,
        max_in_flight=spec.max_in_flight,
        # No longer than the retry policy honours a Retry-After (the max age), nor than an hour.
        provider_wait=ProviderWait(destination_id, min(LONGEST_PROVIDER_WAIT_SECONDS, max_age.total_seconds())),
        gone=GoneMark(destination_id),
    )


class PolicyBook:
    """Policies by destination id, built on first use for destinations the file does not list."""

    def __init__(self, specs: DeliveryPolicyFile, settings: HubSettings) -> None:
        self._specs = specs.destinations
        self._settings = settings
        self._built: dict[str, DestinationPolicy] = {}

    def for_destination(self, destination_id: str) -> DestinationPolicy:
        policy = self._built.get(destination_id)
        if policy is None:
            spec = self._specs.get(destination_id, DestinationPolicySpec())
            policy = self._built.setdefault(destination_id, build_policy(destination_id, spec, self._settings))
        return policy


def check_destination_ids(policy_file: DeliveryPolicyFile, known_ids: Collection[str]) -> None:
    """Refuse a policy for a destination id nothing has, as routes and triggers refuse names they do not know:
    a misspelt `twilo_sms:` was accepted in silence, and the rate limit and retry budget ops meant for Twilio
    never applied.

    `known_ids`: every installed destination connector's slug (a destination's
    id is its slug), configured or not; the shipped file tunes `chat_webhook`,
    which a hub without its URL does not build.
    """
    known = ", ".join(sorted(known_ids))
    unknown = [destination_id for destination_id in policy_file.destinations if destination_id not in known_ids]
    if unknown:
        raise ConfigError([
            f"{POLICY_FILE}: destinations.{destination_id}: no such destination (correct the id, or remove its "
            f"entry); known: {known}"
            for destination_id in unknown
        ])


def _given(value: T | None, default: T) -> T:
    """The file's value where it gives one (0 included: the model refuses what must not be), else the default."""
    return value if value is not None else default


def _seconds(value: timedelta | None, default: float) -> float:
    return value.total_seconds() if value is not None else default
