"""Settings as `.env.example` writes them: an optional one emptied is unset.

`.env.example` lists every setting, the optional ones as `# HUB_X=` lines ("Unset: none", "the destination
is built only when set"); ops copy it to `.env` (or a Helm chart / compose file sets each variable, empty by
default) and fill in what they use. The hub's own rule is that an emptied setting is unset
(`hub/destination_settings.py`: "an empty one is unset, as an emptied setting is everywhere in the hub";
README: "an empty `HUB_*_WEBHOOK_URL` is unset"), and `HUB_SALESFORCE_CONSUMER_KEY=` and
`HUB_PUBLIC_BASE_URL=` did behave so; these two, emptied, were not taken as unset.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.runtime import Hub
from hub.settings import HubSettings
from tests.conftest import make_settings


def test_an_emptied_fcm_credentials_file_means_no_push_destination_not_a_hub_that_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """.env.example: "Service-account key JSON of the Firebase project; the destination is built only when set"
    (`# HUB_FCM_CREDENTIALS_FILE=...`). Emptied (`HUB_FCM_CREDENTIALS_FILE=`, as a .env copied from the example or
    a chart's empty default writes it) pydantic reads it as `Path("")`, i.e. `Path(".")`, which is truthy, so
    `push_destination` builds fcm_push with the current folder as its key file and the hub stops at start:
    "HUB_FCM_*: credentials_file: Path does not point to a file". HUB_SALESFORCE_CONSUMER_KEY= and
    HUB_CHAT_WEBHOOK_URL= emptied are unset (no such destination), as the hub's own rule says."""
    monkeypatch.setenv("HUB_FCM_CREDENTIALS_FILE", "")
    settings = make_settings(tmp_path)
    hub = Hub(settings)  # it raised ConfigError: credentials_file: Path does not point to a file
    try:
        assert "fcm_push" not in hub.destinations
    finally:
        hub.store.dispose()


def test_an_emptied_metrics_port_means_no_metrics_listener_not_settings_that_cannot_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """.env.example: `# HUB_METRICS_PORT=9100` "... Unset: none." Emptied (`HUB_METRICS_PORT=`), every command
    (serve, worker, migrate, mappings check ...) dies loading settings with pydantic's `metrics_port: Input
    should be a valid integer, unable to parse string as an integer` instead of running without a metrics
    listener, as HUB_PUBLIC_BASE_URL= (the validator says "Empty is the default ..., as unset") does."""
    monkeypatch.setenv("HUB_METRICS_PORT", "")
    settings = HubSettings(_env_file=None)  # type: ignore[call-arg]  # it raised ValidationError (int_parsing)
    assert settings.metrics_port is None

