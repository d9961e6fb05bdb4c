"""`touchhub demo`: a whole journey through a real hub and real (fake-provider) SMS, in seconds.

The demo is an honest user of the product: it starts the hub's HTTP server
and the sandbox providers on free loopback ports, sends the sample journey
over HTTP as an SDK would, and reads the results back from the admin API.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from connectors.sandbox.providers import SandboxProviders
from hub.api import create_app
from hub.cli_support import plain
from hub.durations import parse_duration
from hub.pii import mask_email, mask_phone
from hub.runtime import Hub
from hub.serving import BackgroundServer
from hub.settings import WORKER_ROLES, HubSettings

BATCH_SIZE = 5


@dataclass
class DemoResult:
    sent: int
    accepted: int
    rejected: int
    stats: dict[str, Any]
    sms: list[dict[str, Any]]
    push: list[dict[str, Any]]
    leads: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    emails: list[dict[str, str]]
    webhooks: list[dict[str, Any]]
    idle: bool


@dataclass
class Journey:
    """The sample messages, with absolute timestamps, and the provider-side state they meet."""

    messages: list[dict[str, Any]]
    unsubscribed_phones: list[str]
    unregistered_push_tokens: list[str]


JOURNEY_FORMAT = (
    'one JSON object {"events": [{"at": "-2h", "message": {...}}, ...]}, optionally with "unsubscribed_phones" '
    'and "unregistered_push_tokens" lists, as mappings/samples/demo_journey.json'
)


def load_journey(path: Path, now: datetime) -> Journey:
    """The journey in `path`; ValueError saying what is wrong and what the file must hold (the .jsonl sample
    beside the shipped journey is one message per line, not a journey)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        messages = [
            {**entry["message"], "timestamp": (now - parse_duration(entry["at"].lstrip("-"))).isoformat()}
            for entry in document["events"]
        ]
        return Journey(messages, document.get("unsubscribed_phones", []), document.get("unregistered_push_tokens", []))
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a journey ({type(exc).__name__}: {exc}); it must be {JOURNEY_FORMAT}") from None


def run_demo(settings: HubSettings, journey: Journey, console: Console) -> DemoResult:
    """Run `journey` through a hub with a throwaway store and every worker (whatever HUB_WORKERS says, since
    no other process serves this hub), against the sandbox providers."""
    messages = journey.messages


    with tempfile.TemporaryDirectory(prefix="touchhub-demo-") as folder, SandboxProviders() as sandbox:
        sandbox.twilio.unsubscribed.update(journey.unsubscribed_phones)
        sandbox.fcm.unregistered.update(journey.unregistered_push_tokens)
        sandbox.twilio.fail_next(503, code=20500, message="Service unavailable (injected by the demo)")
        demo_settings = settings.with_overrides(
            **{
                "database_url": f"sqlite:///{folder}/demo.db",
                "workers": ",".join(WORKER_ROLES),
                # Throwaway credentials: the demo never depends on (or warns about) the development ones.
                "default_write_key": secrets.token_urlsafe(16),
                "admin_token": secrets.token_urlsafe(16),
                "unsubscribe_secret": secrets.token_urlsafe(16),
                "forget_key": secrets.token_hex(32),
                "retry_base_delay_seconds": 0.2,
                "worker_poll_seconds": 0.1,
                # The journey compresses days into seconds; quiet hours would hold its nudges until morning.
                "quiet_hours": "",
                **sandbox.settings_overrides(),
            }
        )
        hub = Hub(demo_settings)
        write_key = demo_settings.default_write_key.get_secret_value()
        admin = {"Authorization": f"Bearer {demo_settings.admin_token.get_secret_value()}"}
        with BackgroundServer(create_app(hub)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            fakes = ", ".join(f"{name} on [bold]{url}[/]" for name, url in sandbox.urls.items())
            console.print(f"Hub on [bold]{server.url}[/]; sandbox {fakes}", highlight=False)
            accepted = rejected = 0
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("Sending the sample journey", total=len(messages))
                for start in range(0, len(messages), BATCH_SIZE):
                    batch = messages[start : start + BATCH_SIZE]
                    answer = client.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
                    body = answer.json()
                    accepted += body.get("accepted", 0)
                    rejected += len(body.get("rejected", []))
                    progress.advance(task, len(batch))
            with console.status("Waiting for the pipeline and deliveries to settle"):
                idle = hub.wait_until_idle(timeout=30)
            stats = client.get("/api/stats", headers=admin).json()
        emails = [{"to": email.rcpt_tos[0], "subject": str(email.message["Subject"])} for email in sandbox.smtp.received]
        return DemoResult(
            len(messages), accepted, rejected, stats, list(sandbox.twilio.messages), list(sandbox.fcm.messages),
            sandbox.salesforce.records("Lead"), sandbox.salesforce.records("Task"), emails,
            [{"name": hook["name"], **json.loads(hook["body"])} for hook in sandbox.webhooks.received], idle,
        )


def print_summary(result: DemoResult, console: Console) -> None:
    overview = Table(title="Touchpoint Hub demo", show_header=False)
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    overview.add_row("Events sent", str(result.sent))
    overview.add_row("Events accepted", str(result.accepted))
    overview.add_row("Items refused (quarantined)", str(result.rejected))
    overview.add_row("Touchpoints", str(result.stats["touchpoints"]))
    overview.add_row("Profiles", str(result.stats["profiles"]))
    overview.add_row("Profile merges", str(result.stats["merges"]))
    for rule, count in sorted(result.stats["decisions"].items()):
        overview.add_row(plain(f"Trigger fired: {rule}"), str(count))
    console.print(overview)

    deliveries = [(row["channel"], row["status"], str(row["count"]), str(row["attempts"])) for row in result.stats["deliveries"]]
    console.print(_table("Deliveries by channel and status", ("channel", "status", "deliveries", "attempts"), deliveries))
    sms = [(mask_phone(message["to"]), message["body"]) for message in result.sms]
    console.print(_table("SMS received by the sandbox Twilio", ("to", "body"), sms))
    emails = [(mask_email(email["to"]), email["subject"]) for email in result.emails]
    console.print(_table("Email received by the sandbox SMTP server", ("to", "subject"), emails))
    push = []
    for sent in result.push:
        notification = sent["message"].get("notification", {})
        push.append((sent["message"]["token"][:14] + "…", notification.get("title", ""), notification.get("body", "")))
    console.print(_table("Push notifications received by the sandbox FCM", ("device token", "title", "body"), push))
    tasks = {task["WhoId"]: task["Subject"] for task in result.tasks}
    leads = [
        (f"{lead.get('FirstName', '')} {lead['LastName']}".strip(), lead.get("Touchhub_Intent__c", ""),
         tasks.get(lead["Id"], ""))
        for lead in result.leads
    ]
    console.print(_table("Leads and owner tasks in the sandbox Salesforce", ("lead", "intent", "task"), leads))
    hooks = [(hook["name"], hook["type"], hook["data"]["rule_id"], hook["data"]["profile_id"]) for hook in result.webhooks]
    console.print(_table("Signed webhooks received by the sandbox receiver", ("endpoint", "type", "rule", "profile"), hooks))
    if not result.idle:
        console.print("[yellow]The hub did not settle within 30 s; the figures above may be incomplete.[/]")


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*map(plain, row))
    return table
