"""Start every sandbox provider at once and tell the hub where they are.

Used by `touchhub demo`, `touchhub serve --sandbox` and the tests, so all
three exercise the same fakes with the same real client libraries.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from connectors.sandbox import webhooks
from connectors.sandbox.smtp import FakeSmtp, SmtpServer
from connectors.sandbox.twilio import FakeTwilio, create_app
from hub.serving import BackgroundServer


class SandboxProviders:
    """Context manager running the fake providers on free loopback ports."""

    def __init__(self) -> None:
        self.twilio = FakeTwilio()
        self._twilio_server = BackgroundServer(create_app(self.twilio))
        self.webhooks = webhooks.FakeWebhookReceiver()
        self._webhook_server = BackgroundServer(webhooks.create_app(self.webhooks))
        self.smtp = FakeSmtp(credentials=("sandbox", "sandbox-smtp-password"))
        self._smtp_server = SmtpServer(self.smtp)

    def settings_overrides(self) -> dict[str, Any]:
        """Settings that point the hub's destinations at these fakes."""
        return {
            "twilio_api_base_url": self._twilio_server.url,
            "twilio_account_sid": self.twilio.account_sid,
            "twilio_auth_token": self.twilio.auth_token,
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
            "webhooks": self._webhook_server.url,
            "smtp": f"smtp://{self._smtp_server.host}:{self._smtp_server.port}",
        }

    def __enter__(self) -> "SandboxProviders":
        self._twilio_server.start()
        self._webhook_server.start()
        self._smtp_server.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._twilio_server.stop()
        self._webhook_server.stop()
        self._smtp_server.__exit__(exc_type, exc, tb)
