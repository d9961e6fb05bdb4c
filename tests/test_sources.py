"""Each source connector against its vendor's documented payload and signing scheme.

Signatures are made the way each vendor documents them; for Standard Webhooks
by the `standardwebhooks` library itself, so the hub is checked against the
reference implementation rather than against our own reading of the spec.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from connectors.base import InboundRequest, Source
from connectors.sources.generic_hmac import GenericHmacSource
from connectors.sources.hubspot import HubSpotSource
from connectors.sources.journey_map import JourneyMapSource, load_journey_map
from connectors.sources.rudderstack import RudderStackSource
from connectors.sources.segment import SegmentSource
from connectors.sources.standard_webhooks import StandardWebhooksSource
from hub.errors import AuthenticationError, BadPayloadError, ConfigError, MappingError
from hub.mapping import load_mapping
from hub.model import RawEvent
from hub.normalize import normalize
from hub.runtime import Hub
from hub.settings import PROJECT_MAPPINGS
from tests.conftest import WRITE_KEY, make_settings
from tests.source_contract import URL, RotatingSecretContract, SourceContract, fixture_body

WHSEC = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-0123").decode()
OLD_WHSEC = "whsec_" + base64.b64encode(b"standard-webhooks-old-key-45678").decode()


def build(connector: type[Source], **config: Any) -> Source:
    return connector("src", connector.validate_config("test", config))


class TestStandardWebhooks(RotatingSecretContract):
    fixture = "standard_webhooks_contact_created.json"
    secret = WHSEC
    old_secret = OLD_WHSEC

    def make_source(self, secret: str) -> Source:
        return build(StandardWebhooksSource, secret=WHSEC)

    def make_rotating_source(self, previous: str) -> Source:
        return build(StandardWebhooksSource, secret=WHSEC, previous_secret=previous)

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        key = secret if secret.startswith("whsec_") else "whsec_" + base64.b64encode(secret.encode()).decode()
        signature = Webhook(key).sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", at, body.decode())
        return {"webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": signature}

    def test_any_of_several_signatures_may_match_during_secret_rotation(self) -> None:
        request = self.request(fixture_body(self.fixture))
        rotated = {**request.headers, "webhook-signature": "v1,bm90LXRoaXMtb25l " + request.headers["webhook-signature"]}
        self.make_source(WHSEC).verify(InboundRequest("POST", URL, rotated, request.body))

    def test_webhook_id_is_the_message_id_so_retries_deduplicate(self) -> None:
        [event] = self.make_source(WHSEC).parse(self.request(fixture_body(self.fixture))).events
        assert event.message_id == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"

    def test_documented_payload_maps_field_by_field(self) -> None:
        [touchpoint] = self.touchpoints(fixture_body(self.fixture))
        assert (touchpoint.event, touchpoint.stage, touchpoint.moment) == ("contact.created", "consideration", "sign_up")
        assert touchpoint.occurred_at == datetime(2022, 11, 3, 20, 26, 10, 344522, tzinfo=timezone.utc)
        assert [(i.type, i.value) for i in touchpoint.identifiers] == [("crm_id", "1f81eb52-5198-4599-803e-771906343485")]
        assert touchpoint.properties == {"id": "1f81eb52-5198-4599-803e-771906343485", "type": "contact"}

    @pytest.mark.parametrize("form", ["nan", "inf", "fraction", "underscores"])
    def test_timestamp_that_is_not_whole_unix_seconds_is_refused(self, form: str) -> None:
        """float() took "nan" (inside every window: no difference compares greater than the tolerance), "inf",
        fractions and "1_700_000_000"; a signed "nan" request was valid for ever."""
        now = str(int(time.time()))
        timestamp = {"nan": "nan", "inf": "inf", "fraction": f"{now}.5", "underscores": f"{now[:4]}_{now[4:]}"}[form]
        body = fixture_body(self.fixture)
        key = base64.b64decode(WHSEC.removeprefix("whsec_"))
        signature = base64.b64encode(hmac.new(key, f"msg_1.{timestamp}.".encode() + body, hashlib.sha256).digest())
        headers = {"webhook-id": "msg_1", "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature.decode()}"}
        with pytest.raises(AuthenticationError, match=f"webhook-timestamp: '{timestamp}' is not a Unix timestamp"):
            self.make_source(WHSEC).verify(InboundRequest("POST", URL, headers, body))

    def test_secret_that_is_not_base64_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="test: secret: Value error, must be base64"):
            build(StandardWebhooksSource, secret="whsec_not base64!")


class TestHubSpot(RotatingSecretContract):
    fixture = "hubspot_contact_events.json"

    def make_source(self, secret: str) -> Source:
        return build(HubSpotSource, client_secret=self.secret)

    def make_rotating_source(self, previous: str) -> Source:
        return build(HubSpotSource, client_secret=self.secret, previous_client_secret=previous)

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        timestamp = str(int(at.timestamp() * 1000))  # HubSpot sends milliseconds
        content = b"POST" + URL.encode() + body + timestamp.encode()
        digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
        return {"X-HubSpot-Signature-v3": base64.b64encode(digest).decode(), "X-HubSpot-Request-Timestamp": timestamp}

    def test_signature_covers_the_url_hubspot_called(self) -> None:
        signed = self.request(fixture_body(self.fixture))
        elsewhere = InboundRequest("POST", URL + "?portal=33", signed.headers, signed.body)
        with pytest.raises(AuthenticationError, match="X-HubSpot-Signature-v3: signature does not match"):
            self.make_source(self.secret).verify(elsewhere)

    def test_public_url_replaces_the_url_a_proxy_rewrote(self) -> None:
        signed = self.request(fixture_body(self.fixture))
        behind_proxy = InboundRequest("POST", "http://10.0.0.5:8000/v1/webhooks/src", signed.headers, signed.body)
        build(HubSpotSource, client_secret=self.secret, public_url=URL).verify(behind_proxy)

    @pytest.mark.parametrize(
        ("query", "signed_as"),
        [
            ("token=c2VjcmV0%3D%3D", "token=c2VjcmV0%3D%3D"),
            ("next=%2Fdeals%3a1%2C2%3B%28x%29", "next=/deals:1,2;(x)"),
            ("q=%253A", "q=%253A"),
        ],
        ids=["escape-hubspot-keeps", "escapes-hubspot-decodes-either-case", "no-double-decoding"],
    )
    def test_signature_covers_the_url_with_only_the_escapes_hubspot_decodes(self, query: str, signed_as: str) -> None:
        """HubSpot decodes %3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B and no other escape before signing;
        unquote() decoded them all, so every genuine request to a URL with a base64 token (%3D) was refused."""
        body = fixture_body(self.fixture)
        timestamp = str(int(time.time() * 1000))
        digest = hmac.new(self.secret.encode(), f"POST{URL}?{signed_as}".encode() + body + timestamp.encode(), hashlib.sha256)
        headers = {"X-HubSpot-Signature-v3": base64.b64encode(digest.digest()).decode(), "X-HubSpot-Request-Timestamp": timestamp}
        self.make_source(self.secret).verify(InboundRequest("POST", f"{URL}?{query}", headers, body))

    def test_documented_contact_events_map_and_imports_are_dropped(self) -> None:
        source = self.make_source(self.secret)
        events = source.parse(self.request(fixture_body(self.fixture))).events
        assert [e.message_id for e in events] == ["33-25-3816279340-1246965-1462216307945", "33-22-3816279480-1246978-1462216307945"]
        [touchpoint] = self.touchpoints(fixture_body(self.fixture))  # the IMPORT creation is dropped by the mapping
        assert (touchpoint.event, touchpoint.stage, touchpoint.moment) == ("Contact Updated", "consideration", "profile_update")
        assert touchpoint.occurred_at == datetime(2016, 5, 2, 19, 11, 47, 945000, tzinfo=timezone.utc)
        assert [(i.type, i.value) for i in touchpoint.identifiers] == [("crm_id", "hubspot:33:1246965")]
        assert touchpoint.properties == {
            "object_id": 1246965, "property": "lifecyclestage", "value": "subscriber", "change_source": "ACADEMY", "portal_id": 33,
        }
        assert touchpoint.context == {"source_system": "hubspot"}

    def test_deal_stage_change_maps_to_the_decision_stage(self) -> None:
        [touchpoint] = self.touchpoints(fixture_body("hubspot_deal_property_change.json"))
        assert (touchpoint.event, touchpoint.stage, touchpoint.moment) == ("Deal Updated", "decision", "deal_progress")
        assert [(i.type, i.value) for i in touchpoint.identifiers] == [("hubspot_deal_id", "9311826441")]

    def test_event_without_its_ids_is_refused_and_named(self) -> None:
        body = json.dumps([{"subscriptionType": "contact.creation", "objectId": 1}]).encode()
        with pytest.raises(BadPayloadError) as raised:
            self.make_source(self.secret).parse(self.request(body))
        assert [p.field for p in raised.value.problems] == ["portalId", "subscriptionId", "eventId", "occurredAt"]


class TestGenericHmacHexWithPrefix(RotatingSecretContract):
    """GitHub style: X-Hub-Signature-256: sha256=<hex of HMAC-SHA256(body)>; no timestamp."""

    fixture = "rudderstack_track.json"
    replay_window = False

    def make_source(self, secret: str) -> Source:
        return build(GenericHmacSource, secret=self.secret, signature_header="X-Hub-Signature-256", prefix="sha256=")

    def make_rotating_source(self, previous: str) -> Source:
        return build(GenericHmacSource, secret=self.secret, previous_secret=previous,
                     signature_header="X-Hub-Signature-256", prefix="sha256=")

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        return {"X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


class TestGenericHmacBase64WithTimestamp(SourceContract):
    """Slack style content ("v0:{timestamp}:{body}"), base64 SHA-512, timestamp in its own header."""

    fixture = "rudderstack_track.json"

    def make_source(self, secret: str) -> Source:
        return build(
            GenericHmacSource, secret=self.secret, signature_header="X-Sig", algorithm="sha512", encoding="base64",
            signed_content="v0:{timestamp}:{body}", timestamp_header="X-Sig-Timestamp", message_id="messageId",
        )

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        timestamp = str(int(at.timestamp()))
        digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha512).digest()
        return {"X-Sig": base64.b64encode(digest).decode(), "X-Sig-Timestamp": timestamp}

    def test_documented_payload_maps_with_the_generic_mapping(self) -> None:
        [touchpoint] = self.touchpoints(fixture_body(self.fixture))
        assert (touchpoint.event, touchpoint.message_id) == ("Product Reviewed", "a5b4b5a5-5e5b-4e5f-9d2a-5a2b5e5b4a5c")
        assert [(i.type, i.value) for i in touchpoint.identifiers] == [("user_id", "identified user id")]

    @pytest.mark.parametrize(
        ("config", "reason"),
        [
            ({"signed_content": "{timestamp}"}, "signed_content must contain {body}"),
            ({"signed_content": "{timestamp}.{body}"}, "exactly when timestamp_header is set"),
            ({"algorithm": "md5"}, "algorithm: Input should be 'sha1', 'sha256' or 'sha512'"),
            ({"encoding": "hex", "events": "items[?"}, "events: Value error, invalid JMESPath expression"),
        ],
    )
    def test_bad_config_names_the_key_and_reason(self, config: dict[str, str], reason: str) -> None:
        with pytest.raises(ConfigError, match=reason.replace("[", r"\[").replace("?", r"\?")):
            build(GenericHmacSource, secret="s", **config)


class TestRudderStack(SourceContract):
    fixture = "rudderstack_track.json"
    replay_window = False
    secret = "Bearer rudder-token"

    def make_source(self, secret: str) -> Source:
        return build(RudderStackSource, token=self.secret)

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        return {"Authorization": secret}

    def test_wrong_secret_is_refused_with_the_reason(self) -> None:
        with pytest.raises(AuthenticationError, match="Authorization: token does not match"):
            self.make_source(self.secret).verify(self.request(fixture_body(self.fixture), secret="Bearer guess"))

    def test_tampered_body_is_refused(self) -> None:
        """RudderStack signs nothing: the header token is the whole credential, so only it is checked."""
        signed = self.request(fixture_body(self.fixture))
        self.make_source(self.secret).verify(InboundRequest("POST", URL, signed.headers, b"[]"))
        with pytest.raises(AuthenticationError):
            self.make_source(self.secret).verify(InboundRequest("POST", URL, {"Authorization": "Bearer"}, signed.body))

    def test_documented_track_event_maps_field_by_field(self) -> None:
        [touchpoint] = self.touchpoints(fixture_body(self.fixture))
        assert (touchpoint.kind, touchpoint.event, touchpoint.stage, touchpoint.moment) == (
            "track", "Product Reviewed", "advocacy", "review",
        )
        assert touchpoint.occurred_at == datetime(2020, 4, 17, 14, 42, 44, 757000, tzinfo=timezone.utc)
        assert {(i.type, i.value) for i in touchpoint.identifiers} == {
            ("user_id", "identified user id"), ("anonymous_id", "8d872292709c6fbe"), ("email", "user@domain.com"),
        }
        assert touchpoint.context["channel"] == "web" and touchpoint.context["locale"] == "en-US"
        assert touchpoint.properties == {"review_id": "86ac1cd43", "product_id": "9578257311", "rating": 3.0}


class TestSegmentWebhooksDestination(RotatingSecretContract):
    """Segment's Webhooks destination: X-Signature = hex HMAC-SHA1 of the body with the shared secret."""

    fixture = "rudderstack_track.json"  # the same Segment-spec track message
    replay_window = False


    def make_source(self, secret: str) -> Source:
        return build(SegmentSource, shared_secret=self.secret)

    def make_rotating_source(self, previous: str) -> Source:
        return build(SegmentSource, shared_secret=self.secret, previous_shared_secret=previous)

    def test_a_previous_shared_secret_alone_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="set shared_secret too"):
            build(SegmentSource, write_key="wk", previous_shared_secret=self.old_secret)

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        return {"X-Signature": hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()}

    def test_unsigned_request_is_refused(self) -> None:
        """The source has no write key, yet the 401 said "missing write key: send HTTP Basic auth ...", which no
        key could ever cure."""
        with pytest.raises(AuthenticationError, match="missing X-Signature header"):
            self.make_source(self.secret).verify(InboundRequest("POST", URL, {}, fixture_body(self.fixture)))


