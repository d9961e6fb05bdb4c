"""Start every sandbox provider at once and tell the hub where they are.

Used by `touchhub demo`, `touchhub serve --sandbox` and the tests, so all
three exercise the same fakes with the same real client libraries.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from connectors.sandbox import salesforce
from connectors.sandbox.twilio import FakeTwilio, create_app
from hub.serving import BackgroundServer


class SandboxProviders:
    """Context manager running the fake providers on free loopback ports."""

    def __init__(self) -> None:
        self.twilio = FakeTwilio()
        self._twilio_server = BackgroundServer(create_app(self.twilio))
        self.salesforce = salesforce.FakeSalesforce()
        self._salesforce_server = BackgroundServer(salesforce.create_app(self.salesforce))

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
        }

    @property
    def urls(self) -> dict[str, str]:
        return {"twilio": self._twilio_server.url, "salesforce": self._salesforce_server.url}

    def __enter__(self) -> "SandboxProviders":
        self._twilio_server.start()
        self._salesforce_server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._twilio_server.stop()
        self._salesforce_server.stop()
