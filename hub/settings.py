"""Every knob of the hub, read once from the environment (prefix ``HUB_``) and ``.env``.

Credentials live only here (never in mapping files), typed as ``SecretStr`` so
they print as ``**********`` if settings are ever logged.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"
DEVELOPMENT_WRITE_KEY = "dev-write-key"
DEVELOPMENT_ADMIN_TOKEN = "dev-admin-token"


class HubSettings(BaseSettings):
    """Settings for one hub process; see `.env.example` for the commented list."""

    model_config = SettingsConfigDict(env_prefix="HUB_", env_file=".env", extra="ignore")

    database_url: str = Field("sqlite:///var/hub.db", description="SQLAlchemy URL of the store.")
    mappings_dir: Path = Field(PROJECT_MAPPINGS, description="Folder of mapping, trigger and route YAML.")
    host: str = "127.0.0.1"
    port: int = 8000

    default_write_key: SecretStr = SecretStr(DEVELOPMENT_WRITE_KEY)
    admin_token: SecretStr = SecretStr(DEVELOPMENT_ADMIN_TOKEN)
    max_body_bytes: int = Field(512 * 1024, gt=0, description="Largest accepted request body, after gunzip.")
    default_phone_region: str = Field("US", description="Region for phone numbers written without +country.")

    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr("sandbox-auth-token")
    twilio_from_number: str = "+15005550006"
    twilio_api_base_url: str | None = Field(
        None, description="Send Twilio API calls here instead of https://api.twilio.com (sandbox, proxy)."
    )

    delivery_max_attempts: int = Field(8, ge=1)
    delivery_max_age_seconds: float = Field(24 * 3600, gt=0)
    retry_base_delay_seconds: float = Field(1.0, gt=0)
    retry_max_delay_seconds: float = Field(300.0, gt=0)
    send_timeout_seconds: float = Field(10.0, gt=0)

    worker_batch_size: int = Field(25, ge=1, description="Rows a worker claims (and, on SQLite, holds the write lock for) at once.")
    worker_poll_seconds: float = Field(0.5, gt=0, description="Idle workers look for work this often.")
    lease_seconds: float = Field(60.0, gt=0, description="A claimed row returns to the queue after this.")
    pipeline_max_attempts: int = Field(5, ge=1)

    quiet_hours: str = Field(
        "21:00-08:00", description="Local time window (HH:MM-HH:MM) when non-urgent messages wait; empty: none."
    )
    default_timezone: str = Field("UTC", description="Time zone of profiles without a `timezone` trait.")
    daily_message_cap: int = Field(5, ge=1, description="Most messages one profile gets from all rules in 24 hours.")
    rules_reload_seconds: float = Field(1.0, gt=0, description="How often triggers.yaml is checked for edits.")

    log_level: str = "INFO"
    log_json: bool = False

    def with_overrides(self, **values: object) -> "HubSettings":
        """A validated copy with some values replaced (``model_copy`` would skip validation)."""
        return type(self).model_validate({**self.model_dump(), **values})

    def uses_development_credentials(self) -> bool:
        return (
            self.default_write_key.get_secret_value() == DEVELOPMENT_WRITE_KEY
            or self.admin_token.get_secret_value() == DEVELOPMENT_ADMIN_TOKEN
        )
