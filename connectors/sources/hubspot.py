"""HubSpot webhooks (v3 request signatures): contact and deal creation and property changes.

Docs: https://developers.hubspot.com/docs/api/webhooks/validating-requests
HubSpot posts a JSON *array* of events. ``X-HubSpot-Signature-v3`` is the
base64 HMAC-SHA256, keyed with the app's client secret, of
method + URI + body + timestamp, where the URI is the full URL HubSpot called
(scheme, host, path and query) with exactly these escapes decoded:
%3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B (any other, such as the %3D
of a base64 token, stays as sent), and the timestamp is
``X-HubSpot-Request-Timestamp`` in *milliseconds*. Requests older than five
minutes must be refused. Behind a proxy the URL the hub sees
differs from the one HubSpot signed: set `public_url`.

An event's ``eventId`` is not guaranteed unique, so the message id joins
portal, subscription, event, object and time, which together are. An
association change (``contact.associationChange`` and the like) has no
``objectId``: it names the two objects as ``fromObjectId`` and
``toObjectId``, so its id joins those, the ``associationType`` and whether
it was ``associationRemoved`` instead.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.base import InboundRequest, ParseResult, RejectedItem, Source
from connectors.storable_json import storage_problem
from connectors.webhooks import (
    PREVIOUS_SECRET_HELP,
    StorageChecks,
    check_signature,
    check_timestamp,
    json_items,
    require_header,
    secrets_in_use,
    sign,
    storable_message_id,
)
from hub.errors import BadPayloadError, ItemProblem
from hub.model import RawEvent
from hub.signing_secrets import CurrentSecret

SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
ID_FIELDS = ("portalId", "subscriptionId", "eventId", "objectId", "occurredAt")
ASSOCIATION_ID_FIELDS = ("portalId", "subscriptionId", "eventId", "associationType", "fromObjectId", "toObjectId",
                         "associationRemoved", "occurredAt")
# The escapes HubSpot decodes before signing (: / ? @ ! $ ' ( ) * , ;), in either case of hex; no others.
SIGNED_ESCAPES = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)


class HubSpotConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client_secret: CurrentSecret = Field(description="The app's client secret (Auth tab of the app).")
    previous_client_secret: SecretStr | None = Field(None, description=PREVIOUS_SECRET_HELP)
    public_url: str | None = Field(
        None, description="The target URL as configured in HubSpot, when a proxy changes what the hub sees."
    )
    tolerance_seconds: int = Field(300, gt=0, description="Replay window; HubSpot asks for five minutes.")


class HubSpotSource(Source):
    slug = "hubspot"
    title = "HubSpot webhooks (signature v3): contact and deal events"
    docs_url = "https://developers.hubspot.com/docs/api/webhooks"
    default_mapping = "hubspot.yaml"
    Config = HubSpotConfig

    def verify(self, request: InboundRequest) -> None:
        config = self.config
        assert isinstance(config, HubSpotConfig)
        signature = require_header(request.headers, SIGNATURE_HEADER)
        timestamp = require_header(request.headers, TIMESTAMP_HEADER)
        check_timestamp(timestamp, TIMESTAMP_HEADER, datetime.now(timezone.utc), config.tolerance_seconds, milliseconds=True)
        uri = SIGNED_ESCAPES.sub(lambda escape: chr(int(escape[1], 16)), config.public_url or request.url)
        content = f"{request.method.upper()}{uri}".encode() + request.body + timestamp.encode()
        expected = [
            sign(secret, "sha256", content, "base64") for secret in secrets_in_use(config.client_secret, config.previous_client_secret)
        ]
        check_signature(expected, [signature], SIGNATURE_HEADER)

    def parse(self, request: InboundRequest) -> ParseResult:
        # The array is level 1: its events count their own levels, and one holding 1e400 is refused alone.
        document, checks = json_items(request.body)
        if not isinstance(document, list):
            raise BadPayloadError(f"body: HubSpot sends a JSON array of events, got {type(document).__name__}")
        received_at = datetime.now(timezone.utc).isoformat()
        result = ParseResult()
        for index, item in enumerate(document):
            id_fields = _id_fields(item)
            problems = _problems(index, item, id_fields, checks)
            if problems:
                result.rejected.append(RejectedItem(item, problems))
                continue
            message_id = storable_message_id("-".join(str(item[name]) for name in id_fields))
            result.events.append(RawEvent(self.source_id, message_id, {"receivedAt": received_at, **item}))
        if not result.events:
            raise BadPayloadError("no valid HubSpot event in the request", result.problems)
        return result


def _problems(index: int, item: Any, id_fields: tuple[str, ...], checks: StorageChecks) -> list[ItemProblem]:
    """What keeps one event out: one of its `id_fields` missing, or what no store can hold (`storage_problem`)."""
    missing = [name for name in id_fields if not isinstance(item, dict) or item.get(name) is None]
    if missing:
        return [ItemProblem(index, name, "is required in a HubSpot event") for name in missing]
    problem = storage_problem(index, item, **checks)
    return [problem] if problem else []


def _id_fields(item: Any) -> tuple[str, ...]:
    """The fields that together tell one event from every other. An association change names its two objects
    and has no `objectId`: asking for one refused every such event, and a request of them alone with a 400. An
    event naming neither is told that `objectId` is missing."""
    if not isinstance(item, dict) or item.get("objectId") is not None:
        return ID_FIELDS
    association = item.get("fromObjectId") is not None and item.get("toObjectId") is not None
    return ASSOCIATION_ID_FIELDS if association else ID_FIELDS
