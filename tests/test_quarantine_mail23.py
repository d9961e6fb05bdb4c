"""Audit 23, fixed: quarantined bodies read in their own encoding and kept to the byte, unsubscribe links that lead
somewhere and a page that keeps its token, a number beyond a double refused with its message alone."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.clock import utcnow
from hub.model import Identifier
from hub import runtime
from hub.runtime import Hub
from hub.settings import DEVELOPMENT_UNSUBSCRIBE_SECRET
from hub.store import quarantine as quarantine_store
from hub.unsubscribe import make_token
from tests.conftest import WRITE_KEY, RunningHub, logs_of, make_settings, message
from tests.test_cli_setup20 import cli, refused
from tests.test_ingest_bad_input import VALID, quarantine

BOTH_STORES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def _refused_body(running_hub: RunningHub, body: bytes) -> dict[str, Any]:
    """Send `body` to /v1/batch, which refuses it whole; the quarantined row as GET /api/quarantine/{id} has it."""
    answer = running_hub.client.post("/v1/batch", content=body, auth=(WRITE_KEY, ""),
                                     headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    [kept] = quarantine(running_hub)
    return kept


# --- the quarantine shows a body as it was sent -------------------------------------------------------------------


@BOTH_STORES
def test_a_quarantined_utf16_body_reads_as_its_text_in_the_list_and_whole(running_hub: RunningHub) -> None:
    """The hub reads JSON in UTF-16 (RFC 8259's detection), but the quarantine decoded every body as UTF-8: a
    refused UTF-16 batch read as mojibake with a NUL after each character, in the list and whole."""
    sent = {"batch": [{"type": "track", "event": "Grüße", "properties": {"pad": "x" * 3000}}]}  # no userId: refused
    kept = _refused_body(running_hub, json.dumps(sent, ensure_ascii=False).encode("utf-16"))
    assert json.loads(kept["raw_body"]) == sent  # the BOM left out
    [listed] = running_hub.admin("/api/quarantine")["quarantine"]
    assert listed["raw_body_cut"] and "\x00" not in listed["raw_body"]
    assert kept["raw_body"].startswith(listed["raw_body"]) and '"event": "Grüße"' in listed["raw_body"]


@BOTH_STORES
def test_a_quarantined_body_that_is_not_utf8_keeps_its_bytes_in_the_admin_api(running_hub: RunningHub) -> None:
    """A Latin-1 "Café" (43 61 66 E9) was shown as "Caf\\ufffd", and no field of GET /api/quarantine/{id} held the
    byte sent, the one ops need to show the client what to fix."""
    body = b'{"batch": [{"type": "track", "userId": "u-1", "event": "Caf\xe9"}]}'
    kept = _refused_body(running_hub, body)
    assert "Caf\ufffd" in kept["raw_body"]
    assert base64.b64decode(kept["raw_body_base64"], validate=True) == body
    [listed] = running_hub.admin("/api/quarantine")["quarantine"]
    assert "raw_body_base64" not in listed  # the list's bodies are cut short: only `get` has them whole


def test_an_erased_quarantined_body_has_no_bytes_to_give(running_hub: RunningHub) -> None:
    """What `forget` wiped stays wiped in the bytes too."""
    body = json.dumps({"batch": [{"type": "track", "event": "x", "context": {"traits": {"email": "sam@example.com"}}}]})
    kept = _refused_body(running_hub, body.encode())
    with running_hub.hub.store.write() as connection:
        quarantine_store.forget_holding(connection, [Identifier("email", "sam@example.com")])
    assert running_hub.admin(f"/api/quarantine/{kept['id']}")["raw_body_base64"] == ""


# --- unsubscribe links that lead somewhere ------------------------------------------------------------------------


RELAY = {"smtp_host": "smtp.sendgrid.net", "smtp_port": 587, "smtp_tls": "starttls", "smtp_username": "apikey",
         "smtp_password": "SG.not-a-real-key"}


def _start_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> list[str]:
    """The warnings a hub with these settings logs as it starts."""
    hub = Hub(make_settings(tmp_path, workers="", **overrides))
    try:
        with logs_of(monkeypatch, runtime) as logs:
            hub.start()
    finally:
        hub.stop()
    return [entry["event"] for entry in logs if entry["log_level"] == "warning"]


@pytest.mark.parametrize("public_base_url", [None, "http://hub.example.com"])
def test_a_hub_mailing_through_a_real_relay_without_a_public_https_url_says_its_unsubscribe_links_fail(
    tmp_path: Path, public_base_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mailing through a relay on the internet with HUB_PUBLIC_BASE_URL unset, every email carried an unsubscribe
    link to http://127.0.0.1:8000, the recipient's own machine, and the hub started without a word; plain http is
    no one-click link to mailbox providers either (RFC 8058)."""
    warnings = _start_warnings(tmp_path, monkeypatch, public_base_url=public_base_url, **RELAY)
    [warning] = [text for text in warnings if "HUB_PUBLIC_BASE_URL" in text]
    assert f"{public_base_url or 'http://127.0.0.1:8000'}/v1/unsubscribe" in warning


@pytest.mark.parametrize("overrides", [{"public_base_url": "https://hub.example.com", **RELAY}, {}],
                         ids=["a public https url", "a relay on this machine"])
def test_a_hub_whose_unsubscribe_links_work_says_nothing_of_them(
    tmp_path: Path, overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not [text for text in _start_warnings(tmp_path, monkeypatch, **overrides) if "HUB_PUBLIC_BASE_URL" in text]


def test_an_unsubscribe_link_that_works_for_less_than_30_days_is_refused_at_start(tmp_path: Path) -> None:
    """HUB_UNSUBSCRIBE_LINK_DAYS took 1, though CAN-SPAM wants a link to work 30 days after the email is sent: a
    recipient who clicked a week-old link was told it had expired, and stayed subscribed."""
    text = refused(cli("migrate", HUB_UNSUBSCRIBE_LINK_DAYS="29", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db"),
                   "HUB_UNSUBSCRIBE_LINK_DAYS")
    assert "30" in text


@pytest.mark.parametrize("genuine", [True, False], ids=["a genuine link", "a forged link"])
def test_the_unsubscribe_page_is_not_kept_nor_its_address_passed_on(running_hub: RunningHub, genuine: bool) -> None:
    """The page's address and its form carry the token that opts a person out, but it had no `Cache-Control:
    no-store`: a shared computer's browser or a proxy could keep it."""
    token = make_token(DEVELOPMENT_UNSUBSCRIBE_SECRET, "p-1", "email", "d-1", utcnow() + timedelta(days=30))
    answer = running_hub.client.get("/v1/unsubscribe", params={"token": token if genuine else token[:-4]})
    assert answer.status_code == (200 if genuine else 403)
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


# --- a number beyond a double ---------------------------------------------------------------------------------------


@BOTH_STORES
def test_a_number_beyond_a_double_refuses_its_message_alone(running_hub: RunningHub) -> None:
    """One message carrying 1e400 (JSON writes it, a double cannot hold it) got the whole batch a 400 "not valid
    JSON", and its good neighbours, which SDKs do not resend after a 400, were lost."""
    batch = {"batch": [message(**VALID), message(**VALID, properties={"price": "BIG"}), message(**VALID)]}
    body = json.dumps(batch).replace('"BIG"', "1e400").encode()
    answer = running_hub.client.post("/v1/batch", content=body, auth=(WRITE_KEY, ""))
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2
    [problem] = answer.json()["rejected"]
    assert (problem["index"], problem["field"]) == (1, "properties.price")
    assert "double-precision" in problem["reason"]
    [kept] = quarantine(running_hub)
    assert kept["problems"] == [problem]


def test_a_body_that_is_not_json_beside_a_number_beyond_a_double_is_still_a_400(running_hub: RunningHub) -> None:
    answer = running_hub.client.post("/v1/batch", content=b'{"batch": [{"price": 1e400}, NaN]}', auth=(WRITE_KEY, ""))
    assert answer.status_code == 400
    assert "NaN" in answer.json()["error"]