class TestJourneyMap(SourceContract):
    fixture = "journey_map_events.json"

    def make_source(self, secret: str) -> Source:
        return build_journey_source("journeys/web_shop.json", self.secret)

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        timestamp = str(int(at.timestamp()))
        return {"X-Signature": hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest(),
                "X-Timestamp": timestamp}

    def documented_items(self, document: Any) -> list[dict[str, Any]]:
        return document["events"]

    def test_event_at_a_map_touchpoint_gets_its_stage_moment_and_touchpoint_id(self) -> None:
        [touchpoint] = self.touchpoints(fixture_body(self.fixture))
        assert (touchpoint.event, touchpoint.stage, touchpoint.moment) == ("Comparison table", "consideration", "product_comparison")
        assert touchpoint.message_id == "evt-1"
        assert touchpoint.properties == {"products": ["p-1", "p-2"], "map_touchpoint_id": "TP-COMPARE", "map_touchpoint": "Comparison table"}
        assert touchpoint.context["journey"]["moment_label"] == "Comparing products"

    def test_event_naming_an_unknown_touchpoint_is_refused_item_by_item(self) -> None:
        result = self.make_source(self.secret).parse(self.request(fixture_body(self.fixture)))
        assert [p.as_dict() for p in result.problems] == [
            {"index": 1, "field": "touchpoint_id", "reason": "'TP-NOWHERE' is not a touchpoint of journey map journeys/web_shop.json"}
        ]

    def test_refused_items_keep_their_position_in_the_body(self) -> None:
        body = json.dumps({"events": ["junk", {"id": "e", "touchpoint_id": "TP-X"}, {"id": "f", "touchpoint_id": "TP-CART"}]})
        result = self.make_source(self.secret).parse(self.request(body.encode()))
        assert [(p.index, p.field) for p in result.problems] == [(0, "(event)"), (1, "touchpoint_id")]
        assert [e.payload["journey"]["moment"] for e in result.events] == ["cart_activity"]

    def test_csv_export_reads_the_same_as_json(self) -> None:
        from_csv = load_journey_map(PROJECT_MAPPINGS / "journeys" / "web_shop.csv").labels()
        from_json = load_journey_map(PROJECT_MAPPINGS / "journeys" / "web_shop.json").labels()
        assert {k: {**v, "map": ""} for k, v in from_csv.items()} == {k: {**v, "map": ""} for k, v in from_json.items()}

    def test_map_with_a_dangling_reference_is_a_config_error(self, tmp_path: Path) -> None:
        broken = json.loads((PROJECT_MAPPINGS / "journeys" / "web_shop.json").read_text())
        broken["touchpoints"][0]["moment"] = "M9"
        (tmp_path / "map.json").write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match="touchpoint 'TP-HOME' names moment 'M9', which the map does not have"):
            load_journey_map(tmp_path / "map.json")

    def test_a_re_exported_map_applies_to_the_next_request_and_a_broken_one_is_refused(self, tmp_path: Path) -> None:
        document = json.loads((PROJECT_MAPPINGS / "journeys" / "web_shop.json").read_text())
        (tmp_path / "map.json").write_text(json.dumps(document))
        source = build_journey_source("map.json", self.secret, tmp_path)
        body = json.dumps({"events": [{"id": "e-1", "touchpoint_id": "TP-COMPARE"}]}).encode()
        assert source.parse(self.request(body)).events[0].payload["journey"]["moment"] == "product_comparison"

        compare = next(tp for tp in document["touchpoints"] if tp["id"] == "TP-COMPARE")
        compare["moment"] = next(m["id"] for m in document["moments"] if m["moment"] == "cart_activity")
        (tmp_path / "map.json").write_text(json.dumps(document, indent=1))  # a new size: a new stamp even within one mtime tick
        assert source.parse(self.request(body)).events[0].payload["journey"]["moment"] == "cart_activity"

        (tmp_path / "map.json").write_text("{not json")
        assert source.parse(self.request(body)).events[0].payload["journey"]["moment"] == "cart_activity"  # last good map


