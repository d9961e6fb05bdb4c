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

from connectors.sandbox import fcm, salesforce
from connectors.sandbox.twilio import FakeTwilio, create_app
from hub.serving import BackgroundServer


class SandboxProviders:
    """Context manager running the fake providers on free loopback ports."""

    def __init__(self) -> None:
        self.twilio = FakeTwilio()
        self._twilio_server = BackgroundServer(create_app(self.twilio))
        self.salesforce = salesforce.FakeSalesforce()
        self._salesforce_server = BackgroundServer(salesforce.create_app(self.salesforce))
        self.fcm = fcm.FakeFcm()
        self._fcm_server = BackgroundServer(fcm.create_app(self.fcm))
        self._keys = tempfile.TemporaryDirectory(prefix="touchhub-sandbox-keys-")
        # A throwaway service-account key the fake trusts; its token_uri is the fake.
        self.fcm_key_file = Path(self._keys.name) / "fcm-service-account.json"
        self.fcm_key_file.write_text(json.dumps(self.fcm.service_account_key(f"{self._fcm_server.url}/token")))
        self._servers = [self._twilio_server, self._salesforce_server, self._fcm_server]

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
        }

    @property
    def urls(self) -> dict[str, str]:
        return {"twilio": self._twilio_server.url, "salesforce": self._salesforce_server.url,
                "fcm": self._fcm_server.url}

    def __enter__(self) -> "SandboxProviders":
        # Started and stopped side by side: each takes a few uvicorn ticks, and
        # every hub test pays for them.
        with ThreadPoolExecutor(len(self._servers)) as pool:
            list(pool.map(BackgroundServer.start, self._servers))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with ThreadPoolExecutor(len(self._servers)) as pool:
            list(pool.map(BackgroundServer.stop, self._servers))
        self._keys.cleanup()
