"""Retry policy, circuit breaker and token bucket on their own, with a hand-driven clock."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from hub.delivery_policy import PolicyBook, load_policy_file
from hub.errors import ConfigError
from hub.retry import RetryPolicy
from hub.settings import PROJECT_MAPPINGS
from hub.throttle import CircuitBreaker, TokenBucket
from tests.conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once_after_reset() -> None:
    clock = Clock()
    breaker = CircuitBreaker("twilio_sms", failure_threshold=3, reset_after=10, clock=clock)
    for _ in range(2):
        assert breaker.admit() == 0
        breaker.record(healthy=False)
    breaker.record(healthy=True)  # a success in between resets the count
    for _ in range(3):
        assert breaker.admit() == 0
        breaker.record(healthy=False)
    assert breaker.state == "open"
    clock.now += 4
    assert breaker.admit() == pytest.approx(6)

    clock.now += 6
    assert breaker.admit() == 0 and breaker.state == "half_open"  # the probe
    assert 0 < breaker.admit() <= 1  # everyone else keeps waiting while it is out
    breaker.record(healthy=False)
    assert breaker.state == "open" and breaker.admit() == pytest.approx(10)

    clock.now += 10
    assert breaker.admit() == 0
    breaker.record(healthy=True)
    assert breaker.state == "closed" and breaker.admit() == 0


def test_a_probe_that_never_reports_is_abandoned_after_reset_after_and_the_next_caller_probes() -> None:
    """A probe whose caller never recorded a verdict (its send raised, or was cancelled) left the breaker
    half-open for the life of the process: every later call was told to wait, and none was ever made."""
    clock = Clock()
    breaker = CircuitBreaker("twilio_sms", failure_threshold=1, reset_after=10, clock=clock)
    breaker.record(healthy=False)
    clock.now += 10
    assert breaker.admit() == 0  # the probe, never heard of again
    clock.now += 9.5
    assert 0 < breaker.admit() <= 1 and breaker.state == "half_open"  # it may still answer
    clock.now += 0.5
    assert breaker.admit() == 0 and breaker.state == "half_open"  # abandoned: this call is the probe
    assert 0 < breaker.admit() <= 1
    breaker.record(healthy=True)
    assert breaker.state == "closed" and breaker.admit() == 0


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.reserve(max_wait=0) for _ in range(3)] == [0, 0, 0]
    assert bucket.reserve(max_wait=0.05) is None  # the next token is 0.1 s away
    assert bucket.wait_time() == pytest.approx(0.1)
    assert bucket.reserve(max_wait=1) == pytest.approx(0.1)  # taken, to be used after sleeping
    assert bucket.reserve(max_wait=1) == pytest.approx(0.2)
    clock.now += 10
    assert [bucket.reserve(max_wait=0) for _ in range(3)] == [0, 0, 0]  # refills only up to the burst
    assert bucket.reserve(max_wait=0) is None


def test_retry_policy_honours_retry_after_and_stops_at_attempts_and_age() -> None:
    policy = RetryPolicy(max_attempts=4, max_age=timedelta(minutes=10), base_delay=1, max_delay=8)
    delays = [policy.next_delay(attempt, timedelta(seconds=1), None) for attempt in (1, 2, 3)]
    assert all(delay is not None and 0 <= delay <= 8 for delay in delays)
    assert policy.next_delay(4, timedelta(seconds=1), None) is None
    assert policy.next_delay(1, timedelta(seconds=1), retry_after=120) == 120
    assert policy.next_delay(1, timedelta(minutes=9), retry_after=120) is None  # would outlive max_age
    assert policy.next_delay(1, timedelta(minutes=11), None) is None


def test_policy_file_overrides_defaults_per_destination(tmp_path: Path) -> None:
    (tmp_path / "delivery.yaml").write_text(
        "destinations:\n"
        "  twilio_sms:\n"
        "    retry: {max_attempts: 3, base_delay: 0.5s}\n"
        "    circuit_breaker: {failure_threshold: 2, reset_after: 1m}\n"
        "    rate_limit: {per_second: 5, burst: 2}\n"
    )
    book = PolicyBook(load_policy_file(tmp_path), make_settings(tmp_path, delivery_max_attempts=9))
    sms, other = book.for_destination("twilio_sms"), book.for_destination("outbound_webhook")
    assert (sms.retry.max_attempts, sms.retry.base_delay, sms.retry.max_delay) == (3, 0.5, 0.05)
    assert (sms.breaker.failure_threshold, sms.breaker.reset_after) == (2, 60)
    assert sms.rate_limit is not None and (sms.rate_limit.rate, sms.rate_limit.burst) == (5, 2)
    assert (other.retry.max_attempts, other.breaker.failure_threshold, other.rate_limit) == (9, 5, None)
    assert book.for_destination("twilio_sms") is sms  # one live breaker per destination


def test_policy_file_problems_name_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "delivery.yaml").write_text(
        "destinations:\n  twilio_sms:\n    retry: {max_attempts: 0, max_age: soon}\n    rate_limit: {burst: 2}\n"
    )
    with pytest.raises(ConfigError) as problems:
        load_policy_file(tmp_path)
    text = "\n".join(problems.value.problems)
    for key in ("retry.max_attempts", "retry.max_age", "rate_limit.per_second"):
        assert f"delivery.yaml: destinations.twilio_sms.{key}" in text
    assert load_policy_file(tmp_path / "missing").destinations == {}
    assert "twilio_sms" in load_policy_file(PROJECT_MAPPINGS).destinations


@pytest.mark.parametrize("spec", ["retry: {max_age: 0s}", "retry: {base_delay: 0s}", "retry: {max_delay: 0s}",
                                  "circuit_breaker: {reset_after: 0s}"])
def test_a_zero_duration_is_refused_as_the_setting_it_overrides_is(tmp_path: Path, spec: str) -> None:
    """HUB_DELIVERY_MAX_AGE_SECONDS, HUB_RETRY_*_DELAY_SECONDS and HUB_BREAKER_RESET_SECONDS must be > 0, but the
    file took 0s for each: `max_age: 0s` became the 24 h default (`or`), and a zero delay or reset retried and
    probed with no pause, hammering the provider."""
    (tmp_path / "delivery.yaml").write_text(f"destinations:\n  twilio_sms:\n    {spec}\n")
    with pytest.raises(ConfigError) as refused:
        load_policy_file(tmp_path)
    key = spec.replace(": {", ".").partition(":")[0]
    [problem] = refused.value.problems
    assert f"delivery.yaml: destinations.twilio_sms.{key}: " in problem and "must be more than 0s" in problem

