"""What the documented contract (README, .env.example) promised and the hub did otherwise.

An emptied setting was taken as written (a host of "" binds every interface), an IPv6 HUB_HOST made public
links that are no URL, a route to a destination or identifier type nothing has passed the check and the start,
a worker process with no worker idled for ever, and an unsubscribe link cut before its token got a raw JSON 422.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.api.app import create_app
from hub.cli import app
from hub.errors import ConfigError
from hub.runtime import Hub
from hub.settings import EMPTIED_IS_UNSET, HubSettings
from tests.conftest import make_settings, migrated_sqlite

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
# A typo in a route: (the text as shipped, as typed, the value the problem names).
ROUTE_TYPOS = [
    ("destination: twilio_sms", "destination: twilo_sms", "twilo_sms"),
    ("target: phone\n", "target: phonee\n", "phonee"),
]


def settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> HubSettings:
    """HubSettings as a process reads them, from HUB_* variables, in a folder without a .env."""
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return HubSettings()


@pytest.mark.parametrize("name", EMPTIED_IS_UNSET)
def test_an_emptied_setting_is_its_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    """`HUB_X=` (a .env copied from .env.example with the value cleared, a chart's empty default) was taken as
    written: HUB_HOST= bound every interface, HUB_MAPPINGS_DIR= was the current folder, HUB_DATABASE_URL= and the
    provider settings were "" where .env.example documents a default."""
    settings = settings_from_env(monkeypatch, tmp_path, **{f"HUB_{name.upper()}": ""})
    assert getattr(settings, name) == HubSettings.model_fields[name].default


def test_an_emptied_hub_host_serves_and_links_on_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HUB_HOST= was the host "": `touchhub serve` listened on every interface, and every unsubscribe link and
    Twilio StatusCallback was `http://:8000/...`, with no word at start."""
    settings = settings_from_env(monkeypatch, tmp_path, HUB_HOST="")
    assert settings.host == "127.0.0.1"
    assert settings.public_url("/v1/unsubscribe") == "http://127.0.0.1:8000/v1/unsubscribe"


@pytest.mark.parametrize("host", ["::1", "::"])
def test_the_public_url_of_an_ipv6_hub_host_brackets_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str) -> None:
    """An IPv6 HUB_HOST gave `http://::1:8000/...` as every unsubscribe link and StatusCallback, which no one can
    follow (its port cannot be read)."""
    link = settings_from_env(monkeypatch, tmp_path, HUB_HOST=host).public_url("/v1/unsubscribe")
    assert link == f"http://[{host}]:8000/v1/unsubscribe"
    assert urlsplit(link).port == 8000


def _with_route_typo(mappings_dir: Path, shipped: str, typed: str) -> None:
    routes = mappings_dir / "routes.yaml"
    assert shipped in routes.read_text()
    routes.write_text(routes.read_text().replace(shipped, typed, 1))


@pytest.mark.parametrize(("shipped", "typed", "named"), ROUTE_TYPOS)
def test_mappings_check_refuses_a_route_to_nothing_at_its_line(
    mappings_dir: Path, shipped: str, typed: str, named: str
) -> None:
    """A route's destination no connector has, or target no identifier type is, passed `mappings check`: every
    SMS then waited for a process that could send it and was dead-lettered a day later."""
    _with_route_typo(mappings_dir, shipped, typed)
    line = 1 + (mappings_dir / "routes.yaml").read_text().splitlines().index(f"    {typed.strip()}")
    checked = CliRunner().invoke(app, ["mappings", "check"], env={"HUB_MAPPINGS_DIR": str(mappings_dir), "COLUMNS": "300"})
    assert checked.exit_code == 1, checked.output
    assert f"routes.yaml:{line}: channels.sms." in checked.output and repr(named) in checked.output


@pytest.mark.parametrize(("shipped", "typed", "named"), ROUTE_TYPOS)
def test_the_hub_does_not_start_on_a_route_to_nothing(
    tmp_path: Path, mappings_dir: Path, shipped: str, typed: str, named: str
) -> None:
    """The hub started on such a route with only a warning that the channel's destination was not configured."""
    _with_route_typo(mappings_dir, shipped, typed)
    with pytest.raises(ConfigError) as refused:
        Hub(make_settings(tmp_path, mappings_dir=mappings_dir))
    assert any("routes.yaml:" in problem and repr(named) in problem for problem in refused.value.problems)


def test_routes_to_installed_destinations_without_settings_start(tmp_path: Path, mappings_dir: Path) -> None:
    """Installed is enough: a delivery process without a destination's settings (chat_webhook has no URL here)
    still starts, as a node without credentials must."""
    hub = Hub(make_settings(tmp_path, mappings_dir=mappings_dir, chat_webhook_url=None))
    try:
        assert hub.router.routes["chat"].destination not in hub.destinations
    finally:
        hub.store.dispose()


def test_touchhub_worker_with_no_worker_to_run_exits_2(tmp_path: Path) -> None:
    """With HUB_WORKERS= and no --only, `touchhub worker` printed "Workers running (none)" and idled until
    killed, which its supervisor took for a healthy process."""
    scratch = tmp_path / "work"
    scratch.mkdir()
    process = subprocess.Popen(
        [TOUCHHUB, "worker"], cwd=scratch, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "", "HUB_DATABASE_URL": migrated_sqlite(tmp_path / "hub.db"), "HUB_WORKERS": ""},
    )
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        pytest.fail("touchhub worker with no worker to run was still running after 20 s")
    assert process.returncode == 2, output
    assert "HUB_WORKERS" in output and "--only" in output


@pytest.mark.parametrize("path", ["/v1/unsubscribe", "/v1/resubscribe"])
@pytest.mark.parametrize("query", ["", "?token=", "?token=%20"])
def test_a_link_cut_before_its_token_gets_the_invalid_link_page(tmp_path: Path, path: str, query: str) -> None:
    """A link without its `?token=` (a mail client cut it) got FastAPI's JSON 422 shown raw to the person,
    without the page's no-store and no-referrer headers."""
    hub = Hub(make_settings(tmp_path))
    try:
        with TestClient(create_app(hub, run_workers=False)) as client:
            methods = ("GET", "POST") if path == "/v1/unsubscribe" else ("POST",)
            for method in methods:
                answer = client.request(method, path + query)
                assert answer.status_code == 400, (method, answer.text)
                assert answer.headers["content-type"].startswith("text/html")
                assert answer.headers["cache-control"] == "no-store"
                assert answer.headers["referrer-policy"] == "no-referrer"
                assert "Invalid link" in answer.text
    finally:
        hub.store.dispose()
