"""Platforms with home-grown webhook signing: header, hash, encoding and prefix are configuration.

Covers the common shapes: GitHub-style ``X-Hub-Signature-256: sha256=<hex>``
over the body, Shopify-style base64 digests, and Slack/Stripe-style signed
content that puts a timestamp before the body (``signed_content:
"v0:{timestamp}:{body}"`` with `timestamp_header`), which also turns on the
replay window. Without a timestamp header, replays are stopped only by
message-id deduplication, so prefer a signed timestamp when the platform has one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import jmespath
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.base import InboundRequest, ParseResult, Source
from connectors.webhooks import (
    PREVIOUS_SECRET_HELP,
    Algorithm,
    Encoding,
    check_signature,
    check_timestamp,
    json_events,
    json_items,
    lower_case_hex,
    require_header,
    secrets_in_use,
    sign,
)
from hub.errors import ItemProblem
from hub.mapping import check_expression
from hub.signing_secrets import CurrentSecret


class GenericHmacConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: CurrentSecret
    previous_secret: SecretStr | None = Field(None, description=PREVIOUS_SECRET_HELP)
    signature_header: str = Field("X-Signature", description="Header carrying the signature.")
    algorithm: Algorithm = "sha256"
    encoding: Encoding = "hex"
    prefix: str = Field("", description="Text before the digest in the header, e.g. 'sha256='.")
    signed_content: str = Field(
        "{body}", description="What is signed: the raw body as {body}, the timestamp header's value as {timestamp}."
    )
    timestamp_header: str | None = Field(None, description="Header with the Unix time of signing; enables the replay window.")
    timestamp_unit: str = Field("s", pattern="^(s|ms)$", description="Unit of the timestamp header: s or ms.")
    tolerance_seconds: int = Field(300, gt=0)
    events: str | None = Field(None, description="JMESPath to the list of events in the body (default: the body).")
    message_id: str | None = Field(None, description="JMESPath to each event's unique id (default: a payload hash).")

    @field_validator("events", "message_id")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return None if value is None else check_expression(value)

    @model_validator(mode="after")
    def _template_fits(self) -> "GenericHmacConfig":
        if "{body}" not in self.signed_content:
            raise ValueError("signed_content must contain {body}")
        if ("{timestamp}" in self.signed_content) != (self.timestamp_header is not None):
            raise ValueError("signed_content uses {timestamp} exactly when timestamp_header is set")
        return self


def _case_folded(presented: str, config: GenericHmacConfig) -> str:
    """The presented signature as the hub writes it: hex in lower case, base64 (case-sensitive) as sent."""
    return lower_case_hex(presented, config.prefix) if config.encoding == "hex" else presented


class GenericHmacSource(Source):
    slug = "generic_hmac"
    title = "Generic HMAC-signed JSON webhook (configurable header, hash, encoding, prefix)"
    docs_url = "https://www.rfc-editor.org/rfc/rfc2104"
    default_mapping = "generic_hmac.yaml"
    Config = GenericHmacConfig

    def verify(self, request: InboundRequest) -> None:
        config = self.config
        assert isinstance(config, GenericHmacConfig)
        presented = _case_folded(require_header(request.headers, config.signature_header), config)
        timestamp = ""
        if config.timestamp_header is not None:
            timestamp = require_header(request.headers, config.timestamp_header)
            check_timestamp(timestamp, config.timestamp_header, datetime.now(timezone.utc), config.tolerance_seconds,
                            milliseconds=config.timestamp_unit == "ms")
        before, _, after = config.signed_content.replace("{timestamp}", timestamp).partition("{body}")
        content = before.encode() + request.body + after.encode()
        expected = [
            config.prefix + sign(secret, config.algorithm, content, config.encoding)
            for secret in secrets_in_use(config.secret, config.previous_secret)
        ]
        check_signature(expected, [presented], config.signature_header)

    def parse(self, request: InboundRequest) -> ParseResult:
        return self.parse_events(request)

    def parse_events(
        self, request: InboundRequest, transform: Callable[[int, dict[str, Any]], dict[str, Any] | ItemProblem] | None = None
    ) -> ParseResult:
        """The configured events of the body, each passed through `transform` (for subclasses that enrich)."""
        config = self.config
        assert isinstance(config, GenericHmacConfig)
        document, checks = json_items(request.body)  # a list's 1e400 refuses its event alone
        return json_events(
            self.source_id, document,
            events=jmespath.compile(config.events) if config.events else None,
            message_id=jmespath.compile(config.message_id) if config.message_id else None,
            received_at=datetime.now(timezone.utc).isoformat(), transform=transform, **checks,
        )
