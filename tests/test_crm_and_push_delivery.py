"""CRM and push deliveries end to end: a real hub, real simple-salesforce and firebase-admin, the sandbox fakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.api import create_app
from hub.errors import ConfigError
from hub.runtime import Hub
from hub.serving import BackgroundServer
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import RunningHub, cart_nudge_rules, make_settings, message, serve_hub

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
PHONE_TOKEN = "cGhvbmUtdG9rZW46QVBBOTFiSGVuZDJlbmQwMDAwMDAwMDE"
TABLET_TOKEN = "dGFibGV0LXRva2VuOkFQQTkxYkhlbmQyZW5kMDAwMDAwMDAy"
RULES = cart_nudge_rules("""\
      - channel: push
        template: cart_nudge.push.j2
        params: {data: {screen: cart}}
      - channel: crm
        template: cart_nudge.crm.j2
        params:
          intent: cart_abandonment
          task: {subject: Call about the abandoned cart, priority: High}
""")
PUSH_TEMPLATE = "{% block title %}Still thinking, {{ profile.first_name }}?{% endblock %}{% block body %}Your cart is saved.{% endblock %}"
CRM_TEMPLATE = (
    "{% block field_LastName %}{{ profile.last_name }}{% endblock %}"
    "{% block field_Company %}{{ profile.company | default('[not provided]') }}{% endblock %}"
    "{% block field_Email %}{{ profile.email }}{% endblock %}"
    "{% block description %}{{ profile.first_name }} left a cart.{% endblock %}"
)


def cart_nudge_mappings(tmp_path: Path) -> Path:
    """The shipped mappings with this module's rule and its templates."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_MAPPINGS, mappings)
    (mappings / "triggers.yaml").write_text(RULES)
    (mappings / "templates" / "cart_nudge.push.j2").write_text(PUSH_TEMPLATE)
    (mappings / "templates" / "cart_nudge.crm.j2").write_text(CRM_TEMPLATE)
    return mappings


