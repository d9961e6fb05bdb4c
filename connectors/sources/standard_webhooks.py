"""Any platform that signs with the Standard Webhooks spec (Svix, Resend, Clerk, Lemon Squeezy, ...).

Spec: https://www.standardwebhooks.com/ — three headers: ``webhook-id`` (the
same on every retry of one message, so it is our message id),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: space-separated
``v1,<base64 HMAC-SHA256>`` entries over ``{id}.{timestamp}.{body}``. The
secret is base64 with a ``whsec_`` prefix. Several signatures appear while a
sender rotates its secret; any one matching is enough.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from connectors.base import InboundRequest, ParseResult, Source
from connectors.storable_json import may_hold_unstorable_text, text_problem
from connectors.webhooks import (
    PREVIOUS_SECRET_HELP,
    STANDARD_WEBHOOKS_SECRET_PREFIX,
    check_signature,
    check_timestamp,
    json_document,
    payload_message_id,
    require_header,
    sign,
    signed_content,
    standard_webhooks_key,
    storable_message_id,
)
from hub.errors import BadPayloadError
from hub.model import RawEvent
from hub.settings import PROJECT_MAPPINGS
from hub.signing_secrets import CurrentSecret, in_use

class StandardWebhooksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: CurrentSecret = Field(description="Signing secret as the sender shows it, e.g. whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.")
    previous_secret: SecretStr | None = Field(None, description=PREVIOUS_SECRET_HELP)
    tolerance_seconds: int = Field(300, gt=0, description="Replay window around webhook-timestamp.")

    @field_validator("secret", "previous_secret")
    @classmethod
    def _holds_a_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """A previous secret that holds no key is none, as an emptied one is (`in_use`): a rotation ended by
        clearing the key in a secret manager leaves `whsec_`, which decoded to b"", a key anyone signs with. A
        current secret holding none is refused (`standard_webhooks_key`)."""
        if value is None:
            return None
        try:
            key = _key(value.get_secret_value())
        except binascii.Error:
            raise ValueError("must be base64, optionally prefixed with whsec_") from None
        if info.field_name == "previous_secret" and not key:
            return None
        standard_webhooks_key(key)
        return value


def _key(secret: str) -> bytes:
    text = secret.removeprefix(STANDARD_WEBHOOKS_SECRET_PREFIX)
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


class StandardWebhooksSource(Source):
    slug = "standard_webhooks"
    title = "Standard Webhooks (webhook-id / webhook-timestamp / webhook-signature)"
    docs_url = "https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md"
    default_mapping = "standard_webhooks.yaml"
    Config = StandardWebhooksConfig

    def __init__(self, source_id: str, config: BaseModel, folder: Path = PROJECT_MAPPINGS) -> None:
        super().__init__(source_id, config, folder)
        assert isinstance(config, StandardWebhooksConfig)
        # Decoded once, not on every request; none is empty, as the config's validator saw to.
        self._keys = [_key(secret) for secret in in_use(config.secret, config.previous_secret)]

    def verify(self, request: InboundRequest) -> None:
        config = self.config
        assert isinstance(config, StandardWebhooksConfig)
        message_id = require_header(request.headers, "webhook-id")
        timestamp = require_header(request.headers, "webhook-timestamp")
        signatures = require_header(request.headers, "webhook-signature")
        check_timestamp(timestamp, "webhook-timestamp", datetime.now(timezone.utc), config.tolerance_seconds)
        content = signed_content(message_id, timestamp, request.body)
        expected = [sign(key, "sha256", content, "base64") for key in self._keys]
        presented = [entry.partition(",")[2] for entry in signatures.split() if entry.startswith("v1,")]
        check_signature(expected, presented, "webhook-signature")

    def parse(self, request: InboundRequest) -> ParseResult:
        document = json_document(request.body)
        if not isinstance(document, dict):
            raise BadPayloadError(f"body: expected a JSON object, got {type(document).__name__}")
        sender_id = request.headers.get("webhook-id", "")
        problem = text_problem(None, {"webhook-id": sender_id}) or (
            text_problem(None, document) if may_hold_unstorable_text(request.body) else None
        )
        if problem is not None:
            raise BadPayloadError(f"{problem.field}: {problem.reason}", [problem])
        message_id = storable_message_id(sender_id or payload_message_id(document))
        received_at = datetime.now(timezone.utc).isoformat()
        return ParseResult(events=[RawEvent(self.source_id, message_id, {"receivedAt": received_at, **document})])