def build_journey_source(map_file: str, secret: str, folder: Path = PROJECT_MAPPINGS) -> Source:
    config = JourneyMapSource.validate_config("test", {
        "secret": secret, "map_file": map_file, "events": "events", "message_id": "id",
        "timestamp_header": "X-Timestamp", "signed_content": "{timestamp}.{body}",
    })
    return JourneyMapSource("src", config, folder)


def sdk_batch(*messages: dict[str, Any], sent_at: str | None = None) -> InboundRequest:
    body = {"batch": list(messages), **({"sentAt": sent_at} if sent_at else {})}
    auth = "Basic " + base64.b64encode(b"wk:").decode()
    return InboundRequest("POST", "http://hub.test/v1/batch", {"authorization": auth}, json.dumps(body).encode())


def test_sdk_times_are_corrected_for_the_device_clock_as_segment_does() -> None:
    """timestamp = receivedAt - (sentAt - originalTimestamp): a phone three minutes slow sent a cart event
    that was three minutes old on arrival, its two-minute wait already over. The gap between an event and its
    sending (an offline queue) is kept; a message that came through Segment keeps Segment's times."""
    source = build(SegmentSource, write_key="wk")
    slow_clock = datetime.now(timezone.utc) - timedelta(minutes=3)
    queued = {"type": "track", "userId": "u", "event": "Cart Viewed", "messageId": "m1",
              "timestamp": (slow_clock - timedelta(minutes=10)).isoformat()}
    via_segment = {"type": "track", "userId": "u", "event": "Viewed", "messageId": "m2", "timestamp": "2026-01-01T10:00:00Z",
                   "sentAt": "2026-01-01T09:00:00Z", "receivedAt": "2026-01-01T10:00:01Z"}
    [cart, relayed] = source.parse(sdk_batch(queued, via_segment, sent_at=slow_clock.isoformat())).events
    received = datetime.fromisoformat(cart.payload["receivedAt"])
    assert datetime.fromisoformat(cart.payload["timestamp"]) == received - timedelta(minutes=10)
    assert cart.payload["originalTimestamp"] == queued["timestamp"]
    assert relayed.payload["timestamp"] == "2026-01-01T10:00:00Z"
    [unstamped] = source.parse(sdk_batch(queued)).events  # no sentAt: nothing to correct by
    assert unstamped.payload["timestamp"] == queued["timestamp"]