@pytest.fixture
def hub(tmp_path: Path, sandbox: SandboxProviders) -> Iterator[RunningHub]:
    settings = make_settings(tmp_path, mappings_dir=cart_nudge_mappings(tmp_path), **sandbox.settings_overrides())
    running = Hub(settings)
    with BackgroundServer(create_app(running)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield RunningHub(running, server.url, client, sandbox)


def cart_viewed(hub: RunningHub, *tokens: str) -> dict[str, dict[str, Any]]:
    """Ana uses one device per token, then views her cart; the deliveries by channel once the hub settles."""
    traits = {"email": "ana@example.com", "first_name": "Ana", "last_name": "Silva"}
    hub.send(message("identify", userId="u-ana", traits=traits),
             *[message(userId="u-ana", event="App Opened", context={"device": {"token": t}}) for t in tokens],
             message(userId="u-ana", event="Cart Viewed"))
    hub.settle()
    return {d["channel"]: d for d in hub.admin("/api/deliveries")["deliveries"]}


def test_push_reaches_every_device_and_the_crm_gets_lead_intent_and_task(hub: RunningHub) -> None:
    deliveries = cart_viewed(hub, PHONE_TOKEN, TABLET_TOKEN)

    assert (deliveries["push"]["status"], deliveries["crm"]["status"]) == ("sent", "sent")
    sent = hub.sandbox.fcm.messages
    assert sorted(m["message"]["token"] for m in sent) == sorted([PHONE_TOKEN, TABLET_TOKEN])
    assert sent[0]["message"]["notification"] == {"title": "Still thinking, Ana?", "body": "Your cart is saved."}
    assert sent[0]["message"]["data"] == {"screen": "cart"}

    [lead] = hub.sandbox.salesforce.records("Lead")
    assert (lead["LastName"], lead["Company"], lead["Email"], lead["Touchhub_Intent__c"]) == (
        "Silva", "[not provided]", "ana@example.com", "cart_abandonment"
    )
    assert lead["Touchhub_Profile_Id__c"] == deliveries["crm"]["profile_id"]
    [task] = hub.sandbox.salesforce.records("Task")
    assert (task["WhoId"], task["Subject"], task["Description"]) == (lead["Id"], "Call about the abandoned cart", "Ana left a cart.")
    assert task["Touchhub_Delivery_Id__c"] == deliveries["crm"]["delivery_id"]
    [crm_attempt] = deliveries["crm"]["attempt_log"]
    assert crm_attempt["request_summary"]["fields"] == ["Company", "Email", "LastName", "Touchhub_Intent__c"]


def touchhub(hub: RunningHub, *args: str) -> str:
    """What a `touchhub` command reading this hub's store and mappings prints."""
    settings = hub.hub.settings
    env = {"COLUMNS": "300", "PATH": "", "HUB_DATABASE_URL": settings.database_url,
           "HUB_MAPPINGS_DIR": str(settings.mappings_dir)}
    result = subprocess.run([TOUCHHUB, *args], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_push_tokens_are_cut_short_wherever_the_delivery_log_shows_them(hub: RunningHub) -> None:
    """A device token is a credential to message the device: the delivery log shows its first 10 characters,
    as the FCM connector's own summaries do, in the API and the CLI alike."""
    push = cart_viewed(hub, PHONE_TOKEN, TABLET_TOKEN)["push"]
    assert push["status"] == "sent"
    assert push["target"] in {PHONE_TOKEN[:10] + "…", TABLET_TOKEN[:10] + "…"}
    assert sorted(push["content"]["recipients"]) == [PHONE_TOKEN[:10] + "…", TABLET_TOKEN[:10] + "…"]
    shown = {
        "GET /api/deliveries": json.dumps(hub.admin("/api/deliveries"), ensure_ascii=False),
        "GET /api/decisions/{id}": json.dumps(hub.admin(f"/api/decisions/{push['decision_id']}"), ensure_ascii=False),
        "touchhub decisions explain": touchhub(hub, "decisions", "explain", push["decision_id"]),
        "touchhub deliveries list": touchhub(hub, "deliveries", "list", "--channel", "push"),
    }
    assert {where: [token in text for token in (PHONE_TOKEN, TABLET_TOKEN)] for where, text in shown.items()} == {
        where: [False, False] for where in shown
    }
    assert PHONE_TOKEN[:10] + "…" in shown["touchhub decisions explain"]


def test_a_push_with_no_fcm_settings_waits_unclaimed_for_a_process_that_has_them(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """Without FCM settings the push is still planned, and put back for a process with them, no attempt spent
    (it was claimed and dead-lettered, so a node mid rolling deploy threw away what the next node could send);
    the hub settles all the same, and its target shows cut short in the delivery log."""
    without_fcm = {key: value for key, value in sandbox.settings_overrides().items() if not key.startswith("fcm_")}
    with serve_hub(make_settings(tmp_path, mappings_dir=cart_nudge_mappings(tmp_path), **without_fcm), sandbox) as hub:
        push = cart_viewed(hub, PHONE_TOKEN)["push"]
    assert (push["status"], push["attempt_log"]) == ("pending", [])
    assert push["target"] == PHONE_TOKEN[:10] + "…"


def test_push_quota_exceeded_is_retried_no_sooner_than_retry_after(hub: RunningHub) -> None:
    hub.sandbox.fcm.fail_next(429, "QUOTA_EXCEEDED", retry_after=1)
    push = cart_viewed(hub, PHONE_TOKEN)["push"]
    assert push["status"] == "sent"
    first, second = push["attempt_log"]
    assert (first["outcome"], first["error_class"], second["outcome"]) == ("retryable", "fcm.QUOTA_EXCEEDED", "sent")
    gap = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(first["started_at"])
    assert gap.total_seconds() >= 1
    assert len(hub.sandbox.fcm.messages) == 1


def test_unregistered_token_fails_the_push_and_leaves_the_profile(hub: RunningHub) -> None:
    hub.sandbox.fcm.unregistered.add(PHONE_TOKEN)
    push = cart_viewed(hub, PHONE_TOKEN)["push"]
    assert push["status"] == "failed"
    [attempt] = push["attempt_log"]
    assert (attempt["outcome"], attempt["error_class"]) == ("permanent", "fcm.UNREGISTERED")
    profile = hub.admin(f"/api/profiles/{push['profile_id']}")
    assert "push_token" not in profile["identifiers"]
    assert profile["identifiers"]["email"] == ["ana@example.com"]
    [detached] = hub.admin(f"/api/profiles/{push['profile_id']}/explain")["detached"]
    assert detached["identifiers"] == [["push_token", PHONE_TOKEN]]
    assert detached["rule"] == "FCM answered UNREGISTERED: the app was uninstalled or the token expired"


def test_a_token_of_another_firebase_project_is_explained_as_such(hub: RunningHub) -> None:
    """`profiles explain` is where ops learn why a device vanished; every removal read "FCM reported the token
    unregistered", also a SENDER_ID_MISMATCH, which is a wrong-project setup to fix, not an uninstall."""
    hub.sandbox.fcm.other_senders.add(PHONE_TOKEN)
    push = cart_viewed(hub, PHONE_TOKEN, TABLET_TOKEN)["push"]
    assert (push["status"], push["attempt_log"][0]["response_summary"]["dead_tokens"]) == ("sent", 1)
    [detached] = hub.admin(f"/api/profiles/{push['profile_id']}/explain")["detached"]
    assert detached["identifiers"] == [["push_token", PHONE_TOKEN]]
    assert detached["rule"].startswith("FCM answered SENDER_ID_MISMATCH: the token belongs to another Firebase project")


def test_a_push_template_too_long_for_fcm_fails_the_push_and_keeps_the_persons_devices(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """A push template rendering past FCM's 4096 bytes (a long cart list) is the message's fault: FCM answers it
    with a bare INVALID_ARGUMENT, which the hub read as "malformed token", detaching every good device Ana had."""
    mappings = cart_nudge_mappings(tmp_path)
    long_body = "Your cart: " + ", ".join(f"item {n} (size M, colour blue)" for n in range(200))
    (mappings / "templates" / "cart_nudge.push.j2").write_text(
        "{% block title %}Still thinking?{% endblock %}{% block body %}" + long_body + "{% endblock %}"
    )
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings, **sandbox.settings_overrides()), sandbox) as hub:
        push = cart_viewed(hub, PHONE_TOKEN, TABLET_TOKEN)["push"]
        profile = hub.admin(f"/api/profiles/{push['profile_id']}")
    [attempt] = push["attempt_log"]
    assert (push["status"], attempt["outcome"], attempt["error_class"]) == ("failed", "permanent", "fcm.message_too_big")
    assert sorted(profile["identifiers"]["push_token"]) == sorted([PHONE_TOKEN, TABLET_TOKEN])
    assert sandbox.fcm.messages == []


def test_salesforce_limit_then_expired_session_still_delivers_once(hub: RunningHub) -> None:
    hub.sandbox.salesforce.fail_next(403, "REQUEST_LIMIT_EXCEEDED", message="TotalRequests Limit exceeded.")
    hub.sandbox.salesforce.fail_next(401, "INVALID_SESSION_ID", message="Session expired or invalid")
    crm = cart_viewed(hub, PHONE_TOKEN)["crm"]
    assert crm["status"] == "sent"
    assert [(a["outcome"], a["error_class"]) for a in crm["attempt_log"]] == [
        ("retryable", "salesforce.REQUEST_LIMIT_EXCEEDED"), ("sent", None)
    ]
    assert hub.sandbox.salesforce.logins == 2  # the second attempt logged in again after INVALID_SESSION_ID
    assert (len(hub.sandbox.salesforce.records("Lead")), len(hub.sandbox.salesforce.records("Task"))) == (1, 1)


def test_bad_salesforce_and_fcm_settings_are_reported_together(tmp_path: Path) -> None:
    not_a_key = tmp_path / "key.json"
    not_a_key.write_text('{"type": "authorized_user"}')
    with pytest.raises(ConfigError) as bad:
        Hub(make_settings(tmp_path, salesforce_consumer_key="key", salesforce_username="api@example.com",
                          fcm_credentials_file=not_a_key))
    assert [problem.split(":")[0] for problem in bad.value.problems] == ["HUB_SALESFORCE_*", "HUB_FCM_*"]
    assert "username and password" in bad.value.problems[0]
    with pytest.raises(ConfigError, match="HUB_FCM_\\*: credentials_file: Path does not point to a file"):
        Hub(make_settings(tmp_path, fcm_credentials_file=tmp_path / "missing.json"))


def test_salesforce_object_and_field_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad:
        Hub(make_settings(tmp_path, salesforce_consumer_key="key", salesforce_username="api@example.com",
                          salesforce_password="secret", salesforce_sobject="Opportunity",
                          salesforce_external_id_field="Profile Id/../x"))
    assert [problem.split(":")[1].strip() for problem in bad.value.problems] == ["sobject", "external_id_field"]


def test_crm_params_salesforce_would_refuse_stop_the_hub_at_start_up(tmp_path: Path) -> None:
    """Found only at send time, a typo in a crm action's params failed every update of its rule for good
    (`salesforce.bad_params`), replays included. Salesforce need not be configured to be asked; the push action's
    params go to FCM, which takes them."""
    mappings = cart_nudge_mappings(tmp_path)
    typos = RULES.replace("priority: High}", "priority: Urgent, due: tomorrow}").replace(
        "intent: cart_abandonment", "intent: cart_abandonment\n          sobject: Opportunity"
    )
    (mappings / "triggers.yaml").write_text(typos)
    with pytest.raises(ConfigError) as bad:
        Hub(make_settings(tmp_path, mappings_dir=mappings))
    where = f"{mappings / 'triggers.yaml'}:12: rule 'cart_nudge': channel 'crm' (respond.1): "  # the action's line
    assert all(problem.startswith(where) for problem in bad.value.problems), bad.value.problems
    assert sorted(problem.removeprefix(where).partition(":")[0] for problem in bad.value.problems) == [
        "params.sobject", "params.task.due", "params.task.priority"
    ]
    assert f"{where}params.task.priority: Input should be 'High', 'Normal' or 'Low'; fix the action's params, " \
        "which destination 'salesforce' refuses at every send" in bad.value.problems


def test_push_data_params_fcm_reserves_stop_the_hub_at_start_up(tmp_path: Path) -> None:
    """FCM refuses data keys it reserves ("from", "google..."): found only at send time, every push of the rule
    failed for good, replays included."""
    mappings = cart_nudge_mappings(tmp_path)
    (mappings / "triggers.yaml").write_text(RULES.replace("params: {data: {screen: cart}}",
                                                          "params: {data: {screen: cart, from: hub, google.label: x}}"))
    with pytest.raises(ConfigError) as bad:
        Hub(make_settings(tmp_path, mappings_dir=mappings))
    where = f"{mappings / 'triggers.yaml'}:9: rule 'cart_nudge': channel 'push' (respond.0): "  # the action's line
    assert [problem.removeprefix(where).partition(":")[0] for problem in bad.value.problems] == [
        "params.data.from", "params.data.google.label"
    ]
    assert all(problem.startswith(where) and problem.endswith("which destination 'fcm_push' refuses at every send")
               for problem in bad.value.problems), bad.value.problems


def test_a_crm_params_typo_saved_while_the_hub_runs_is_refused_and_the_last_good_rules_stay(tmp_path: Path) -> None:
    mappings = cart_nudge_mappings(tmp_path)
    hub = Hub(make_settings(tmp_path, mappings_dir=mappings))
    try:
        (mappings / "triggers.yaml").write_text(RULES.replace("priority: High", "priority: Urgent"))
        assert not hub.rulebook.reload_if_changed()
        [rule] = hub.rulebook.current()
        assert rule.respond[1].params["task"]["priority"] == "High"
        assert [problem.partition(" (respond.1): ")[2].partition(";")[0] for problem in hub.rulebook.last_error] == [
            "params.task.priority: Input should be 'High', 'Normal' or 'Low'"
        ]
    finally:
        hub.delivery.close()
        hub.store.dispose()
