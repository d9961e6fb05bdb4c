"""RudderStack's Webhook destination: RudderStack forwards each event, in its event spec, to our URL.

Docs: https://www.rudderstack.com/docs/destinations/webhooks/
The payload is RudderStack's event JSON (Segment-spec fields plus
``rudderId``, ``channel``, ``request_ip``...). RudderStack does not sign
webhook requests; its dashboard adds custom headers instead, so the source
checks one header against a shared token (constant-time). Retries reuse
``messageId``, which the inbox deduplicates; that is also the only replay
protection an unsigned format allows.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone

import jmespath
from pydantic import BaseModel, ConfigDict, Field

from connectors.base import InboundRequest, ParseResult, Source
from connectors.webhooks import json_events, json_items, require_header
from hub.errors import AuthenticationError
from hub.signing_secrets import CurrentSecret

MESSAGE_ID = jmespath.compile("messageId")


class RudderStackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: CurrentSecret = Field(description="The exact header value set in the destination's headers, e.g. 'Bearer s3cr3t'.")
    header: str = Field("Authorization", description="Header RudderStack is configured to send.")


class RudderStackSource(Source):
    slug = "rudderstack"
    title = "RudderStack Webhook destination (RudderStack event spec)"
    docs_url = "https://www.rudderstack.com/docs/destinations/webhooks/"
    default_mapping = "rudderstack.yaml"
    Config = RudderStackConfig

    def verify(self, request: InboundRequest) -> None:
        config = self.config
        assert isinstance(config, RudderStackConfig)
        presented = require_header(request.headers, config.header)
        if not hmac.compare_digest(presented.encode(), config.token.get_secret_value().encode()):
            raise AuthenticationError(f"{config.header}: token does not match; check the destination's header value")

    def parse(self, request: InboundRequest) -> ParseResult:
        document, checks = json_items(request.body)  # a batch's 1e400 refuses its event alone
        return json_events(
            self.source_id, document, events=None, message_id=MESSAGE_ID,
            received_at=datetime.now(timezone.utc).isoformat(), **checks,
        )
