"""Personal data and secrets stay out of the places people read: the delivery log, settings, CLI output, logs.

Each test puts a known email, phone, device token or password where the hub handles it and checks that the
value is not shown in clear, and, where the hub shows something in its place, that the masked form is there, so
a test cannot pass because the text went missing. Found by an audit (helper-61), fixed in 0f36424.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy import text as sql_text
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from uvicorn.logging import AccessFormatter

from connectors.sandbox.providers import SandboxProviders
from hub.logs import configure_logging
from hub.serving import BackgroundServer
from hub.secret_urls import shown_url
from hub.store import quarantine
from hub.store.schema import inbox
from tests.conftest import RunningHub, make_settings, message, serve_hub, support_ticket

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
PUSH_TOKEN = "dGFibGV0LXRva2VuOkFQQTkxYkhlbmQyZW5kMDAwMDAwMDAySECRETDEVICE"
DB_PASSWORD = "Pg-S3cret-pw"
ONLY_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def one_rule(rule_id: str, moment: str, event: str, channel: str, template: str) -> str:
    """triggers.yaml with one immediate rule: `event` answered on `channel` with `template`."""
    return (f"rules:\n  - {{id: {rule_id}, stage: decision, moment: {moment}, urgency: immediate, when: {{event: {event}}},\n"
            f"     respond: [{{channel: {channel}, template: {template}}}]}}\n")


WEBHOOK_RULES = one_rule("lead_to_cdp", "other", "Lead Captured", "webhook", "lead.webhook.j2")
PUSH_RULES = one_rule("cart_push", "cart_activity", "Cart Viewed", "push", "cart.push.j2")


@contextmanager
def hub_with_rules(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, rules: str, templates: dict[str, str],
    **overrides: Any,
) -> Iterator[RunningHub]:
    """A hub whose only rules are `rules`, with `templates` added to its templates."""
    (mappings_dir / "triggers.yaml").write_text(rules)
    for name, text in templates.items():
        (mappings_dir / "templates" / name).write_text(text)
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, **{**sandbox.settings_overrides(), **overrides})
    with serve_hub(settings, sandbox) as running:
        yield running


def delivery_log(hub: RunningHub) -> str:
    """Everything the delivery log API shows, as text."""
    return json.dumps(hub.admin("/api/deliveries"), ensure_ascii=False)


def lead_captured(hub: RunningHub) -> None:
    hub.send(message("identify", userId="u-jane", traits={"email": "jane.doe@example.com", "first_name": "Jane"}),
             message(userId="u-jane", event="Lead Captured"))
    hub.settle()


def cart_viewed(hub: RunningHub) -> None:
    hub.send(message("identify", userId="u-ana", traits={"email": "ana.silva@example.com", "first_name": "Ana"}),
             message(userId="u-ana", event="App Opened", context={"device": {"token": PUSH_TOKEN}}),
             message(userId="u-ana", event="Cart Viewed"))
    hub.settle()


@contextmanager
def uvicorn_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Send uvicorn's error log to `caplog` while the block runs.

    uvicorn's loggers do not propagate to the root logger caplog listens on, and each server start reconfigures
    them (dropping handlers): enter this once the servers are up.
    """
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)


