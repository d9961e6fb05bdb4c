"""Admin API list filters given blank (twenty-fifth session's contract audit)."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_TOKEN, RunningHub


@pytest.mark.parametrize("path, blank", [
    ("/api/touchpoints", "source"), ("/api/touchpoints", "event"), ("/api/decisions", "rule_id"),
    ("/api/deliveries", "profile_id"),
])
def test_a_blank_list_filter_is_refused_not_read_as_no_filter(running_hub: RunningHub, path: str, blank: str) -> None:
    """A blank `source` or `event` of /api/touchpoints and `rule_id` of /api/decisions were read as no filter (as a
    blank `profile_id` was until it was refused): a script's `?rule_id=$RULE` with RULE unset got every rule's
    decisions, with no word that its filter was dropped."""
    answer = running_hub.client.get(path, params={blank: " "}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith(f"{blank}: needs a value")
