"""Start every sandbox provider at once and tell the hub where they are.

Used by `touchhub demo`, `touchhub serve --sandbox` and the tests, so all
three exercise the same fakes with the same real client libraries.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from connectors.sandbox import webhooks
from connectors.sandbox.twilio import FakeTwilio, create_app
from hub.serving import BackgroundServer


class SandboxProviders:
    """Context manager running the fake providers on free loopback ports."""

    def __init__(self) -> None:
        self.twilio = FakeTwilio()
        self._twilio_server = BackgroundServer(create_app(self.twilio))
        self.webhooks = webhooks.FakeWebhookReceiver()
        self._webhook_server = BackgroundServer(webhooks.create_app(self.webhooks))

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
        }

    @property
    def urls(self) -> dict[str, str]:
        return {"twilio": self._twilio_server.url, "webhooks": self._webhook_server.url}

    def __enter__(self) -> "SandboxProviders":
        self._twilio_server.start()
        self._webhook_server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._twilio_server.stop()
        self._webhook_server.stop()