def test_webhook_response_excerpt_cut_inside_an_email_does_not_show_its_start(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """The delivery log keeps the first 200 characters of a receiver's answer; cut inside an email address
    ("jane.doe@exa"), what is left no longer looks like one to the masking, so the cut must not leave it."""
    email = "jane.doe@example.com"
    prefix = '{"error":"lead rejected","detail":"a lead already exists for '
    body = prefix + "x" * (200 - len(prefix) - len("jane.doe@exa")) + email + '"}'
    assert body[:200].endswith("jane.doe@exa")

    async def receiver(_request: Request) -> PlainTextResponse:
        return PlainTextResponse(body, status_code=400)

    with BackgroundServer(Starlette(routes=[Route("/hook", receiver, methods=["POST"])])) as echo:
        with hub_with_rules(tmp_path, mappings_dir, sandbox, WEBHOOK_RULES, {"lead.webhook.j2": "New lead"},
                            outbound_webhook_url=f"{echo.url}/hook") as hub:
            lead_captured(hub)
            shown = delivery_log(hub)
    assert '"attempt_log"' in shown and "lead rejected" in shown  # the receiver's answer is in the delivery log
    assert "jane.doe" not in shown
    assert "a lead already exists for …" in shown  # the cut word is left out


def test_webhook_url_password_is_hidden_in_the_attempts_request_summary(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """A receiver's URL may carry Basic credentials; the delivery log shows the URL, never the password."""
    plain = sandbox.settings_overrides()["outbound_webhook_url"]
    with_credentials = plain.replace("http://", "http://cdp-user:Hook-Pass-123@", 1)
    with hub_with_rules(tmp_path, mappings_dir, sandbox, WEBHOOK_RULES, {"lead.webhook.j2": "New lead"},
                        outbound_webhook_url=with_credentials) as hub:
        lead_captured(hub)
        shown = delivery_log(hub)
    assert "Hook-Pass-123" not in shown
    assert '"url": "' + plain.replace("http://", "http://cdp-user:***@", 1) in shown


def test_push_title_is_masked_in_the_attempts_request_summary(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """A push title may quote the person (their email here); FCM's request summary must mask it as `content` does."""
    template = "{% block title %}Your cart, {{ profile.email }}{% endblock %}{% block body %}Still there.{% endblock %}"
    with hub_with_rules(tmp_path, mappings_dir, sandbox, PUSH_RULES, {"cart.push.j2": template}) as hub:
        cart_viewed(hub)
        deliveries = hub.admin("/api/deliveries")["deliveries"]
    [push] = [d for d in deliveries if d["channel"] == "push"]
    assert push["status"] == "sent"
    assert push["content"]["title"] == "Your cart, a***@example.com"
    [attempt] = push["attempt_log"]
    assert "ana.silva@example.com" not in json.dumps(attempt["request_summary"])
    assert attempt["request_summary"]["title"] == "Your cart, a***@example.com"


def test_fcm_error_quoting_the_push_token_shows_it_masked(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """A device token is as good as a password for messaging the device; a provider error that quotes it back
    must show it cut short, as the delivery's target is, and email/phone masking cannot recognise a token."""
    template = "{% block title %}Still thinking?{% endblock %}{% block body %}Your cart is saved.{% endblock %}"
    sandbox.fcm.fail_next(400, "INVALID_ARGUMENT", message=f"Invalid registration token: {PUSH_TOKEN}")
    with hub_with_rules(tmp_path, mappings_dir, sandbox, PUSH_RULES, {"cart.push.j2": template}) as hub:
        cart_viewed(hub)
        shown = delivery_log(hub)
    assert "fcm.INVALID_ARGUMENT" in shown
    assert PUSH_TOKEN not in shown
    assert f"Invalid registration token: {PUSH_TOKEN[:10]}…" in shown


@pytest.mark.parametrize(
    ("email", "masked"), [("zoë@example.com", "z***@example.com"), ("ana@bücher.de", "a***@bücher.de")]
)
def test_non_ascii_email_addresses_are_masked_in_the_delivery_log(
    running_hub: RunningHub, email: str, masked: str
) -> None:
    """Identity accepts internationalised addresses, so masking must recognise them too (email target, CRM field)."""
    running_hub.send(*support_ticket("u-intl", {"email": email, "first_name": "Zoe", "last_name": "Weiss"}))
    running_hub.settle()
    deliveries = running_hub.admin("/api/deliveries")["deliveries"]
    by_channel = {d["channel"]: d for d in deliveries}
    assert email not in json.dumps(deliveries, ensure_ascii=False)
    assert by_channel["email"]["target"] == masked
    assert by_channel["crm"]["content"]["field_Email"] == masked


def test_settings_repr_hides_the_database_password(tmp_path: Path) -> None:
    """Settings may be printed or logged whole; the database URL's password must not show, like the SecretStr ones."""
    settings = make_settings(tmp_path, database_url=f"postgresql+psycopg://hub:{DB_PASSWORD}@db.internal:5432/hub")
    shown = repr(settings)
    assert "sandbox-auth-token" not in shown
    assert DB_PASSWORD not in shown
    assert "hub:***@db.internal:5432/hub" in shown


def test_touchhub_migrate_prints_the_database_url_without_its_password(postgres: Any, tmp_path: Path) -> None:
    """`touchhub migrate` says where it migrated; terminal output ends up in CI logs, so the password is hidden."""
    url = make_url(postgres.create_database()).set(password=DB_PASSWORD)
    env = {"COLUMNS": "300", "PATH": "", "HUB_DATABASE_URL": url.render_as_string(hide_password=False)}
    if "PYTHONPATH" in os.environ:  # a checkout run from elsewhere: its CLI, not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    result = subprocess.run([TOUCHHUB, "migrate"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert DB_PASSWORD not in result.stdout
    assert f"Schema is up to date in {url.render_as_string(hide_password=True)}" in result.stdout


def refuse(running_hub: RunningHub, constraint: str) -> None:
    """Make the store refuse a row, as an unexpected database error would."""
    with running_hub.hub.store.write() as connection:
        connection.execute(sql_text(constraint))


@ONLY_POSTGRESQL
def test_ingest_database_error_is_logged_without_the_events_values(
    running_hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected database error on ingest reaches uvicorn's error log (plain logging, no masking); the
    statement's parameters, i.e. the raw event's email and phone, must not be in it. A constraint the test adds
    refuses the row (the NUL byte that did so is refused at ingest now)."""
    refuse(running_hub, "ALTER TABLE inbox ADD CONSTRAINT refuses_m1 CHECK (message_id <> 'm-1')")
    # SQLAlchemy shortens a long parameter in the middle: the traits go first, where a leak would show.
    event = {"traits": {"email": "jane.doe@example.com", "phone": "+14155550100"},
             **message("identify", userId="u-jane", messageId="m-1")}
    with uvicorn_errors(caplog):
        answer = running_hub.send(event)
        deadline = time.monotonic() + 5  # uvicorn logs after the 500 has gone out; the text once it is formatted
        while "Exception in ASGI application" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert answer.status_code == 500
    assert "Exception in ASGI application" in caplog.text
    assert "jane.doe@example.com" not in caplog.text and "+14155550100" not in caplog.text
    assert "SQL parameters hidden" in caplog.text


@ONLY_POSTGRESQL
@pytest.mark.hub_settings(pipeline_max_attempts=1)
def test_a_failing_statement_does_not_quote_the_events_values(running_hub: RunningHub) -> None:
    """A pipeline failure is logged, and kept as the inbox row's error and the quarantine's reason. The log's
    masking finds emails and phones but no device token, so the statement's error must not quote its
    parameters. A constraint the test adds refuses the user id (the NUL byte that did so is refused at ingest now)."""
    refuse(running_hub, "ALTER TABLE identifiers ADD CONSTRAINT refuses_ana CHECK (value <> 'u-ana')")
    event = message(userId="u-ana", event="App Opened", context={"device": {"token": PUSH_TOKEN}})
    answer = running_hub.send(event)
    assert answer.status_code == 200, answer.text
    running_hub.settle()
    with running_hub.hub.store.read() as connection:
        [error] = connection.execute(select(inbox.c.error)).scalars().all()
        [refused] = quarantine.recent(connection)
    assert "SQL parameters hidden" in error and PUSH_TOKEN not in error
    assert PUSH_TOKEN not in f"{refused['reason']} {refused['problems']}"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://cdp-user:Hook-Pass-123@hooks.example.com/in", "https://cdp-user:***@hooks.example.com/in"),
    ("https://tok_live_123@hooks.example.com/in", "https://***@hooks.example.com/in"),
    ("https://hooks.example.com/in?s3cr3t-token", "https://hooks.example.com/in?***"),
    ("https://hooks.example.com/in?token=abc&v=2", "https://hooks.example.com/in?token=***&v=***"),
    ("postgresql+psycopg://hub:Pg-S3cret@db:5432/hub", "postgresql+psycopg://hub:***@db:5432/hub"),
    ("postgresql+psycopg://hub:pa/ss+w0rd@db:5432/hub?sslmode=require", "postgresql+psycopg://hub:***@db:5432/hub?sslmode=***"),
    ("postgresql://hub@db/hub?password=s3cret&sslpassword=k3y", "postgresql://hub@db/hub?password=***&sslpassword=***"),
    ("not a url", "not a url"),
    ("sqlite:///var/hub.db", "sqlite:///var/hub.db"),
    ("HTTPS://tok@hooks.example.com/in", "HTTPS://***@hooks.example.com/in"),
])
def test_a_url_is_shown_without_the_secrets_it_carries(url: str, shown: str) -> None:
    """A token as the user name, or as the whole query, is as much a credential as a password."""
    assert shown_url(url) == shown


def test_the_access_log_of_touchhub_serve_hides_an_unsubscribe_links_token() -> None:
    """uvicorn's access log (on at INFO under `touchhub serve`) wrote each path with its query: an unsubscribe
    link's token, which opts its person out for whoever reads the log."""
    configure_logging("INFO")
    uvicorn.Config(FastAPI(), log_level="info")  # applies uvicorn's logging set-up, as `uvicorn.run` does
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/unsubscribe?token=eyJwIjoi.c2ln&x", "1.1", 200)
    finally:
        access.removeHandler(handler)
    assert written.getvalue().strip() == '127.0.0.1:5000 - "GET /v1/unsubscribe?token=***&*** HTTP/1.1" 200 OK'
