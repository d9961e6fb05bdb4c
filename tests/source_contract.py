"""The checks every webhook source must pass, written once and subclassed per connector.

A subclass says how to build its source, how its vendor signs a request (at a
given time, with a given secret) and which documented payload to replay; it
inherits the good-signature, bad-signature, tampering, replay-window and
bad-JSON tests.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import pytest

from connectors.base import InboundRequest, Source
from hub.errors import AuthenticationError, BadPayloadError, EventDropped
from hub.mapping import load_mapping
from hub.model import Touchpoint
from hub.normalize import normalize
from hub.settings import PROJECT_MAPPINGS

FIXTURES = Path(__file__).parent / "fixtures"
URL = "https://hub.example.com/v1/webhooks/src"


def fixture_body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class SourceContract:
    fixture: ClassVar[str]
    replay_window: ClassVar[bool] = True  # False for formats that sign no timestamp

    def make_source(self, secret: str) -> Source:
        raise AssertionError("subclass must build its source")

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        raise AssertionError("subclass must sign like its vendor")

    secret: ClassVar[str] = "top-secret"

    def request(self, body: bytes, *, secret: str | None = None, at: datetime | None = None) -> InboundRequest:
        headers = {"Content-Type": "application/json", **self.sign(body, secret or self.secret, at or datetime.now(timezone.utc))}
        return InboundRequest("POST", URL, headers, body)

    def touchpoints(self, body: bytes) -> list[Touchpoint]:
        source = self.make_source(self.secret)
        mapping = load_mapping(PROJECT_MAPPINGS / source.default_mapping)
        result = source.parse(self.request(body))
        received = datetime(2026, 11, 20, tzinfo=timezone.utc)
        kept = []
        for event in result.events:
            try:
                kept.append(normalize(event, mapping, received, "US"))
            except EventDropped:
                continue
        return kept

    def test_good_signature_is_accepted(self) -> None:
        self.make_source(self.secret).verify(self.request(fixture_body(self.fixture)))

    def test_wrong_secret_is_refused_with_the_reason(self) -> None:
        with pytest.raises(AuthenticationError, match="does not match"):
            self.make_source(self.secret).verify(self.request(fixture_body(self.fixture), secret="not-the-secret"))

    def test_tampered_body_is_refused(self) -> None:
        signed = self.request(fixture_body(self.fixture))
        tampered = InboundRequest(signed.method, signed.url, signed.headers, signed.body.replace(b"}", b" }", 1))
        with pytest.raises(AuthenticationError):
            self.make_source(self.secret).verify(tampered)

    def test_unsigned_request_is_refused(self) -> None:
        with pytest.raises(AuthenticationError, match="missing"):
            self.make_source(self.secret).verify(InboundRequest("POST", URL, {}, fixture_body(self.fixture)))

    def test_request_signed_outside_the_replay_window_is_refused(self) -> None:
        if not self.replay_window:
            self.check_replay_deduplicates()
            return
        stale = datetime.now(timezone.utc) - timedelta(minutes=6)
        with pytest.raises(AuthenticationError, match="outside the 300 s replay window"):
            self.make_source(self.secret).verify(self.request(fixture_body(self.fixture), at=stale))
        future = datetime.now(timezone.utc) + timedelta(minutes=6)
        with pytest.raises(AuthenticationError, match="far in the future"):
            self.make_source(self.secret).verify(self.request(fixture_body(self.fixture), at=future))

    def check_replay_deduplicates(self) -> None:
        """Formats that sign no timestamp: a replayed request yields the same message ids, so the inbox keeps one."""
        source = self.make_source(self.secret)
        first, replay = (source.parse(self.request(fixture_body(self.fixture))) for _ in range(2))
        assert [e.dedup_key for e in replay.events] == [e.dedup_key for e in first.events]

    def test_request_signed_inside_the_window_is_accepted(self) -> None:
        recent = datetime.now(timezone.utc) - timedelta(minutes=4)
        self.make_source(self.secret).verify(self.request(fixture_body(self.fixture), at=recent))

    def test_body_that_is_not_json_is_a_bad_payload(self) -> None:
        with pytest.raises(BadPayloadError, match="not valid JSON"):
            self.make_source(self.secret).parse(self.request(b"{nope"))

    def documented_items(self, document: Any) -> list[dict[str, Any]]:
        """The vendor's events in the fixture document, in order."""
        return document if isinstance(document, list) else [document]

    def test_raw_payload_is_kept_beside_the_normalized_event(self) -> None:
        [first, *_] = self.documented_items(json.loads(fixture_body(self.fixture)))
        [event, *_] = self.make_source(self.secret).parse(self.request(fixture_body(self.fixture))).events
        documented = {key: value for key, value in first.items() if key != "receivedAt"}  # the hub stamps its own
        assert {key: event.payload[key] for key in documented} == documented


class RotatingSecretContract(SourceContract):
    """Sources whose sender signs with a secret it can rotate: for a while the hub takes both."""

    old_secret: ClassVar[str] = "the-secret-before"

    def make_rotating_source(self, previous: str) -> Source:
        raise AssertionError("subclass must build its source with `previous` as the secret being replaced")

    def test_during_a_rotation_the_new_and_the_previous_secret_both_verify(self) -> None:
        """A sender switches to the new secret when it likes: requests signed with either must be taken
        meanwhile, or every webhook between the two changes is refused."""
        source = self.make_rotating_source(self.old_secret)
        for secret in (self.secret, self.old_secret):
            source.verify(self.request(fixture_body(self.fixture), secret=secret))
        with pytest.raises(AuthenticationError, match="does not match"):
            source.verify(self.request(fixture_body(self.fixture), secret="neither-of-them"))

    def test_once_the_rotation_ends_the_previous_secret_is_refused(self) -> None:
        with pytest.raises(AuthenticationError, match="does not match"):
            self.make_source(self.secret).verify(self.request(fixture_body(self.fixture), secret=self.old_secret))
