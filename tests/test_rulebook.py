"""Rule edits take effect while the hub runs; a broken edit is refused and the last good rules stay."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from jinja2 import TemplateError

from connectors.sandbox.providers import SandboxProviders
from hub.errors import ConfigError
from hub.rulebook import RuleBook
from hub.rules import RuleSpec
from hub.settings import PROJECT_MAPPINGS
from hub.templates import TemplateRenderer, template_names
from tests.conftest import make_settings, serve_hub

RULE = "rules:\n  - id: {id}\n    when: {{event: E}}\n    respond: [{{channel: sms, template: {template}}}]\n"


def write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.write_text(text, encoding=encoding)
    stamp = path.stat().st_mtime_ns + 1_000_000_000  # a later mtime even on coarse file systems
    os.utime(path, ns=(stamp, stamp))


def book(tmp_path: Path) -> tuple[RuleBook, Path]:
    shutil.copytree(PROJECT_MAPPINGS / "templates", tmp_path / "templates")
    path = tmp_path / "triggers.yaml"
    write(path, RULE.format(id="first", template="post_purchase_support.sms.j2"))
    renderer = TemplateRenderer(tmp_path / "templates")
    return RuleBook(path, lambda rules: renderer.check(sorted(template_names(rules))), recheck_seconds=0), path


def test_an_edit_takes_effect_without_a_restart(tmp_path: Path) -> None:
    rulebook, path = book(tmp_path)
    assert [rule.id for rule in rulebook.current()] == ["first"]
    write(path, RULE.format(id="second", template="post_purchase_support.sms.j2"))
    assert [rule.id for rule in rulebook.current()] == ["second"]
    assert rulebook.get("second") is not None and rulebook.get("first") is None



def test_an_edit_rebuilds_which_rules_each_event_name_is_offered(tmp_path: Path) -> None:
    rulebook, path = book(tmp_path)
    assert [rule.id for rule in rulebook.for_event("E")] == ["first"] and rulebook.for_event("F") == ()
    write(path, RULE.format(id="second", template="post_purchase_support.sms.j2").replace("{event: E}", "{event: F}"))
    assert rulebook.for_event("E") == () and [rule.id for rule in rulebook.for_event("F")] == ["second"]

@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ("rules: [{id: Bad-Id}]", "rules.0.id: String should match pattern"),
        ("rules: [\n", "not valid YAML"),
        (RULE.format(id="typo", template="no_such_template.j2"), "no_such_template.j2: TemplateNotFound"),
        ("", "no `rules:` list (an empty or half-saved file?)"),  # an editor's save caught halfway
        ("# the rules\n", "write `rules: []` to run without rules"),
    ],
)
def test_a_broken_edit_is_refused_and_the_last_good_rules_stay(tmp_path: Path, edit: str, problem: str) -> None:
    rulebook, path = book(tmp_path)
    write(path, edit)
    assert [rule.id for rule in rulebook.current()] == ["first"]
    assert any(problem in line for line in rulebook.last_error)
    write(path, RULE.format(id="fixed", template="post_purchase_support.sms.j2"))
    assert [rule.id for rule in rulebook.current()] == ["fixed"] and rulebook.last_error == []


def test_a_look_while_another_thread_checks_an_edit_waits_for_its_verdict(tmp_path: Path) -> None:
    """The admin API's look came within `recheck_seconds` of the pipeline's, skipped the file, and showed no
    refusal for an edit the pipeline was still refusing (the clean-clone CI's one failure)."""
    path = tmp_path / "triggers.yaml"
    write(path, "rules: []")
    checking, verdict = threading.Event(), threading.Event()

    def slow_check(rules: list[RuleSpec]) -> None:
        if rules:  # the edit, not the empty file at start
            checking.set()
            verdict.wait(5)
            raise ConfigError(["the edit is refused"])

    rulebook = RuleBook(path, slow_check, recheck_seconds=3600)
    write(path, RULE.format(id="promo", template="any.j2"))
    pipeline = threading.Thread(target=rulebook.reload_if_changed)
    pipeline.start()
    assert checking.wait(5)
    threading.Timer(0.2, verdict.set).start()
    assert rulebook.looked_at_now() == ([], ["the edit is refused"])
    pipeline.join(5)


@pytest.mark.parametrize("content", [b"rules: [{id: x}]", "rules: []  # caf\u00e9\n".encode("latin-1")])
def test_a_broken_file_at_start_up_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "triggers.yaml").write_bytes(content)
    with pytest.raises(ConfigError):
        RuleBook(tmp_path / "triggers.yaml")


@pytest.mark.parametrize("latin1", ["triggers.yaml", "templates/promo.sms.j2"])
def test_an_edit_saved_as_latin1_is_refused_at_its_line_and_stays_refused(tmp_path: Path, latin1: str) -> None:
    """Windows editors save an `é` as Latin-1: UnicodeDecodeError escaped the rule book into whichever worker
    looked first, and with the file's stamp already taken the edit was then ignored without a word."""
    rulebook, path = book(tmp_path)
    edit = RULE.format(id="second", template="promo.sms.j2").replace("    when", "    description: caf\u00e9\n    when")
    write(tmp_path / "templates" / "promo.sms.j2", "Our promo\ncaf\u00e9 {{ profile_id }}",
          encoding="latin-1" if latin1.startswith("templates") else "utf-8")
    write(path, edit, encoding="latin-1" if latin1 == "triggers.yaml" else "utf-8")
    for _ in range(2):  # the first look refuses the edit; the next still says why the old rules are in force
        assert [rule.id for rule in rulebook.current()] == ["first"]
        [problem] = rulebook.last_error
        assert problem.startswith(f"{tmp_path / latin1}:{3 if latin1 == 'triggers.yaml' else 2}: not UTF-8 (byte 0xe9 ")
        assert problem.endswith("save the file as UTF-8")
    write(tmp_path / "templates" / "promo.sms.j2", "Our promo\ncaf\u00e9 {{ profile_id }}")
    write(path, edit)
    assert [rule.id for rule in rulebook.current()] == ["second"] and rulebook.last_error == []


