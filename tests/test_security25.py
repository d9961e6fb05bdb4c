"""Security, read as an attacker would (audit 25): Standard Webhooks keys that hold nothing, a write key kept in
quarantine with a body that could not be decoded, and "Subscribe again" with an old email's link."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from connectors.base import InboundRequest, Source, load_registry
from connectors.destinations.webhook_config import WebhookConfig
from hub.clock import utcnow
from hub.errors import AuthenticationError, ConfigError
from hub.sources import SourceEntry, build_source
from hub.store import schema
from tests.conftest import ADMIN_TOKEN, WRITE_KEY, RunningHub, message
from tests.test_consent24 import (  # noqa: F401  (nudging_hub: this module's running_hub, which emails every nudge)
    link_in, nudge, nudging_hub, profile_of, put_consent,
)

URL = "https://hub.example.com/v1/webhooks/src"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
KEY = b"k" * 32
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def standard_webhooks_request(key: bytes) -> InboundRequest:
    """A Standard Webhooks request signed now with `key`; with b"", what anybody who knows no secret can sign."""
    body = b'{"type": "contact.created", "data": {"id": "c-1"}}'
    msg_id, timestamp = "msg_forged", str(int(time.time()))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp,
               "webhook-signature": "v1," + base64.b64encode(digest).decode()}
    return InboundRequest("POST", URL, headers, body)


def standard_webhooks_source(environment: dict[str, str]) -> Source:
    """A Standard Webhooks source whose secret (and previous one, when `environment` sets it) come from
    `environment`, as the hub and `touchhub mappings check` build it."""
    secrets = {"secret": "HUB_SRC_SECRET", "previous_secret": "HUB_SRC_PREVIOUS"}
    entry = SourceEntry(id="src", connector="standard_webhooks",
                        secrets={key: name for key, name in secrets.items() if name in environment})
    return build_source(load_registry(), entry, "sources.yaml:1: sources.0", environment, Path("."))


def test_a_standard_webhooks_previous_secret_left_as_a_bare_whsec_prefix_is_no_key() -> None:
    """An operator ending a rotation by clearing the key in the secret manager leaves `whsec_`: it decoded to the
    HMAC key b"", and a request signed with b"" (which anybody can compute) was accepted."""
    source = standard_webhooks_source({"HUB_SRC_SECRET": SECRET, "HUB_SRC_PREVIOUS": "whsec_"})
    with pytest.raises(AuthenticationError, match="webhook-signature: signature does not match"):
        source.verify(standard_webhooks_request(b""))
    source.verify(standard_webhooks_request(KEY))  # the current secret still verifies


def test_a_standard_webhooks_secret_with_no_key_after_whsec_is_refused_at_load_naming_the_field() -> None:
    """`secret: whsec_` (a template `whsec_${SVIX_KEY}` whose variable was unset) was taken, at start and by
    `touchhub mappings check`, as the HMAC key b"": every request signed with b"" was accepted."""
    with pytest.raises(ConfigError, match=r"sources\.0: secret: .*holds no key after 'whsec_'"):
        standard_webhooks_source({"HUB_SRC_SECRET": "whsec_"})


def test_a_standard_webhooks_source_takes_a_sender_key_shorter_than_the_spec_asks() -> None:
    """The spec's own verifier takes a key of any length but none: a source refusing a sender's 16-byte key could
    not start, and the sender, not the operator, chose it. The outbound webhook, whose key the hub holds, keeps
    to the spec's 24 to 64 bytes, and names an empty key as the source does."""
    short = b"sixteen-byte-key"
    standard_webhooks_source({"HUB_SRC_SECRET": "whsec_" + base64.b64encode(short).decode()}).verify(
        standard_webhooks_request(short)
    )
    for secret, reason in [("whsec_", "holds no key after 'whsec_'"), ("whsec_" + base64.b64encode(short).decode(),
                                                                      "24 to 64 bytes")]:
        with pytest.raises(ValueError, match=reason):
            WebhookConfig(url="https://receiver.example.com/hook", secret=secret)


def cut_gzip(body: bytes) -> tuple[bytes, dict[str, str], Callable[[bytes], bytes]]:
    """A gzip stream cut before its trailer (400), and how anyone reading it back inflates what is there."""
    return gzip.compress(body)[:-12], {"Content-Encoding": "gzip"}, zlib.decompressobj(16 + zlib.MAX_WBITS).decompress


