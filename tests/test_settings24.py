"""Settings that were taken at start and then crashed the hub or misled the person reading them.

The duration settings were floats above 0 with no upper bound, and pydantic takes "inf" (and 1e12) for a float:
the hub could not date what it added them to, so it died at start with a traceback, or started and then failed
every step. The provider base URLs were taken as any string, and printed whole; a refused value was echoed
whole, a secret's too.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from pydantic import ValidationError

from connectors.sandbox.providers import SandboxProviders
from hub.cli_support import load_settings
from hub.runtime import Hub
from hub.settings import LONGEST_LEASE_SECONDS, LONGEST_SECONDS, HubSettings
from tests.conftest import make_settings, message, migrated_sqlite, serve_hub
from tests.test_cap_timing22 import email_nudge_mappings

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
FLOAT_SETTINGS = sorted(name for name, field in HubSettings.model_fields.items() if field.annotation is float)


def refusal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, **env: str) -> str:
    """What a `touchhub` command prints when its settings, from `env`, are refused (exit 2), on one line."""
    monkeypatch.chdir(tmp_path)  # no .env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(typer.Exit) as exited:
        load_settings()
    assert exited.value.exit_code == 2
    return " ".join(capsys.readouterr().err.split())


def cart_nudges_sent(tmp_path: Path, sandbox: SandboxProviders, **settings: object) -> int:
    """The emails a hub with `settings` sends when Ana leaves a cart: through the pipeline, routing and delivery."""
    hub_settings = make_settings(tmp_path, mappings_dir=email_nudge_mappings(tmp_path), quiet_hours="",
                                 pipeline_max_attempts=1, **sandbox.settings_overrides(), **settings)
    with serve_hub(hub_settings, sandbox) as hub:
        hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com", "first_name": "Ana"}),
                 message(userId="u-ana", event="Cart Viewed"))
        hub.settle()
    return len(sandbox.smtp.received)


def _worker_process(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """`touchhub worker --only pipeline` on the test's SQLite store, from a folder without a .env."""
    scratch = tmp_path / "work"
    scratch.mkdir(exist_ok=True)
    return subprocess.Popen(
        [TOUCHHUB, "worker", "--only", "pipeline"], cwd=scratch, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "", "HUB_DATABASE_URL": migrated_sqlite(tmp_path / "hub.db"),
             "HUB_WORKER_POLL_SECONDS": "0.05", **env},
    )


@pytest.mark.parametrize(
    "setting",
    ["HUB_LEASE_SECONDS", "HUB_MESSAGE_MAX_AGE_HOURS", "HUB_SQLITE_LOCK_TIMEOUT_SECONDS", "HUB_WORKER_POLL_SECONDS"],
)
def test_an_infinite_duration_setting_exits_2_naming_it_not_with_a_traceback(tmp_path: Path, setting: str) -> None:
    """`timedelta(seconds=inf)` and the writer lock's deadline raised OverflowError out of `Hub()`: `touchhub worker`
    ended in a traceback instead of "HUB_LEASE_SECONDS: ...", exit 2. HUB_WORKER_POLL_SECONDS=inf was taken, and
    every worker then died at its first nap (exit 1, "worker pipeline died (OverflowError)")."""
    process = _worker_process(tmp_path, **{setting: "inf"})
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    flat = " ".join(output.split())
    assert "Traceback" not in flat, flat[-600:]
    assert process.returncode == 2 and f"{setting}: Input should be a finite number" in flat, flat[-600:]


