"""Start every sandbox provider at once and tell the hub where they are.

Used by `touchhub demo`, `touchhub serve --sandbox` and the tests, so all
three exercise the same fakes with the same real client libraries.
"""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from connectors.sandbox import fcm, salesforce, salesforce_api, webhooks
from connectors.sandbox.smtp import FakeSmtp, SmtpServer
from connectors.sandbox.twilio import FakeTwilio, create_app
from hub.serving import BackgroundServer


class SandboxProviders:
    """Context manager running the fake providers on free loopback ports."""

    def __init__(self) -> None:
        self.twilio = FakeTwilio()
        self._twilio_server = BackgroundServer(create_app(self.twilio))
        self.salesforce = salesforce.FakeSalesforce()
        self._salesforce_server = BackgroundServer(salesforce_api.create_app(self.salesforce))
        self.fcm = fcm.FakeFcm()
        self._fcm_server = BackgroundServer(fcm.create_app(self.fcm))
        self.webhooks = webhooks.FakeWebhookReceiver()
        self._webhook_server = BackgroundServer(webhooks.create_app(self.webhooks))
        self.smtp = FakeSmtp(credentials=("sandbox", "sandbox-smtp-password"))
        self._smtp_server = SmtpServer(self.smtp)
        self._keys = tempfile.TemporaryDirectory(prefix="touchhub-sandbox-keys-")
        # A throwaway service-account key the fake trusts; its token_uri is the fake.
        self.fcm_key_file = Path(self._keys.name) / "fcm-service-account.json"
        self.fcm_key_file.write_text(json.dumps(self.fcm.service_account_key(f"{self._fcm_server.url}/token")))
        self._servers = [self._twilio_server, self._salesforce_server, self._fcm_server, self._webhook_server]

    def settings_overrides(self) -> dict[str, Any]:
        """Settings that point the hub's destinations at these fakes."""
        return {
            "twilio_api_base_url": self._twilio_server.url,
            "twilio_account_sid": self.twilio.account_sid,
            "twilio_auth_token": self.twilio.auth_token,
            "salesforce_api_base_url": self._salesforce_server.url,
            "salesforce_consumer_key": self.salesforce.consumer_key,
            "salesforce_consumer_secret": self.salesforce.consumer_secret,
            "salesforce_username": self.salesforce.username,
            "salesforce_password": self.salesforce.password,
            "fcm_credentials_file": self.fcm_key_file,
            "fcm_api_base_url": self._fcm_server.url,
            "outbound_webhook_url": f"{self._webhook_server.url}/hooks/webhook",
            "outbound_webhook_secret": self.webhooks.secret,
            "chat_webhook_url": f"{self._webhook_server.url}/hooks/chat",
            "chat_webhook_secret": self.webhooks.secret,
            "webhook_allowed_networks": "127.0.0.1",  # the fakes live on loopback
            "smtp_host": self._smtp_server.host,
            "smtp_port": self._smtp_server.port,
            "smtp_tls": "none",
            "smtp_username": self.smtp.credentials[0] if self.smtp.credentials else None,
            "smtp_password": self.smtp.credentials[1] if self.smtp.credentials else None,
        }

    @property
    def urls(self) -> dict[str, str]:
        return {
            "twilio": self._twilio_server.url,
            "salesforce": self._salesforce_server.url,
            "fcm": self._fcm_server.url,
            "webhooks": self._webhook_server.url,
            "smtp": f"smtp://{self._smtp_server.host}:{self._smtp_server.port}",
        }

    def __enter__(self) -> "SandboxProviders":
        # Started and stopped side by side: each takes a few uvicorn ticks, and
        # every hub test pays for them.
        with ThreadPoolExecutor(len(self._servers)) as pool:
            list(pool.map(BackgroundServer.start, self._servers))
        self._smtp_server.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with ThreadPoolExecutor(len(self._servers)) as pool:
            list(pool.map(BackgroundServer.stop, self._servers))
        self._smtp_server.__exit__(exc_type, exc, tb)
        self._keys.cleanup()
