"""A timer keeps the version of the rule that armed it: only an edit since is judged again when it comes due."""

from __future__ import annotations

import shutil
from pathlib import Path

from hub.clock import utcnow
from hub.model import RawEvent
from hub.settings import PROJECT_MAPPINGS
from hub.store import inbox
from hub.store.schema import timers as timers_table
from tests.conftest import message
from tests.test_absence_timers import hub_on, timer_statuses
from tests.test_timer_inbox_hold19 import ago


FREE_PLAN_NUDGE = """rules:
  - id: free_plan_nudge
    when:
      absence:
        after: {event: Cart Viewed, where: [{field: profile.plan, op: eq, value: free}]}
        without: {event: Order Completed}
        within: 2m
    respond: [{channel: email, template: cart_abandonment.email.j2}]
    vars: {discount_code: C, discount_percent: 10, cart_url: "https://shop.example.com/cart"}
"""


def test_a_trait_changed_after_the_cart_does_not_make_an_unedited_rule_look_rolled_out(tmp_path: Path) -> None:
    """The rule was not edited: amy, on the free plan, left her cart, and a CRM sync then set her plan (an
    identify: not an action, not the awaited order). When the timer came due, `_ruled_out` judged the rule's
    `after` again with her traits of now, called the unchanged rule "edited" ("the edited rule no longer waits
    after this event"), held the nudge for a rollout that was not happening (warning "timers held ... a rollout
    under way?") and lapsed it 15 minutes after it was armed. The wait began by the rule as the pipeline had
    it; what must hold when it fires is for the rule's fire-time conditions to say."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "triggers.yaml").write_text(FREE_PLAN_NUDGE)
    hub = hub_on(tmp_path, mappings_dir=mappings)
    events = [
        message("identify", userId="amy", traits={"email": "amy@example.com", "plan": "free"}, timestamp=ago(days=1)),
        message(userId="amy", event="Cart Viewed", timestamp=ago(minutes=3)),
        message("identify", userId="amy", traits={"plan": "pro"}, timestamp=ago(minutes=2, seconds=30)),
    ]
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in events], utcnow())
    while hub.pipeline.run_once():
        pass
    assert timer_statuses(hub) == ["pending"]
    assert hub.timers.run_once() == 1
    with hub.store.read() as connection:
        [timer] = connection.execute(timers_table.select()).mappings().all()
    assert timer["status"] != "pending", (
        f"an unedited rule's timer was held as if a rollout were under way, until {timer['due_at']}"
    )
    assert "edited" not in (timer["reason"] or ""), timer["reason"]
