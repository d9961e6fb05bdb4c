"""Trigger rules edited while the hub runs: timers a rename leaves behind are announced, a reload is seen whole or
not at all, and a decision's timer says when a late follow-up withdrew its nudge."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from typer.testing import CliRunner

from hub import absence
from hub import rulebook as rulebook_module
from hub.absence import RULE_ROLLOUT
from hub.cli import app
from hub.decision_explain import explain
from hub.rulebook import RuleBook
from hub.store import decisions
from tests.conftest import logs_of, message
from tests.test_absence_timers import (
    AMY,
    ORDER_NUDGE,
    accept,
    ago,
    fresh_now,  # noqa: F401  (autouse: `ago` counts from this test's start)
    nudge_hub,
    reload_rules,
    timer_rows,
)
from tests.test_late_followups22 import BOTH_DATABASES, T_CART, cart_nudged, late_order

BOB = message("identify", userId="bob", traits={"email": "bob@example.com"}, timestamp=ago(days=1))


def test_a_rename_warns_at_the_reload_of_the_timers_the_old_id_leaves_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops renamed order_nudge to order_nudge_v2 on a hot reload: every cart waiting on the old id lapsed when
    due, and nothing said so until the first came due, long after the edit."""
    hub = nudge_hub(tmp_path, ORDER_NUDGE.replace("WAIT", "30m"))
    accept(hub, AMY, BOB, *(message(userId=name, event="Cart Viewed", timestamp=ago(minutes=3)) for name in ("amy", "bob")))
    renamed = ORDER_NUDGE.replace("WAIT", "30m").replace("id: order_nudge\n", "id: order_nudge_v2\n")
    reload_rules(hub, tmp_path / "mappings" / "triggers.yaml", renamed)
    with logs_of(monkeypatch, absence) as logs:
        assert hub.timers.run_once() == 0  # nothing due yet: the warning comes at the reload, not at the lapse
        assert hub.timers.run_once() == 0  # once per reload
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert (warning["rule"], warning["timers"], warning["reason"]) == ("order_nudge", 2, "rule removed from triggers.yaml")
    assert "put the rule back under this id" in warning["event"]
    [first, _] = timer_rows(hub)
    hub.timers.run_once(first["due_at"] + RULE_ROLLOUT)  # when due, past the rollout hold: lapsed, with why
    assert {(row["status"], row["reason"]) for row in timer_rows(hub)} == {("lapsed", "rule removed from triggers.yaml")}


OLD_RULES = """rules:
  - id: cart_abandonment
    when: {absence: {after: {event: Product Added}, without: any, within: 2m}}
    respond: [{channel: email, template: cart_abandonment.email.j2}]
"""
NEW_RULES = """rules:
  - id: cart_abandonment
    enabled: false
    when: {absence: {after: {event: Product Added}, without: any, within: 2m}}
    respond: [{channel: email, template: cart_abandonment.email.j2}]
  - id: cart_abandon_v2
    when: {absence: {after: {event: Product Added}, without: any, within: 2m}}
    respond: [{channel: email, template: cart_abandonment.email.j2}]
"""


def seen_by_a_reader(book: RuleBook) -> tuple[Any, ...]:
    """What the pipeline and the timer engine ask the book: the rules, a cart's rules, a timer's rule."""
    return (
        tuple(rule.id for rule in book.current()), tuple(rule.id for rule in book.for_event("Product Added")),
        book.get("cart_abandonment") is not None,
    )


@contextmanager
def at_every_step_of(module_file: str, read: Callable[[], None]) -> Iterator[None]:
    """`read` run before each bytecode step of the code in `module_file`, with that code paused where it stands:
    another thread's reader, at every point it could be scheduled, made deterministic."""
    def step(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            read()
        return step

    def enter(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename != module_file:
            return None
        frame.f_trace_opcodes = True
        return step

    previous = sys.gettrace()
    sys.settrace(enter)
    try:
        yield
    finally:
        sys.settrace(previous)


def test_a_reader_in_the_middle_of_a_reload_sees_the_old_rules_or_the_new_never_a_mix(tmp_path: Path) -> None:
    """The book swapped its rules, its rules by id and its index one attribute at a time: a reader in between saw
    the renamed rule in force while a cart still matched the old one, or the old rule gone from the rules but
    still found by id."""
    path = tmp_path / "triggers.yaml"
    path.write_text(OLD_RULES)
    book = RuleBook(path, recheck_seconds=3600)  # readers never reload: the test does, once
    before = seen_by_a_reader(book)
    path.write_text(NEW_RULES)
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))
    during: list[tuple[Any, ...]] = []
    with at_every_step_of(rulebook_module.__file__, lambda: during.append(seen_by_a_reader(book))):
        assert book.reload_if_changed()
    after = seen_by_a_reader(book)
    assert before != after and during
    assert [seen for seen in during if seen not in (before, after)] == []


@BOTH_DATABASES
def test_a_timer_whose_nudge_a_late_follow_up_withdrew_says_so(tmp_path: Path, database_url: str) -> None:
    """ana's order at 22:01, inside the wait, came in at 22:10: `decisions explain` showed "no follow-up between
    22:00 and 22:02 (timer fired)" above the email that order withdrew."""
    hub = cart_nudged(tmp_path, database_url)
    try:
        with hub.store.read() as connection:
            [nudge] = decisions.search(connection, limit=10, rule_id="cart_abandonment")
            before = explain(connection, nudge["decision_id"])
        explained = late_order(hub, T_CART + timedelta(minutes=1))
    finally:
        hub.store.dispose()
    [email] = explained["deliveries"]
    assert email["last_error"].startswith("not sent: its follow-up (Order Completed at 2026-01-05 22:01:00 UTC)")
    assert explained["timer"]["status"] == "fired"
    assert explained["timer"].get("late_follow_up") == {"withdrew": ["email"], "reason": email["last_error"]}
    assert before is not None and before["timer"]["late_follow_up"] is None  # nothing came: the line stays as it was
    shown = CliRunner().invoke(
        app, ["decisions", "explain", nudge["decision_id"]], env={"HUB_DATABASE_URL": database_url, "COLUMNS": "300"}
    )
    assert shown.exit_code == 0, shown.output
    assert "had come in when the timer fired; one came late and withdrew email: not sent: its follow-up" in shown.output