def mislabelled_br(body: bytes) -> tuple[bytes, dict[str, str], Callable[[bytes], bytes]]:
    """A body labelled with a Content-Encoding the hub does not take (415), never compressed at all."""
    return body, {"Content-Encoding": "br"}, bytes


@pytest.mark.parametrize("encode", [cut_gzip, mislabelled_br], ids=["gzip-cut", "br"])
def test_a_write_key_in_a_body_that_cannot_be_decoded_is_not_kept_in_quarantine(
    running_hub: RunningHub, encode: Callable[[bytes], tuple[bytes, dict[str, str], Callable[[bytes], bytes]]]
) -> None:
    """README: a `writeKey` in the body is never stored. A body refused as it was decoded was quarantined as
    sent, `writeKey` and all, and every `read` key had the write key from GET /api/quarantine."""
    body = json.dumps({"writeKey": WRITE_KEY, "batch": [message(userId="u-1", event="Product Viewed")]}).encode()
    sent, headers, read_back = encode(body)
    answer = running_hub.client.post("/v1/batch", content=sent, headers=headers, auth=(WRITE_KEY, ""))
    assert answer.status_code in (400, 415), answer.text
    [kept] = running_hub.client.get("/api/quarantine", headers=ADMIN).json()["quarantine"]
    assert kept["source_id"] == "default"
    assert f"it was not kept ({len(sent)} bytes, Content-Encoding: {headers['Content-Encoding']})" in kept["reason"]
    with running_hub.hub.store.read() as connection:
        raw = connection.execute(select(schema.quarantine.c.raw_body)).scalar_one()
    assert WRITE_KEY.encode() not in read_back(raw)


def unsubscribe(link: str) -> httpx.Response:
    """The one-click POST a mail client sends to the link, or the page's button."""
    return httpx.post(link, content="List-Unsubscribe=One-Click", headers={"content-type": "application/x-www-form-urlencoded"})


def subscribe_again(link: str) -> httpx.Response:
    """The "Subscribe again" button of the page that confirmed an unsubscribe through `link`."""
    return httpx.post(link.replace("/v1/unsubscribe?", "/v1/resubscribe?"))


def newer_link_unsubscribes(running_hub: RunningHub) -> None:
    unsubscribe(link_in(running_hub, 1))


def ops_revoke(running_hub: RunningHub) -> None:
    revoked = put_consent(running_hub, profile_of(running_hub)["profile_id"], "email",
                          {"granted": False, "reason": "asked support by phone"})
    assert revoked.status_code == 200, revoked.text


def event_opts_out(running_hub: RunningHub) -> None:
    running_hub.send(message("identify", userId="u-ana", traits={"email_opt_out": True}, timestamp=utcnow().isoformat()))
    running_hub.settle()


@pytest.mark.parametrize("said_since", [newer_link_unsubscribes, ops_revoke, event_opts_out],
                         ids=["newer-link", "ops", "event"])
def test_an_old_emails_link_cannot_subscribe_again_after_a_later_word(
    running_hub: RunningHub, said_since: Callable[[RunningHub], None]
) -> None:
    """"Subscribe again" with any past email's link gave email back, even after Ana unsubscribed through a newer
    email, asked ops to revoke, or opted out in the app's settings: anyone holding an old forwarded email
    subscribed her again. It undoes only its own link's unsubscribe, while that is her latest word."""
    nudge(running_hub)
    nudge(running_hub)
    old_link = link_in(running_hub, 0)
    assert unsubscribe(old_link).status_code == 200
    said_since(running_hub)

    refused = subscribe_again(old_link)
    assert refused.status_code == 409, refused.text
    assert "This link can no longer subscribe you" in refused.text and "most recent email" in refused.text
    assert profile_of(running_hub)["traits"]["email_opt_out"] is True
    nudge(running_hub)
    assert len(running_hub.sandbox.smtp.received) == 2


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_link_never_used_to_unsubscribe_cannot_subscribe(running_hub: RunningHub) -> None:
    """Ana opted out in the app's settings and never used her email's link: posting its token to /v1/resubscribe
    gave email back all the same, and so it did after another email's link unsubscribed her."""
    nudge(running_hub)
    nudge(running_hub)
    never_used = link_in(running_hub, 0)
    event_opts_out(running_hub)
    assert subscribe_again(never_used).status_code == 409
    assert unsubscribe(link_in(running_hub, 1)).status_code == 200
    assert subscribe_again(never_used).status_code == 409
    assert profile_of(running_hub)["traits"]["email_opt_out"] is True