@pytest.mark.parametrize(
    ("mapping_file", "payload"),
    [
        ("segment.yaml", {"type": "track", "userId": "u-1", "event": "X", "timestamp": "0001-01-01T00:00:00+01:00"}),
        ("segment.yaml", {"type": "track", "userId": "u-1", "event": "X", "timestamp": "9999-12-31T23:59:59-01:00"}),
        ("hubspot.yaml", {"portalId": 1, "subscriptionId": 2, "eventId": 3, "objectId": 4,
                          "subscriptionType": "contact.creation", "occurredAt": 10**20}),
    ],
    ids=["iso-year-1-with-offset", "iso-year-9999-with-offset", "hubspot-epoch-1e20"],
)
def test_event_time_outside_the_date_range_is_a_mapping_error_naming_occurred_at(mapping_file: str, payload: dict) -> None:
    """Valid as written, out of datetime's range once in UTC: an OverflowError or OSError the pipeline retried
    as its own failure, then quarantined without naming the field."""
    raw = RawEvent("src", "m-1", {**payload, "receivedAt": "2026-01-01T00:00:00+00:00"})
    with pytest.raises(MappingError, match="occurred_at: .* is not a time within the years 1 to 9999"):
        normalize(raw, load_mapping(PROJECT_MAPPINGS / mapping_file), datetime(2026, 1, 1, tzinfo=timezone.utc), "US")


