"""What an outbound webhook destination is configured with, and how its requests are signed (Standard Webhooks).

Its own module so the connector's settings and secrets are read and checked
(at start, naming the setting) apart from how requests travel
(`connectors.destinations.webhook`). The signed content and the ``whsec_``
secret format are the spec's, shared with the Standard Webhooks source
(`connectors.webhooks`); a secret is checked as the spec writes it here, where
the source takes what senders show (prefix optional, padding loose).
"""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from connectors.destinations.ssrf import check_url, parse_networks
from connectors.webhooks import sign, signed_content, standard_webhooks_key
from connectors.webhooks import STANDARD_WEBHOOKS_SECRET_PREFIX as SECRET_PREFIX
from hub.provider_settings import PREVIOUS_WEBHOOK_SECRET_HELP
from hub.settings import HTTP_URL_PATTERN


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=HTTP_URL_PATTERN, description="Receiver URL (http or https).")
    secret: SecretStr = Field(description="Signing secret: 'whsec_' + base64 of 24-64 random bytes.")
    previous_secret: SecretStr | None = Field(None, description=PREVIOUS_WEBHOOK_SECRET_HELP)
    allowed_networks: list[str] = Field(
        default_factory=list, description="Non-public networks the URL may resolve into (SSRF guard), e.g. 127.0.0.1."
    )
    # Svix's timeout, and the least Standard Webhooks recommends (15 to 30 s): a receiver is given as long as
    # by the senders it is built for.
    timeout_seconds: float = Field(15.0, gt=0, description="Seconds the receiver has to answer.")

    @field_validator("url")
    @classmethod
    def _sendable_url(cls, url: str) -> str:
        """A URL the guard and both clients can send to, so a typo is a ConfigError naming the setting."""
        check_url(url)
        return url

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        """Each entry an address or network as `SsrfGuard` reads it, so a typo is a ConfigError naming it."""
        parse_networks(networks)
        return networks

    @field_validator("secret", "previous_secret")
    @classmethod
    def _standard_webhooks_secret(cls, secret: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """The secret as Standard Webhooks writes it; an empty or blank previous one is none (a rotation ended by
        emptying its variable, as `in_use` has it), an empty current one is refused."""
        if info.field_name == "previous_secret" and (secret is None or not secret.get_secret_value().strip()):
            return None
        signing_key(secret.get_secret_value() if secret is not None else "")
        return secret


def signing_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret; ValueError when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (Standard Webhooks secret format)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("the part after 'whsec_' must be base64") from None
    if not 24 <= len(standard_webhooks_key(key)) <= 64:
        raise ValueError("the key must be 24 to 64 bytes (Standard Webhooks)")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,`` entry of the webhook-signature header, as the hub's Standard Webhooks source checks them."""
    return "v1," + sign(key, "sha256", signed_content(message_id, timestamp, body), "base64")
