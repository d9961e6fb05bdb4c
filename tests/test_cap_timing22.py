"""When the daily cap counts a message that went late, and how late a retry may still go."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.retry import RetryPolicy
from hub.store.schema import deliveries
from tests.conftest import cart_nudge_rules, make_settings, message, serve_hub, wait_for
from tests.test_fallbacks21 import cart_mappings


def email_nudge_mappings(tmp_path: Path) -> Path:
    """The shipped mappings with one rule: an email when a cart is left."""
    mappings = cart_mappings(tmp_path)
    (mappings / "triggers.yaml").write_text(cart_nudge_rules("      - {channel: email, template: cart_nudge.email.j2}\n"))
    return mappings


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_message_that_went_after_a_day_of_retries_spends_the_day_it_went(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """With a daily cap of 1, Ana's first nudge was first due 25 h ago and went only now, its relay down until
    then: the cap counted it when it was first due, outside the day, and a second nudge went beside it."""
    sandbox.smtp.fail_next("451 4.3.0 Try again later", stage="rcpt")
    settings = make_settings(tmp_path, database_url=database_url, mappings_dir=email_nudge_mappings(tmp_path),
                             daily_message_cap=1, quiet_hours="", retry_base_delay_seconds=3600,
                             retry_max_delay_seconds=3600, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "first_name": "Ana"}),
                 message(userId="u-ana", event="Cart Viewed"))
        wait_for(lambda: [d["status"] for d in hub.admin("/api/deliveries")["deliveries"]] == ["retrying"])
        with hub.hub.store.write() as connection:  # the day of retries passes: first due 25 h ago, due again now
            connection.execute(update(deliveries).values(first_due_at=utcnow() - timedelta(hours=25),
                                                         next_attempt_at=utcnow()))
        hub.hub.delivery_wake.set()
        hub.settle()
        assert [d["status"] for d in hub.admin("/api/deliveries")["deliveries"]] == ["sent"]
        hub.send(message(userId="u-ana", event="Cart Viewed"))
        hub.settle()
        newest = hub.admin("/api/decisions")["decisions"][0]
    assert [action["fate"] for action in newest["actions"]] == ["capped"], newest["actions"]
    assert len(sandbox.smtp.received) == 1


def test_a_retry_whose_jittered_wait_overshoots_the_budget_is_tried_at_its_end() -> None:
    """With 5 attempts and 60 s of a 10-minute budget left, about half the jitter's draws were longer than those
    60 s, and each dead-lettered the delivery instead of trying it once more. A provider's Retry-After past the
    budget still dead-letters it: no try before then would be taken."""
    policy = RetryPolicy(max_attempts=8, max_age=timedelta(minutes=10), base_delay=30.0, max_delay=300.0)
    waits = [policy.next_delay(3, timedelta(minutes=9), None) for _ in range(200)]
    assert None not in waits, f"{waits.count(None)} of 200 dead-lettered with 5 attempts and 60 s left"
    assert max(waits) == 60  # type: ignore[type-var]
    assert 30 <= policy.next_delay(3, timedelta(minutes=9), 30.0) <= 60  # type: ignore[operator]
    assert policy.next_delay(3, timedelta(minutes=9), 90.0) is None
