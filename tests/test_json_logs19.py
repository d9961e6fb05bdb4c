"""HUB_LOG_JSON=true: every line `touchhub serve` writes is one JSON object, masked like the hub's own lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, WRITE_KEY, free_port, message

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
UNSUBSCRIBE_TOKEN = "eyJwIjoi.c2ln"


def hub_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a hub on its own SQLite file, with no HUB_* setting of the caller's leaking in."""
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("HUB_")},
        "HUB_DATABASE_URL": f"sqlite:///{tmp_path}/hub.db", "HUB_LOG_JSON": "true",
        "HUB_DEFAULT_WRITE_KEY": WRITE_KEY, "HUB_ADMIN_TOKEN": ADMIN_TOKEN, "COLUMNS": "1000", **settings,
    }


def wait_until_healthy(process: subprocess.Popen[str], port: int) -> None:
    """Return once the hub answers /healthz; fail if it exits or takes more than 30 s."""
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline and process.poll() is None, "the hub did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)


def serve_log_lines(tmp_path: Path) -> list[str]:
    """The log lines of `touchhub serve` with HUB_LOG_JSON=true over a batch and an unsubscribe link, start to stop."""
    port = free_port()
    process = subprocess.Popen([TOUCHHUB, "serve"], env=hub_env(tmp_path, HUB_PORT=str(port)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_healthy(process, port)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/batch", json={"batch": [message(userId="u-1", event="x")]},
                            auth=(WRITE_KEY, ""))
        assert answer.status_code == 200
        httpx.get(f"http://127.0.0.1:{port}/v1/unsubscribe?token={UNSUBSCRIBE_TOKEN}")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return [line for line in (out + err).splitlines() if line.strip() and not line.startswith("Touchpoint Hub on ")]


def not_json(lines: list[str]) -> list[str]:
    """The lines a JSON log shipper could not parse."""
    unparsed = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            unparsed.append(line)
    return unparsed


def test_hub_log_json_makes_every_log_line_json(tmp_path: Path) -> None:
    """uvicorn's access log and lifecycle lines ("Started server process") and every stdlib logger stayed plain
    text beside structlog's JSON, so a log shipper parsing JSON dropped or mangled them."""
    lines = serve_log_lines(tmp_path)
    assert not_json(lines) == [], "log lines that are not JSON with HUB_LOG_JSON=true"
    events = [json.loads(line)["event"] for line in lines]
    assert any("POST /v1/batch" in event for event in events), "the access log is on at INFO"
    assert any(event.startswith("Started server process") for event in events)


def test_the_json_access_log_still_hides_an_unsubscribe_links_token(tmp_path: Path) -> None:
    """Routing uvicorn's access log through the hub's formatter must keep its query values hidden: the token
    opts its person out for whoever reads the log."""
    lines = serve_log_lines(tmp_path)
    access = [json.loads(line)["event"] for line in lines if "/v1/unsubscribe" in line]
    assert access and all(UNSUBSCRIBE_TOKEN not in event and "token=***" in event for event in access)


def test_a_library_loggers_line_is_json_and_masked(tmp_path: Path) -> None:
    """A stdlib logger's line (SQLAlchemy, twilio, uvicorn.error) skipped structlog's processors: plain text,
    with the email address and phone number in it written whole."""
    script = (
        "import logging; from hub.cli_support import load_settings; load_settings(); "
        "logging.getLogger('sqlalchemy.engine').warning('insert failed for %s, %s', 'jane.doe@example.com', '+14155550100')"
    )
    done = subprocess.run([sys.executable, "-c", script], env=hub_env(tmp_path), capture_output=True, text=True,
                          timeout=60, check=True)
    [line] = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    written = json.loads(line)
    assert written["event"] == "insert failed for j***@example.com, +1******0100"
    assert written["level"] == "warning"