def test_the_running_pipeline_picks_up_an_edit_and_survives_a_broken_one(tmp_path: Path) -> None:
    from hub.clock import utcnow
    from hub.model import RawEvent
    from hub.runtime import Hub
    from hub.store import decisions, inbox
    from tests.conftest import message

    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    hub = Hub(make_settings(tmp_path, mappings_dir=str(mappings), rules_reload_seconds=0.01))

    def send(event: str) -> dict[str, int]:
        time.sleep(0.05)  # past the reload interval
        msg = message(userId="uma", event=event, traits={"phone": "+14155550199"}, timestamp=utcnow().isoformat())
        with hub.store.write() as connection:
            inbox.append(connection, [RawEvent("default", msg["messageId"], msg)], utcnow())
        hub.pipeline.run_once()
        with hub.store.read() as connection:
            return decisions.count_by_rule(connection)

    assert send("Promo Clicked") == {}
    write(mappings / "triggers.yaml", RULE.format(id="promo", template="post_purchase_support.sms.j2").replace("E}", "Promo Clicked}"))
    assert send("Promo Clicked") == {"promo": 1}
    write(mappings / "triggers.yaml", "rules: [{id: promo}]")
    assert send("Promo Clicked") == {"promo": 2}  # the last good rules still run
    assert hub.rulebook.last_error
    typo = RULE.format(id="promo", template="post_purchase_support.sms.j2").replace("E}", "Promo Clicked}")
    write(mappings / "triggers.yaml", typo.replace("channel: sms", "channel: smss"))
    assert send("Promo Clicked") == {"promo": 3}  # a channel routes.yaml does not route is refused too
    assert any("channel 'smss' has no route in routes.yaml; use one of" in line for line in hub.rulebook.last_error)
    (mappings / "triggers.yaml").write_text(typo.replace("channel: sms", "channel: smss"))
    with pytest.raises(ConfigError, match="channel 'smss' has no route"):
        Hub(make_settings(tmp_path, mappings_dir=str(mappings)))


@pytest.mark.parametrize(("recheck_seconds", "expected"), [(0, "Edited hello"), (3600, "Hello")])
def test_an_edited_template_is_picked_up_once_its_recheck_period_has_passed(
    tmp_path: Path, recheck_seconds: float, expected: str
) -> None:
    write(tmp_path / "greeting.j2", "Hello")
    renderer = TemplateRenderer(tmp_path, recheck_seconds=recheck_seconds)
    assert renderer.render("greeting.j2", {}) == {"body": "Hello"}
    write(tmp_path / "greeting.j2", "Edited hello")
    assert renderer.render("greeting.j2", {}) == {"body": expected}  # within the period the file is not looked at


def test_a_template_re_saved_as_latin1_is_a_template_error_naming_its_line(tmp_path: Path) -> None:
    """Routing skips an action whose template fails, saying why; a UnicodeDecodeError failed the whole event."""
    write(tmp_path / "greeting.j2", "Hello\ncaf\u00e9", encoding="latin-1")
    with pytest.raises(TemplateError, match=r"greeting\.j2:2: not UTF-8 \(byte 0xe9 at column 4, "):
        TemplateRenderer(tmp_path).render("greeting.j2", {})


def test_the_admin_api_shows_the_rules_in_force_and_why_an_edit_was_refused(tmp_path: Path, sandbox: SandboxProviders) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    settings = make_settings(tmp_path, mappings_dir=str(mappings), rules_reload_seconds=0.01, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        shipped = running.admin("/api/rules")
        by_id = {rule["id"]: rule for rule in shipped["rules"]}
        assert set(by_id) >= {"cart_abandonment", "comparison_hesitation", "post_purchase_support", "high_intent_pricing"}
        assert by_id["cart_abandonment"]["waits"] and by_id["cart_abandonment"]["channels"] == ["push", "email"]
        assert shipped["refused_edit"] == []
        write(mappings / "triggers.yaml", "rules: [{id: promo}]")
        time.sleep(0.05)  # past the reload interval
        refused = running.admin("/api/rules")
        assert [rule["id"] for rule in refused["rules"]] == [rule["id"] for rule in shipped["rules"]]  # still in force
        assert any("rules.0.when: Field required" in problem for problem in refused["refused_edit"])
        assert shipped["refused_template_edits"] == []
        sms = mappings / "templates" / "post_purchase_support.sms.j2"
        write(sms, sms.read_text() + "{% if %}")
        time.sleep(0.05)
        [problem] = running.admin("/api/rules")["refused_template_edits"]
        assert "post_purchase_support.sms.j2: TemplateSyntaxError" in problem
