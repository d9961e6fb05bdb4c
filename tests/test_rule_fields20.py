"""A rule's CRM `fields` and the problems found across the rules file: checked when the rules load, reported where
ops fix them (audit 20).

`fields` values are Jinja templates like the message templates, rendered per decision into the Salesforce update;
the checks across files (routes, templates, destination params) name the line of triggers.yaml that is wrong, as
`touchhub triggers test` and `touchhub mappings check` promise (`file:line: key: reason`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.clock import utcnow
from hub.errors import ConfigError
from hub.model import RawEvent
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from hub.store import inbox
from hub.store.schema import decisions as decisions_table
from tests.conftest import RunningHub, make_settings, message, serve_hub

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
CRM_RULE = """\
rules:
  - id: ticket_to_crm
    vars: {{help_center_url: "https://help.example.com"}}
    when: {{event: Ticket Submitted}}
    respond:
      - channel: crm
        template: post_purchase_support.crm.j2
        params: {{intent: support_request}}
        fields: {fields}
"""


def mappings_with_rules(tmp_path: Path, rules: str) -> Path:
    folder = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, folder)
    (folder / "triggers.yaml").write_text(rules)
    return folder


def crm_rule(fields: str) -> str:
    return CRM_RULE.format(fields=fields)


def line_holding(path: Path, text: str) -> int:
    return next(number for number, content in enumerate(path.read_text().splitlines(), 1) if text in content)


def ago(**span: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(**span)).isoformat()


def ticket(user_id: str, traits: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        message("identify", userId=user_id, traits=traits, timestamp=ago(minutes=5)),
        message(userId=user_id, event="Ticket Submitted", properties={"ticket_id": "t-1"}, timestamp=ago(minutes=1)),
    ]


def accept(hub: Hub, *messages: dict[str, Any]) -> None:
    """Take the messages in and run the pipeline over them (no workers: nothing is sent)."""
    with hub.store.write() as connection:
        inbox.append(connection, [RawEvent("default", m["messageId"], m) for m in messages], utcnow())
    while hub.pipeline.run_once():
        pass


def mappings_check(folder: Path) -> tuple[int, str]:
    """`touchhub mappings check` on `folder`: its exit code and output with Rich's wrapping folded away."""
    result = subprocess.run(
        [TOUCHHUB, "mappings", "check"], capture_output=True, text=True, timeout=120, cwd=folder.parent,
        env={"COLUMNS": "300", "PATH": "", "HUB_MAPPINGS_DIR": str(folder)},
    )
    return result.returncode, " ".join((result.stdout + result.stderr).split())


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub on the ticket rule with a field the first ticket has no value for; workers not started."""
    hub = Hub(make_settings(tmp_path, quiet_hours="", mappings_dir=str(
        mappings_with_rules(tmp_path, crm_rule('{Total__c: "{{ touchpoint.properties.total }}"}'))
    ), rules_reload_seconds=0.01))
    yield hub
    hub.store.dispose()


def test_a_crm_field_template_that_does_not_parse_stops_the_hub_at_start_naming_the_field(tmp_path: Path) -> None:
    """Nothing compiled `fields` when the rules loaded: a typo started the hub, and every CRM update of the rule
    was skipped when it fired."""
    mappings = mappings_with_rules(tmp_path, crm_rule('{Intent__c: "{{ touchpoint.moment "}'))
    with pytest.raises(ConfigError) as refused:
        Hub(make_settings(tmp_path, mappings_dir=str(mappings)))
    [problem] = refused.value.problems
    assert problem.startswith(f"{mappings / 'triggers.yaml'}: rules.0.respond.0.fields.Intent__c: "), problem
    assert "does not compile" in problem, problem


def test_a_crm_field_template_typo_saved_while_the_hub_runs_is_refused_and_the_last_good_rules_stay(hub: Hub) -> None:
    """The hot reload took the typo in (nothing compiled `fields`), putting a rule in force whose CRM updates
    would all be skipped."""
    assert hub.rulebook is not None
    path = hub.rulebook.path
    path.write_text(crm_rule('{Total__c: "{{ touchpoint.properties.total | no_such_filter }}"}'))
    assert not hub.rulebook.reload_if_changed()
    [rule] = hub.rulebook.current()
    assert rule.respond[0].fields == {"Total__c": "{{ touchpoint.properties.total }}"}
    [problem] = hub.rulebook.last_error
    assert problem.startswith(f"{path}: rules.0.respond.0.fields.Total__c: ") and "no_such_filter" in problem, problem


def test_a_crm_field_that_fails_to_render_is_reported_at_the_rules_field_not_at_the_message_template(hub: Hub) -> None:
    """The reason blamed the message template file (`template post_purchase_support.crm.j2: 'dict object' has no
    attribute 'total'`), which is fine: ops opened it instead of the rule's field in triggers.yaml."""
    accept(hub, *ticket("u-1", {"email": "ann@example.com"}))
    with hub.store.read() as connection:
        [decision] = connection.execute(decisions_table.select()).mappings()
    [crm] = decision["actions"]
    assert crm["fate"] == "skipped", crm
    assert crm["reason"].startswith("rule 'ticket_to_crm': fields.Total__c: "), crm["reason"]
    assert "post_purchase_support.crm.j2" not in crm["reason"], crm["reason"]


