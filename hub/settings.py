"""Every knob of the hub, read once from the environment (prefix ``HUB_``) and ``.env``.

Credentials live only here (never in mapping files), typed as ``SecretStr`` so
they print as ``**********`` if settings are ever logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import phonenumbers
from pydantic import Field, SecretStr, field_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import SettingsConfigDict

from connectors.destinations.ssrf import check_url
from hub.durations import LONGEST
from hub.identifiers import DEFAULT_PHONE_REGION
from hub.provider_settings import ProviderSettings
from hub.secret_urls import setting_shown
from hub.serving import http_url
from hub.signing_secrets import in_use
from hub.store.engine import SQLITE_LOCK_TIMEOUT_SECONDS
from hub.store.forget_digest import ForgetKeys
from hub.unsubscribe import SHORTEST_LINK_DAYS

PROJECT_MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"
WORKER_ROLES = ("pipeline", "timers", "delivery")
DEVELOPMENT_WRITE_KEY = "dev-write-key"
DEVELOPMENT_ADMIN_TOKEN = "dev-admin-token"
DEVELOPMENT_UNSUBSCRIBE_SECRET = "dev-unsubscribe-secret"
SHORTEST_FORGET_KEY = 32  # characters of HUB_FORGET_KEY: `openssl rand -hex 32` makes 64
# The most sends one delivery engine has in flight (HUB_DELIVERY_CONCURRENCY); destination clients keep
# as many connections open, so a send never waits for, or closes, a connection another one could reuse.
MAX_DELIVERY_CONCURRENCY = 128
# The most HUB_MAX_BATCH_BYTES may be: a batch is held in memory whole, decoded and (refused) quarantined.
MAX_BATCH_BYTES = 64 * 1024 * 1024
# The most a batch setting (HUB_*_BATCH_SIZE) may be: a claim's rows are held in memory and go to SQL in one
# statement; unbounded, a typo past 2**63 failed every claim (OverflowError: SQLite takes no larger integer).
MAX_BATCH_ROWS = 10_000
# A URL others must follow (a webhook receiver, this hub as providers and recipients reach it): a scheme and a host.
HTTP_URL_PATTERN = r"^https?://[^\s/]+"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# The settings an emptied value (`HUB_X=`) leaves at their default. Not those where empty is documented to mean
# something: HUB_ADMIN_TOKEN (off), HUB_WORKERS (none), HUB_QUIET_HOURS (none), HUB_WEBHOOK_ALLOWED_NETWORKS (none),
# HUB_UNSUBSCRIBE_SECRET (refused), and the webhook URLs and base URLs, whose validators take empty as unset.
EMPTIED_IS_UNSET = (
    "database_url", "mappings_dir", "host", "metrics_port", "default_phone_region", "default_timezone",
    "forget_key", "forget_previous_keys",
    "twilio_account_sid", "twilio_from_number",
    "salesforce_consumer_key", "salesforce_username", "salesforce_domain", "salesforce_api_version",
    "salesforce_sobject", "salesforce_external_id_field", "salesforce_intent_field",
    "salesforce_task_external_id_field",
    "fcm_credentials_file", "fcm_project_id",
    "smtp_host", "smtp_username", "smtp_ca_file", "email_from",
)

# The longest durations the settings take. Unbounded, "inf" or a typo such as 1e12 was taken, and then the
# hub could not date what it added it to: OverflowError at start (a traceback, not "HUB_X: ...") or at every
# pipeline, timer or delivery step, with /healthz still ok.
LONGEST_SECONDS = LONGEST.total_seconds()  # a period the hub keeps, as delivery.yaml and rules take: a century
LONGEST_WAIT_SECONDS = 3600.0  # a wait for one thing (a lock, a provider's answer) or between two reloads
LONGEST_POLL_SECONDS = 60.0  # an idle worker looks for work it was not told of at least this often
# A claimed row's lease; two of them are PostgreSQL's idle-in-transaction timeout, in milliseconds of an int32.
LONGEST_LEASE_SECONDS = 24 * 3600.0


class HubSettings(ProviderSettings):
    """Settings for one hub process (with what its destinations are given: `ProviderSettings`); see `.env.example`
    for the commented list."""

    model_config = SettingsConfigDict(env_prefix="HUB_", env_file=".env", extra="ignore", allow_inf_nan=False)

    database_url: str = Field("sqlite:///var/hub.db", description="SQLAlchemy URL of the store.")
    sqlite_lock_timeout_seconds: float = Field(
        SQLITE_LOCK_TIMEOUT_SECONDS, gt=0, le=LONGEST_WAIT_SECONDS,
        description="On SQLite, how long a write waits for another process's before it fails naming that process "
        "(the hub's writer lock, then SQLite's busy timeout).",
    )
    mappings_dir: Path = Field(PROJECT_MAPPINGS, description="Folder of mapping, trigger and route YAML.")
    mappings_reload_seconds: float = Field(
        1.0, gt=0, le=LONGEST_WAIT_SECONDS, description="How often changed mapping files are looked for."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535, description="TCP port the HTTP server listens on.")
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="Port on HUB_HOST where `touchhub worker` serves /metrics (its own counters and circuit gauges, "
        "beside the store's gauges); unset: none. `touchhub serve` serves /metrics on HUB_PORT either way.",
    )
    public_base_url: str | None = Field(
        None, description="How providers and recipients reach this hub (callbacks, unsubscribe links); default http://host:port."
    )

    default_write_key: SecretStr = SecretStr(DEVELOPMENT_WRITE_KEY)
    admin_token: SecretStr = Field(
        SecretStr(DEVELOPMENT_ADMIN_TOKEN),
        description="Bearer token holding every admin scope; empty turns it off (API keys only, `touchhub keys`).",
    )
    max_body_bytes: int = Field(
        512 * 1024, gt=0, le=MAX_BATCH_BYTES, description="Largest accepted request body, after gunzip (batches: HUB_MAX_BATCH_BYTES)."
    )
    max_batch_bytes: int = Field(
        4 * 1024 * 1024, gt=0, le=MAX_BATCH_BYTES,
        description="Largest accepted body of /v1/batch and /v1/b, after gunzip: RudderStack's SDKs and server go to 4 MiB.",
    )
    default_phone_region: str = Field(
        DEFAULT_PHONE_REGION, description="Region for phone numbers written without +country: an ISO 3166-1 code (US, GB, DE, ...)."
    )

    unsubscribe_secret: SecretStr = Field(
        SecretStr(DEVELOPMENT_UNSUBSCRIBE_SECRET), min_length=1,
        description="Signs unsubscribe links (an empty one would sign links the hub then refuses); to change it, move "
        "the old one to HUB_UNSUBSCRIBE_PREVIOUS_SECRET first.",
    )
    unsubscribe_previous_secret: SecretStr | None = Field(
        None, description="The secret before the last change: links it signed keep working until they expire "
        "(unsubscribe_link_days), as the law asks of an unsubscribe link; unset it after that.",
    )
    unsubscribe_link_days: int = Field(
        90, ge=SHORTEST_LINK_DAYS, le=LONGEST.days,  # past about 2.9 million days every email's link date overflowed
        description=f"How long an unsubscribe link keeps working ({SHORTEST_LINK_DAYS} to {LONGEST.days} days: CAN-SPAM "
        "wants it to work 30 days after the email is sent).",
    )
    forget_key: SecretStr | None = Field(
        None,
        description="Keys the digests by which a forgotten person's identifiers are refused (DELETE /api/profiles/{id}): "
        "HMAC-SHA256 under it, where unset they are plain sha256, from which anyone holding the database or a backup "
        f"gets back a phone number or email by hashing guesses. At least {SHORTEST_FORGET_KEY} characters (`openssl rand "
        "-hex 32`), kept outside the database, the same on every node; the plain rows are keyed when a hub with it "
        "starts. Never change or lose it: the rows it keyed would match nothing and the people forgotten would come "
        "back; to change it, move the old one to HUB_FORGET_PREVIOUS_KEYS first.",
    )
    forget_previous_keys: SecretStr | None = Field(
        None,
        description="Comma-separated keys HUB_FORGET_KEY held before: the rows each keyed still refuse their identifiers. "
        "Keep every one for as long as the store keeps those rows, which is for good (they are never keyed again).",
    )

    delivery_max_attempts: int = Field(8, ge=1)
    delivery_max_age_seconds: float = Field(24 * 3600, gt=0, le=LONGEST_SECONDS)
    retry_base_delay_seconds: float = Field(1.0, gt=0, le=LONGEST_SECONDS)
    retry_max_delay_seconds: float = Field(300.0, gt=0, le=LONGEST_SECONDS)
    send_timeout_seconds: float = Field(10.0, gt=0, le=LONGEST_WAIT_SECONDS)
    webhook_timeout_seconds: float = Field(
        15.0, gt=0, le=LONGEST_WAIT_SECONDS, description="Seconds a webhook receiver has to answer (Svix: 15)."
    )
    delivery_concurrency: int = Field(
        64, ge=1, le=MAX_DELIVERY_CONCURRENCY,
        description="Sends in flight at once per process: at least sends/s x the providers' answer time, with room for "
                    "bursts (500 webhooks/s answered in 20 ms keep 10 busy; sends slower than 50 ms keep their place while later "
                    "batches go on).",
    )
    delivery_batch_size: int = Field(
        64, ge=1, le=MAX_BATCH_ROWS,
        description="Deliveries the delivery engine claims at once; keep batch / concurrency * send timeout under the lease.",
    )
    breaker_failure_threshold: int = Field(5, ge=1, description="Consecutive retryable failures that open a destination's circuit.")
    breaker_reset_seconds: float = Field(
        30.0, gt=0, le=LONGEST_SECONDS, description="An open circuit lets one probe through after this."
    )

    worker_batch_size: int = Field(
        25, ge=1, le=MAX_BATCH_ROWS, description="Rows a worker claims (and, on SQLite, holds the write lock for) at once."
    )
    pipeline_backlog_batch_size: int = Field(
        200, ge=1, le=MAX_BATCH_ROWS,
        description="While the inbox has a backlog (each claim comes back full), the pipeline doubles its claims from "
                    "HUB_WORKER_BATCH_SIZE up to this: fewer commits, but SQLite's write lock held longer (~0.25 ms a row).",
    )
    timer_batch_size: int = Field(
        100, ge=1, le=MAX_BATCH_ROWS,
        description="Due timers the timer worker claims and fires as one set (a set's reads are shared by its timers).",
    )
    timer_gather_seconds: float = Field(
        0.1, ge=0, le=0.5,
        description="After firing less than a full set, the timer worker waits this long so the next set is larger "
                    "(timers fire up to this much later; 0: at once).",
    )
    identity_cache_size: int = Field(
        1_000_000, ge=0,
        description="Identifier owners a pipeline worker remembers between batches (~190 bytes each; 0: ask SQL every time).",
    )
    worker_poll_seconds: float = Field(
        0.5, gt=0, le=LONGEST_POLL_SECONDS, description="Idle workers look for work this often."
    )
    workers: str = Field(
        ",".join(WORKER_ROLES),
        description="Comma-separated workers this process runs (pipeline, timers, delivery); the others run elsewhere.",
    )
    lease_seconds: float = Field(
        60.0, gt=0, le=LONGEST_LEASE_SECONDS, description="A claimed row returns to the queue after this."
    )
    pipeline_max_attempts: int = Field(
        5, ge=1, description="Tries before an inbox row is quarantined, or a due absence timer whose firing keeps "
                             "raising is settled `failed`."
    )

    retention_days: int = Field(
        90, ge=0, le=LONGEST.days,
        description="Raw events, quarantined bodies, delivery attempts, settled timers, held provider reports and applied "
                    "consent replies older than this are deleted (hourly, by the timers worker; `touchhub prune`); 0 keeps "
                    "them for ever.",
    )

    quiet_hours: str = Field(
        "21:00-08:00", description="Local time window (HH:MM-HH:MM) when non-urgent messages wait; empty: none."
    )
    default_timezone: str = Field(
        "UTC", description="Time zone of profiles with neither a `timezone` trait nor an event's `context.timezone`."
    )
    daily_message_cap: int = Field(
        5, ge=1,
        description="Most messages one profile gets from all rules in any 24 hours, each counted when it goes "
        "(the end of its delay or quiet hours; a retried or replayed one when the provider took it).",
    )
    message_max_age_hours: float = Field(
        12.0, gt=0, le=LONGEST_SECONDS / 3600,
        description="A message whose cause (the event, or the end of a timer's wait) is older than this is skipped, "
        "not sent: a backfill, a replay of old data or a worker long down must not message people about the past.",
    )
    rules_reload_seconds: float = Field(
        1.0, gt=0, le=LONGEST_WAIT_SECONDS,
        description="How often triggers.yaml and message templates are checked for edits.",
    )

    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).")
    log_json: bool = False

    @field_validator("workers")
    @classmethod
    def _known_workers(cls, value: str) -> str:
        unknown = [name for name in _names(value) if name not in WORKER_ROLES]
        if unknown:
            raise ValueError(f"unknown worker {', '.join(unknown)}: pick from {', '.join(WORKER_ROLES)}")
        return value

    @field_validator("mappings_dir")
    @classmethod
    def _mappings_folder(cls, value: Path) -> Path:
        """Naming one of its files (triggers.yaml) instead made every mapping file "not a directory", a traceback."""
        if value.is_file():
            raise ValueError(f"{value} is a file; point it at the folder of the mapping files, e.g. {value.parent}")
        return value

    @field_validator("public_base_url", "twilio_api_base_url", "salesforce_api_base_url", "fcm_api_base_url")
    @classmethod
    def _followable_base_url(cls, value: str | None) -> str | None:
        """Unsubscribe links and provider callbacks are built on this hub's, and every send on a provider's: without
        a scheme no one could follow them, and a provider's was taken until each SMS, push or CRM update failed at its
        send. Empty is the default (http://host:port; the provider's own API), as unset."""
        if not value:
            return value
        if not re.match(HTTP_URL_PATTERN, value):
            raise ValueError(f"write it whole, with its scheme, e.g. https://{value.rpartition('://')[2]}")
        check_url(value)
        return value

    @field_validator("forget_key")
    @classmethod
    def _long_forget_key(cls, value: SecretStr | None) -> SecretStr | None:
        """A short key is guessed as the values are, and the digests it keys are as open as plain ones."""
        if value is not None and len(value.get_secret_value()) < SHORTEST_FORGET_KEY:
            raise ValueError(f"at least {SHORTEST_FORGET_KEY} characters, so nobody guesses it; make one with `openssl rand -hex 32`")
        return value

    @field_validator(*EMPTIED_IS_UNSET, mode="before")
    @classmethod
    def _emptied_is_unset(cls, value: object) -> object:
        """`HUB_HOST=` or `HUB_METRICS_PORT=`, as a .env copied from .env.example or a chart's empty default writes
        them, are unset (their default), as every emptied setting is: read as written, the host "" bound every
        interface with public links `http://:8000/...`, the port stopped every command loading settings (not an
        integer), and a folder or key file was Path("."), the current folder."""
        if isinstance(value, str) and not value.strip():
            raise PydanticUseDefault()
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        """`info` as well as `INFO`, as logging's own level names are written either way in configs."""
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("default_phone_region")
    @classmethod
    def _known_phone_region(cls, value: str) -> str:
        """A region phonenumbers does not know makes every national number unparseable, dropped as junk."""
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"HUB_DEFAULT_PHONE_REGION: {value!r} is not a region phonenumbers knows; use a two-letter ISO 3166-1 "
                "code such as US, DE or GB (GB, not UK, for the United Kingdom)"
            )
        return region

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The settings as printed: secrets are `SecretStr`, and URLs, which may carry a password or a token,
        show neither (`setting_shown`)."""
        for name, value in super().__repr_args__():
            yield name, setting_shown(name, value)

    @property
    def worker_roles(self) -> tuple[str, ...]:
        """The workers this process runs, from `workers`."""
        return _names(self.workers)

    def with_overrides(self, **values: object) -> "HubSettings":
        """A validated copy with some values replaced (``model_copy`` would skip validation)."""
        return type(self).model_validate({**self.model_dump(), **values})

    def public_url(self, path: str) -> str:
        """The absolute URL of `path` on this hub as seen from outside, for providers and recipients."""
        base = self.public_base_url or http_url(self.host, self.port)
        return base.rstrip("/") + path

    def unsubscribe_secrets(self) -> list[str]:
        """The secrets an unsubscribe link may be signed with: the current one, and the one before a change."""
        return in_use(self.unsubscribe_secret, self.unsubscribe_previous_secret)

    def forget_keys(self) -> ForgetKeys:
        """The keys of the forgotten-identifier blocklist: HUB_FORGET_KEY, then HUB_FORGET_PREVIOUS_KEYS."""
        previous = self.forget_previous_keys.get_secret_value() if self.forget_previous_keys else ""
        return ForgetKeys(
            self.forget_key.get_secret_value().encode() if self.forget_key else None,
            tuple(key.encode() for key in _names(previous)),
        )

    def forget_key_missing(self) -> bool:
        """Whether a hub past development keeps forgotten people's identifiers as plain digests (HUB_FORGET_KEY unset).

        Development is a hub whose admin API still opens with the published
        HUB_ADMIN_TOKEN: the quick start, a laptop. Whoever changed it (or
        emptied it for API keys) readies the hub for others, and then for real
        people's erasure requests.
        """
        return self.forget_key is None and self.admin_token.get_secret_value() != DEVELOPMENT_ADMIN_TOKEN

    def development_credentials(self) -> list[str]:
        """The secrets still at their published development values: fine for a demo, open to anyone once the
        hub is reachable (with the unsubscribe secret, anyone can forge a link that opts any profile out)."""
        secrets = {
            "HUB_DEFAULT_WRITE_KEY": (self.default_write_key, DEVELOPMENT_WRITE_KEY),
            "HUB_ADMIN_TOKEN": (self.admin_token, DEVELOPMENT_ADMIN_TOKEN),
            "HUB_UNSUBSCRIBE_SECRET": (self.unsubscribe_secret, DEVELOPMENT_UNSUBSCRIBE_SECRET),
            # Kept as the previous secret after a change, it still signs links anyone can forge.
            "HUB_UNSUBSCRIBE_PREVIOUS_SECRET": (self.unsubscribe_previous_secret, DEVELOPMENT_UNSUBSCRIBE_SECRET),
        }
        return [name for name, (value, development) in secrets.items() if value is not None and value.get_secret_value() == development]


def _names(listed: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in listed.split(",") if name.strip())