@pytest.mark.parametrize("field", FLOAT_SETTINGS)
def test_no_float_setting_takes_infinity_or_nan(field: str) -> None:
    """Each float setting but the timer gather time (bounded at 0.5 s) took "inf" and "nan": a reload interval, a
    retry delay or a timeout the hub then added to a time or handed to a socket."""
    for value in ("inf", "nan"):
        with pytest.raises(ValidationError, match=field):
            HubSettings(_env_file=None, **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", [name for name in HubSettings.model_fields if name.endswith("_batch_size")])
def test_a_batch_size_past_what_sqlite_counts_is_refused_at_start(tmp_path: Path, field: str) -> None:
    """A batch size had no upper bound: 1e19 (a typo, or "all of them") was taken, and every claim of the pipeline
    or the delivery engine then failed with "OverflowError: Python int too large to convert to SQLite INTEGER"."""
    with pytest.raises(ValidationError, match=field):
        make_settings(tmp_path, **{field: 10**19})


def test_a_lease_too_long_to_date_is_refused_at_start_not_failing_every_step(tmp_path: Path) -> None:
    """HUB_LEASE_SECONDS=1e12 (a typo for 1e2, or "never expire") was taken: the hub started, and then every
    pipeline and delivery step failed with "OverflowError: date value out of range" (now + lease) while /healthz
    answered ok, so no event was ever processed."""
    with pytest.raises(ValidationError, match="lease_seconds"):
        make_settings(tmp_path, lease_seconds=1e12, workers="")


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_longest_lease_taken_still_processes_events(
    tmp_path: Path, database_url: str, sandbox: SandboxProviders
) -> None:
    """The bound is one PostgreSQL can hold: two leases are each session's idle-in-transaction timeout, in
    milliseconds of a 32-bit integer (24.8 days), past which no connection opened."""
    assert cart_nudges_sent(tmp_path, sandbox, database_url=database_url, lease_seconds=LONGEST_LEASE_SECONDS) == 1


def test_a_message_max_age_past_a_century_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """HUB_MESSAGE_MAX_AGE_HOURS=1e8, ops' "never skip a message as too old", was taken: routing's send-by time
    (due time + max age) went past the year 9999, so every event that decided a message failed with OverflowError
    and was quarantined, and nothing was sent."""
    shown = refusal(monkeypatch, capsys, tmp_path, HUB_MESSAGE_MAX_AGE_HOURS="1e8")
    assert "HUB_MESSAGE_MAX_AGE_HOURS: Input should be less than or equal to 876000" in shown


def test_a_century_of_message_max_age_still_sends_the_message(tmp_path: Path, sandbox: SandboxProviders) -> None:
    """The longest age taken, a century as rules' durations are, dates every send-by time."""
    assert cart_nudges_sent(tmp_path, sandbox, message_max_age_hours=LONGEST_SECONDS / 3600) == 1


@pytest.mark.parametrize(("setting", "value"), [
    ("HUB_TWILIO_API_BASE_URL", "127.0.0.1:9000"),
    ("HUB_TWILIO_API_BASE_URL", "api.twilio-proxy.example.com"),
    ("HUB_SALESFORCE_API_BASE_URL", "127.0.0.1:9001"),
    ("HUB_FCM_API_BASE_URL", "http://127.0.0.1:90020"),
    ("HUB_PUBLIC_BASE_URL", "https://hub.example.com:443443"),
])
def test_a_provider_base_url_no_send_could_follow_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: str, value: str
) -> None:
    """The public base URL and the webhook URLs were checked at start, but the providers' base URLs were taken as
    any string: written without a scheme (or with a port past 65535) the hub started, and every SMS, push or CRM
    update then failed at its send, retried for HUB_DELIVERY_MAX_AGE_SECONDS, then dead-lettered."""
    assert f"{setting}: Value error" in refusal(monkeypatch, capsys, tmp_path, **{setting: value})


def test_an_emptied_provider_base_url_is_the_providers_own(tmp_path: Path) -> None:
    """`HUB_TWILIO_API_BASE_URL=`, as a .env copied from .env.example writes it, is unset, as every emptied setting."""
    hub = Hub(make_settings(tmp_path, twilio_api_base_url="", workers=""))
    hub.store.dispose()


def test_settings_repr_hides_credentials_in_the_provider_base_urls(tmp_path: Path) -> None:
    """"URLs, which may carry a password or a token, show neither", but only the database and webhook URLs were
    hidden: a proxy's Basic credentials in HUB_TWILIO_API_BASE_URL printed whole."""
    settings = make_settings(
        tmp_path, twilio_api_base_url="https://hub:tw-proxy-pass@proxy.example.com",
        salesforce_api_base_url="https://hub:sf-proxy-pass@proxy.example.com",
        fcm_api_base_url="https://proxy.example.com/fcm?token=fcm-proxy-token",
    )
    shown = repr(settings) + str(settings)
    for secret in ("tw-proxy-pass", "sf-proxy-pass", "fcm-proxy-token"):
        assert secret not in shown


@pytest.mark.parametrize(("setting", "value", "secret"), [
    ("HUB_FORGET_KEY", "the-real-key-cut-short", "the-real-key-cut-short"),
    ("HUB_FCM_API_BASE_URL", "https://hub:proxy-pass@proxy.example.com:99999", "proxy-pass"),
])
def test_a_refused_setting_is_not_echoed_with_the_secret_it_holds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: str, value: str,
    secret: str,
) -> None:
    """The refusal echoed the value given, `(got '...')`: a HUB_FORGET_KEY too short, often the real key cut
    short, or a proxy's password in a base URL went to the terminal, a CI log or a pod's events."""
    shown = refusal(monkeypatch, capsys, tmp_path, **{setting: value})
    assert setting in shown
    assert secret not in shown, shown
