"""Edges of secret rotation, the admin API's keys and bodies, ingest of deep bodies and the console's graph.

Each test's docstring says what went wrong before (found by a review of the seventeenth session's diff).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from connectors.base import InboundRequest, load_registry
from hub.api.console import FILES
from hub.clock import utcnow
from hub.destination_settings import webhook_destinations
from hub.errors import AuthenticationError, ConfigError
from hub.settings import DEVELOPMENT_UNSUBSCRIBE_SECRET, HubSettings
from hub.sources import SourceEntry, build_source
from hub.store import api_keys
from hub.unsubscribe import make_token, read_token
from tests.conftest import ADMIN_TOKEN, RunningHub

URL = "https://hub.example.com/v1/webhooks/src"
BODY = b'[{"eventId": 1, "subscriptionId": 2, "portalId": 3, "occurredAt": 1700000000000, "messageId": "m-1"}]'
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# --- secret rotation ------------------------------------------------------------------------------------------


def _signed_with_empty_key(connector: str, key: bytes = b"") -> InboundRequest:
    """A request signed by someone who knows no secret: HMAC keyed with b"" (or a blank)."""
    if connector == "hubspot":
        timestamp = str(int(time.time() * 1000))
        content = b"POST" + URL.encode() + BODY + timestamp.encode()
        signature = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        headers = {"x-hubspot-signature-v3": signature, "x-hubspot-request-timestamp": timestamp}
    elif connector == "generic_hmac":
        headers = {"x-signature": hmac.new(key, BODY, hashlib.sha256).hexdigest()}
    else:  # segment
        headers = {"x-signature": hmac.new(key, BODY, hashlib.sha1).hexdigest()}
    return InboundRequest("POST", URL, headers, BODY)


@pytest.mark.parametrize(
    ("connector", "current", "previous"),
    [
        ("hubspot", "client_secret", "previous_client_secret"),
        ("generic_hmac", "secret", "previous_secret"),
        ("segment", "shared_secret", "previous_shared_secret"),
    ],
)
def test_a_previous_secret_emptied_after_a_rotation_is_not_a_key_anyone_can_sign_with(
    connector: str, current: str, previous: str
) -> None:
    """docs/connectors.md: 'remove it once it has'. Emptying the variable sources.yaml names (HUB_X_PREVIOUS=
    in .env or a secret manager) leaves it set to "", and `secrets_in_use` then accepts an HMAC keyed with
    b"": anybody can sign. standard_webhooks and the outbound webhook skip an empty one (`if secret`)."""
    entry = SourceEntry(id="src", connector=connector, secrets={current: "HUB_SRC_SECRET", previous: "HUB_SRC_PREVIOUS"})
    for emptied in ("", " "):  # a blank one too: "remove it" in a secret manager's form may leave a space
        environment = {"HUB_SRC_SECRET": "the-real-secret", "HUB_SRC_PREVIOUS": emptied}
        source = build_source(load_registry(), entry, "sources.yaml:1: sources.0", environment, Path("."))
        with pytest.raises(AuthenticationError):
            source.verify(_signed_with_empty_key(connector, emptied.encode()))


@pytest.mark.parametrize(
    ("connector", "current"),
    [
        ("hubspot", "client_secret"),
        ("generic_hmac", "secret"),
        ("standard_webhooks", "secret"),
        ("segment", "shared_secret"),
        ("segment", "write_key"),
        ("rudderstack", "token"),
    ],
)
def test_an_empty_current_secret_is_refused_at_load_naming_the_field(connector: str, current: str) -> None:
    """A current secret whose variable is set but empty was taken: the source then verified nothing (every
    request a 401, found only once traffic came), and a Segment source with an empty write key and no shared
    secret failed an assertion on every request."""
    entry = SourceEntry(id="src", connector=connector, secrets={current: "HUB_SRC_SECRET"})
    with pytest.raises(ConfigError, match=rf"sources.0.*{current}.*is empty"):
        build_source(load_registry(), entry, "sources.yaml:1: sources.0", {"HUB_SRC_SECRET": " "}, Path("."))


@pytest.mark.parametrize("prefix", ["", "sha256="])
def test_a_generic_hmac_signature_in_upper_case_hex_is_accepted(prefix: str) -> None:
    """Hex is case-blind and some platforms send it upper-case; every such request was a 401. A wrong digest in
    upper case is still refused."""
    entry = SourceEntry(id="src", connector="generic_hmac", config={"prefix": prefix}, secrets={"secret": "HUB_SRC_SECRET"})
    source = build_source(load_registry(), entry, "sources.yaml:1: sources.0", {"HUB_SRC_SECRET": "s3cret"}, Path("."))
    digest = hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()
    source.verify(InboundRequest("POST", URL, {"x-signature": prefix + digest.upper()}, BODY))
    with pytest.raises(AuthenticationError):
        wrong = hmac.new(b"other", BODY, hashlib.sha256).hexdigest().upper()
        source.verify(InboundRequest("POST", URL, {"x-signature": prefix + wrong}, BODY))


def test_the_development_unsubscribe_secret_kept_as_the_previous_one_is_still_reported() -> None:
    """.env.example: 'To change it later, move the old value to HUB_UNSUBSCRIBE_PREVIOUS_SECRET'. Done when
    leaving the published development secret, links anyone forges with it keep opting people out, and the
    start-up warning about development secrets goes quiet."""
    settings = HubSettings(  # type: ignore[call-arg]
        _env_file=None, unsubscribe_secret="a-real-secret", unsubscribe_previous_secret=DEVELOPMENT_UNSUBSCRIBE_SECRET,
    )
    forged = make_token(DEVELOPMENT_UNSUBSCRIBE_SECRET, "someone", "email", "d-1", utcnow() + timedelta(days=1))
    assert read_token(settings.unsubscribe_secrets(), forged, utcnow()).profile_id == "someone"  # honoured
    assert "HUB_UNSUBSCRIBE_PREVIOUS_SECRET" in settings.development_credentials()


# --- the admin API ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [json.dumps({"merged_profile_id": "p-2"}).encode("utf-16"), b"\xff{}"],
    ids=["utf-16-json", "not-utf-8"],
)
def test_an_admin_body_that_is_not_utf_8_is_a_4xx_not_a_500(running_hub: RunningHub, body: bytes) -> None:
    """`json_body` validates the raw bytes (model_validate_json), so pydantic's json_invalid error carries the
    body as bytes in `input`; FastAPI's 422 handler then decodes them as UTF-8 and fails: a bare 500. FastAPI's
    own body reading (json.loads) took UTF-16 JSON, so this is also a body the docstring's 'validated as
    FastAPI would' accepted before."""
    answer = running_hub.client.post(
        "/api/profiles/no-such-profile/unmerge", content=body, headers={**ADMIN, "content-type": "application/json"}
    )
    assert answer.status_code < 500, answer.text