@pytest.fixture
def crm_hub(tmp_path: Path, sandbox: SandboxProviders) -> Iterator[RunningHub]:
    """A running hub whose ticket rule sets the Lead's Phone from the profile, against the fake Salesforce."""
    mappings = mappings_with_rules(tmp_path, crm_rule('{Phone: "{{ profile.phone }}", Title: "{{ touchpoint.moment }}"}'))
    settings = make_settings(tmp_path, mappings_dir=mappings, quiet_hours="", **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        yield running


def test_a_crm_field_templated_from_a_null_trait_does_not_blank_the_crm_value(crm_hub: RunningHub) -> None:
    """A field rendered from a null trait was sent as "", blanking the phone the sales rep had on the Lead; the
    template's own `field_<ApiName>` blocks already skipped blank values."""
    crm_hub.send(*ticket("u-2", {"email": "bo@example.com", "last_name": "Berg", "phone": "+14155550123"}))
    crm_hub.settle()
    crm_hub.send(*ticket("u-2", {"phone": None}))
    crm_hub.settle()
    crm = [d for d in crm_hub.admin("/api/deliveries")["deliveries"] if d["channel"] == "crm"]
    assert [d["status"] for d in crm] == ["sent", "sent"], crm
    [lead] = crm_hub.sandbox.salesforce.records("Lead")
    assert (lead["Phone"], lead["Title"], lead["LastName"]) == ("+14155550123", "support_request", "Berg"), lead


def shipped_mappings(tmp_path: Path) -> Path:
    folder = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, folder)
    return folder


def misspell_a_channel(rules: Path) -> int:
    """Misspell the first `chat` channel of the shipped rules (comparison_hesitation's); the line it is on."""
    assert "      - channel: chat\n" in rules.read_text()
    rules.write_text(rules.read_text().replace("      - channel: chat\n", "      - channel: chatt\n", 1))
    return line_holding(rules, "channel: chatt")


def test_mappings_check_names_the_rules_file_line_of_a_channel_routes_yaml_does_not_route(tmp_path: Path) -> None:
    """The check said only `triggers.yaml: rule 'comparison_hesitation': channel 'chatt' has no route ...`: no
    path and no line, where README promises `file:line: key: reason`."""
    rules = shipped_mappings(tmp_path) / "triggers.yaml"
    line = misspell_a_channel(rules)
    code, output = mappings_check(rules.parent)
    assert code == 1, output
    assert f"{rules}:{line}: rule 'comparison_hesitation': channel 'chatt' has no route in routes.yaml" in output, output


def test_a_refused_reload_names_the_rules_file_line_of_an_unrouted_channel(tmp_path: Path) -> None:
    """`/api/rules` showed a refused reload's unrouted channel with no path and no line."""
    folder = shipped_mappings(tmp_path)
    hub = Hub(make_settings(tmp_path, mappings_dir=str(folder), rules_reload_seconds=0.01))
    try:
        line = misspell_a_channel(folder / "triggers.yaml")
        assert hub.rulebook is not None and not hub.rulebook.reload_if_changed()
        assert [problem.partition(" has no route")[0] for problem in hub.rulebook.last_error] == [
            f"{folder / 'triggers.yaml'}:{line}: rule 'comparison_hesitation': channel 'chatt'"
        ]
    finally:
        hub.store.dispose()


def test_mappings_check_names_the_rules_file_line_of_a_missing_template_and_of_params_a_destination_refuses(
    tmp_path: Path,
) -> None:
    """A template problem was reported at the missing template's path, and params Salesforce refuses as
    `triggers.yaml: rule ...`: neither at the line of the rules file to fix."""
    rules = mappings_with_rules(tmp_path, crm_rule('{Title: "{{ touchpoint.moment }}"}')) / "triggers.yaml"
    rules.write_text(rules.read_text().replace("post_purchase_support.crm.j2", "no_such.crm.j2")
                     .replace("{intent: support_request}", "{intent: support_request, sobject: Opportunity}"))
    code, output = mappings_check(rules.parent)
    assert code == 1, output
    template = rules.parent / "templates" / "no_such.crm.j2"
    line = line_holding(rules, "template: no_such")
    assert f"{rules}:{line}: template: {template}: TemplateNotFound" in output, output
    assert f"{rules}:{line_holding(rules, '- channel: crm')}: rule 'ticket_to_crm': channel 'crm' (respond.0): " \
        "params.sobject:" in output, output


def test_mappings_check_names_the_line_of_a_crm_field_template_that_does_not_parse(tmp_path: Path) -> None:
    """The check passed a rules file whose `fields` template did not parse; the hub then skipped every CRM update
    of the rule."""
    rules = mappings_with_rules(tmp_path, crm_rule('{Intent__c: "{{ touchpoint.moment "}')) / "triggers.yaml"
    code, output = mappings_check(rules.parent)
    assert code == 1, output
    assert f"{rules}:{line_holding(rules, 'fields:')}: rules.0.respond.0.fields.Intent__c: " in output, output