def write_key_sources(mappings_dir: Path, monkeypatch: pytest.MonkeyPatch, **keys: str) -> Path:
    """sources.yaml with one segment source per keyword (id -> write key; "" for a shared secret only)."""
    lines = ["sources:"]
    for number, (source_id, key) in enumerate(keys.items()):
        secret = "write_key" if key else "shared_secret"
        lines.append(f"  - {{id: {source_id}, connector: segment, secrets: {{{secret}: HUB_SRC_{number}}}}}")
        monkeypatch.setenv(f"HUB_SRC_{number}", key or "shared-secret")
    (mappings_dir / "sources.yaml").write_text("\n".join(lines) + "\n")
    return mappings_dir / "sources.yaml"


def test_sdk_sources_sharing_a_write_key_are_refused_at_start_naming_both(
    tmp_path: Path, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK endpoints file a request under the first source its key opens: the second source (an entry
    copied for another app, its key not changed) started without a word and never received an event."""
    path = write_key_sources(mappings_dir, monkeypatch, web=WRITE_KEY, ios="ios-key", android="ios-key")
    with pytest.raises(ConfigError) as raised:
        Hub(make_settings(tmp_path, mappings_dir=mappings_dir))
    assert raised.value.problems == [
        f"{path}:2: sources.0.secrets.write_key: is the same write key as HUB_DEFAULT_WRITE_KEY, whose source would "
        "take all the SDK traffic sent with it; give each source a key of its own",
        f"{path}:4: sources.2.secrets.write_key: is the same write key as {path}:3: sources.1, whose source would "
        "take all the SDK traffic sent with it; give each source a key of its own",
    ]


def test_sdk_endpoints_ask_for_a_write_key_whatever_order_the_sources_come_in(
    tmp_path: Path, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Segment source with only a shared secret takes signed webhooks, not SDK traffic: tried for a write key,
    its answer (missing X-Signature) was the 401 of /v1/batch when it came last in sources.yaml."""
    write_key_sources(mappings_dir, monkeypatch, app="app-key", hook="")
    hub = Hub(make_settings(tmp_path, mappings_dir=mappings_dir))
    try:
        assert [source.source_id for source in hub.sources.values() if source.sdk_ingest] == ["default", "app"]
        with pytest.raises(AuthenticationError, match="^missing write key"):
            hub.authenticate(InboundRequest("POST", "http://hub.test/v1/batch", {}, b"{}"))
    finally:
        hub.stop()