def test_a_read_with_an_api_key_does_not_wait_for_the_stores_writer(running_hub: RunningHub) -> None:
    """`ApiAuth._api_key` records last use in a write transaction on the request's path: a GET with a key whose
    last use is a minute old queues behind whatever holds the writer (on SQLite the pipeline's batches, for as
    long as they take; 30 s busy timeout, then a 500). 16 concurrent GETs with a new key made 7 UPDATEs, each
    its own write transaction, where the docs say 'at most once a minute'. HUB_ADMIN_TOKEN answers at once."""
    with running_hub.hub.store.write() as connection:
        _key_id, key = api_keys.create(connection, "grafana", ["read"], utcnow())
    held, release = threading.Event(), threading.Event()

    def hold_the_writer() -> None:
        with running_hub.hub.store.write():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_writer)
    holder.start()
    try:
        assert held.wait(5)
        with httpx.Client(base_url=running_hub.url, timeout=10) as client:
            assert client.get("/api/sources", headers=ADMIN, timeout=1).status_code == 200
            started = time.monotonic()
            try:
                answered = client.get("/api/sources", headers={"Authorization": f"Bearer {key}"}, timeout=1).status_code
            except httpx.ReadTimeout:
                answered = None
            waited = time.monotonic() - started
    finally:
        release.set()
        holder.join()
    assert answered == 200 and waited < 1, f"a GET with an API key waited {waited:.1f} s for the store's writer"


# --- ingest ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track"])
def test_a_body_with_a_write_key_nested_past_the_json_writers_is_400_and_quarantined(
    running_hub: RunningHub, path: str
) -> None:
    """6609d63 made this body a 400 kept in quarantine, but only when the key comes as Basic auth: with a
    `writeKey` in it (analytics-clj, Analytics.NET), `without_write_keys` re-serialises the document with
    json.dumps before `_accept`'s guard, and the RecursionError is a bare 500 that the SDK resends for ever."""
    depth = 990
    message = (
        b'{"type": "track", "userId": "u-1", "event": "X", "writeKey": "test-write-key", "properties": {"deep": '
        + b"[" * depth + b"]" * depth + b"}}"
    )
    body = b'{"batch": [' + message + b"]}" if path == "/v1/batch" else message
    with httpx.Client(base_url=running_hub.url, timeout=10) as client:
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    [kept] = running_hub.admin("/api/quarantine")["quarantine"]
    assert kept["stage"] == "ingest" and "test-write-key" not in kept["raw_body"]


# --- the web console -----------------------------------------------------------------------------------------------


def test_the_console_identity_graph_shows_push_tokens_moved_to_another_person() -> None:
    """7c68b89 added `moved` to /api/profiles/{id}/explain (a shared device's token went to whoever signed in
    last) and to `touchhub profiles explain`; the console's identity graph lists refused, unmerges and
    detached, but never reads `moved` (nor `aliases`), so ops looking at the graph cannot see why a person's
    push token left them."""
    script = (FILES / "console.js").read_text(encoding="utf-8")
    assert "graph.moved" in script


def test_an_empty_outbound_webhook_previous_secret_is_unset_as_the_unsubscribe_one_is() -> None:
    """.env.example shows `# HUB_OUTBOUND_WEBHOOK_PREVIOUS_SECRET=`; uncommented as it stands (or emptied after a
    rotation) it is SecretStr(""), which the whsec_ validator refuses: the hub no longer starts. An empty
    HUB_UNSUBSCRIBE_PREVIOUS_SECRET is taken as unset (`unsubscribe_secrets` skips it)."""
    settings = HubSettings(  # type: ignore[call-arg]
        _env_file=None, outbound_webhook_url="https://receiver.example.com/hook",
        outbound_webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", outbound_webhook_previous_secret="",
    )
    assert "outbound_webhook" in webhook_destinations(load_registry(), settings)
