"""What a connector is, and the registry that finds them.

A source turns an authenticated HTTP request into raw events; a destination
turns a planned delivery into a provider call. Each is one module declaring
its metadata and a pydantic config model as class attributes. Built-in and
third-party connectors register the same way, through the
``touchpoint_hub.connectors`` entry-point group, so there is one code path.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import httpx
import requests
from pydantic import BaseModel, ValidationError

from hub.errors import (
    ConfigError,
    DeliveryError,
    DeliveryFailure,
    ItemProblem,
    RetryableDeliveryError,
    unexpected_failure,
)
from hub.model import Delivery, Identifier, ProviderStatus, RawEvent, SendResult
from hub.pii import mask_text
from hub.settings import PROJECT_MAPPINGS

ENTRY_POINT_GROUP = "touchpoint_hub.connectors"
# Failures to reach a provider at all, from any client library we use: worth a retry. aiohttp's (the delivery
# engine's async sends: webhooks, Twilio's `create_async`) are mostly no OSError: a pooled keep-alive connection the
# far end closed is `ServerDisconnectedError`, an answer that is not HTTP `ClientResponseError`.
NETWORK_ERRORS: tuple[type[Exception], ...] = (
    requests.RequestException, httpx.TransportError, aiohttp.ClientError, OSError,
)


def secret_digest(secret: str) -> bytes:
    """What is kept of a write key or token: its SHA-256, compared in constant time."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def matches_digest(presented: str, digest: bytes) -> bool:
    return hmac.compare_digest(secret_digest(presented), digest)


class Connector:
    """Metadata every connector declares, and config validation shared by both kinds."""

    slug: ClassVar[str]
    title: ClassVar[str]
    docs_url: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]]

    @classmethod
    def validate_config(cls, where: str, raw: Mapping[str, Any]) -> BaseModel:
        """The validated config, or a ConfigError naming `where`, each key and the reason."""
        try:
            return cls.Config.model_validate(dict(raw))
        except ValidationError as exc:
            raise ConfigError(
                [f"{where}: {'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}" for e in exc.errors()]
            ) from None


@dataclass(frozen=True)
class InboundRequest:
    """What a source sees of one HTTP request: enough to check a signature and read the body.

    `url` is the full URL as the sender addressed it (HubSpot signs it, query
    string included); `headers` are lower-cased, as HTTP/2 sends them anyway.
    `client_ip` is the sender's address on the SDK endpoints (None on webhooks,
    whose sender is a platform's server, no person's).
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    client_ip: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", {name.lower(): value for name, value in self.headers.items()})

    @property
    def path(self) -> str:
        return urlsplit(self.url).path


@dataclass
class RejectedItem:
    """One item of a request a source refused, kept raw for quarantine."""

    raw: Any
    problems: list[ItemProblem]


@dataclass
class ParseResult:
    """Events a source accepted from one request, and the items it refused.

    Each item of the request becomes one event or one refused item, appended
    in the request's order, with the item's place in its problems' `index`:
    the preview numbers the events by the places the refused items leave.
    """

    events: list[RawEvent] = field(default_factory=list)
    rejected: list[RejectedItem] = field(default_factory=list)

    @property
    def problems(self) -> list[ItemProblem]:
        return [problem for item in self.rejected for problem in item.problems]


class Source(Connector, ABC):
    """An inbound connector: verify the request, then parse it.

    Override `verify` to authenticate (raise `AuthenticationError` whose
    message says what was wrong) and `parse` to turn the body into raw events.
    `default_mapping` names the file in `mappings/` that normalizes this
    source's payloads. Set `sdk_ingest` when the source answers the
    Segment-compatible `/v1/batch`, `/v1/track`, ... endpoints (write-key
    auth), on the class or per instance (a Segment source with no write key
    clears it), and keep the key's digest in `write_key_digest`, so that two
    sources with one key are refused; every source answers
    `POST /v1/webhooks/{source_id}`.
    """

    default_mapping: ClassVar[str]
    sdk_ingest: bool = False
    write_key_digest: bytes | None = None

    def __init__(self, source_id: str, config: BaseModel, folder: Path = PROJECT_MAPPINGS) -> None:
        """`folder` is the mappings folder, where a connector finds files ops keep beside its mapping."""
        self.source_id = source_id
        self.config = config
        self.folder = folder

    @abstractmethod
    def verify(self, request: InboundRequest) -> None:
        """Raise AuthenticationError unless the request carries this source's credentials."""

    @abstractmethod
    def parse(self, request: InboundRequest) -> ParseResult:
        """Raw events from a verified request; raise BadPayloadError when nothing in it can be used."""


class Destination(Connector, ABC):
    """An outbound connector: send one delivery; classify what goes wrong.

    `send` returns a SendResult when the provider accepted the message. When
    it did not, `send` lets the client library's exception out (or raises a
    `DeliveryError` itself when it knows better, e.g. a malformed delivery),
    and the engine asks `classify` what that exception means: retryable,
    permanent or auth. Keeping the verdict in one method makes it testable
    against every documented vendor error without a network round trip.

    The delivery engine sends from one asyncio event loop and calls
    `deliver_async`. A destination whose client can await its I/O overrides
    `send_async` (and `close_async` for the connections it opens); the rest,
    built on blocking vendor SDKs, keep only `send`, which then runs in one of
    the loop's worker threads.
    """

    channel: ClassVar[str]
    # The provider keeps one record per profile id (a CRM Lead): after a merge, the engine names the merged-in
    # ids that record may still be keyed by (`Delivery.previous_targets`).
    keeps_record_per_profile: ClassVar[bool] = False
    # The rendered parts a message is made of. When every one renders blank (a false `{% if %}`, a file caught
    # half-saved) routing skips the message and tries its fallback; none (data such as webhooks and CRM updates,
    # which mean something without text): always sent.
    message_parts: ClassVar[tuple[str, ...]] = ()
    # Parts a message cannot go without though the others render (an email's subject): one blank is skipped too.
    required_parts: ClassVar[tuple[str, ...]] = ()
    # The longest each part may be, in characters: routing skips a longer one, so its fallback is tried, where the
    # provider refused it for good (Twilio's 21617 past 1,600).
    part_limits: ClassVar[Mapping[str, int]] = {}

    def __init__(self, destination_id: str, config: BaseModel) -> None:
        self.destination_id = destination_id
        self.config = config

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> list[str]:
        """What is wrong with a rule action's ``params`` (as `send` gets them in ``content["params"]``), each as
        ``params.<key>: <reason>``; none by default.

        The hub asks when the rules load, so params this destination would
        refuse at every send stop the rule at start-up (or keep the last good
        rules on a hot reload) instead of failing each of its messages.
        Override with the same validation `send` does.
        """
        return []

    @abstractmethod
    def send(self, delivery: Delivery) -> SendResult:
        """Deliver, or raise DeliveryError."""

    async def send_async(self, delivery: Delivery) -> SendResult:
        """`send` without blocking the event loop: by default the blocking `send` in a worker thread."""
        return await asyncio.to_thread(self.send, delivery)

    def deliver(self, delivery: Delivery) -> SendResult:
        """`send`, with a failure raised as the DeliveryError `classify` makes of it."""
        with self._classified():
            return self.send(delivery)

    async def deliver_async(self, delivery: Delivery) -> SendResult:
        """`send_async`, with failures classified as `deliver` does: the engine's entry point."""
        with self._classified():
            return await self.send_async(delivery)

    @contextmanager
    def _classified(self) -> Iterator[None]:
        try:
            yield
        except DeliveryError:
            raise
        except Exception as exc:
            raise self.classify(exc) from exc

    def classify(self, error: Exception) -> DeliveryError:
        """What a failed send means for the delivery; override to read the vendor's error codes.

        The default knows only transport failures (connection refused, DNS,
        timeouts: retryable, as is anything unexpected, so a connector bug
        never loses a delivery). Overrides handle their own exceptions and
        return ``super().classify(error)`` for the rest.
        """
        if isinstance(error, DeliveryError):
            return error
        if isinstance(error, NETWORK_ERRORS):
            return RetryableDeliveryError(
                DeliveryFailure(f"network.{type(error).__name__}", f"could not reach {self.title}: {error}")
            )
        return RetryableDeliveryError(unexpected_failure(error))

    def request_summary(self, delivery: Delivery) -> dict[str, Any]:
        """What the delivery log shows of the request; override to add provider fields. Must be masked."""
        return {"target": mask_text(delivery.target)}

    def close(self) -> None:
        """Release connections; override when the client holds any."""

    async def close_async(self) -> None:
        """Release connections `send_async` opened, on the event loop that opened them."""


@dataclass
class Registry:
    sources: dict[str, type[Source]] = field(default_factory=dict)
    destinations: dict[str, type[Destination]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # slug -> "module:Class (distribution)"

    def register(self, connector: type[Connector], origin: str) -> None:
        if connector.slug in self.origins:
            raise ConfigError(
                f"connector slug {connector.slug!r} is registered twice: by {self.origins[connector.slug]} "
                f"and by {origin}; uninstall one or rename its slug"
            )
        if issubclass(connector, Source):
            self.sources[connector.slug] = connector
        elif issubclass(connector, Destination):
            self.destinations[connector.slug] = connector
        else:
            raise ConfigError(f"{origin} is neither a Source nor a Destination subclass")
        self.origins[connector.slug] = origin


def load_registry() -> Registry:
    """Every connector installed in this environment, built-in or third-party."""
    registry = Registry()
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        distribution = entry_point.dist.name if entry_point.dist else "unknown distribution"
        registry.register(entry_point.load(), f"{entry_point.value} ({distribution})")
    return registry



@dataclass(frozen=True)
class CallbackRequest:
    """A provider's call back to the hub, as its receiving destination sees it.

    `url` is the public URL the provider called (what it signed), rebuilt from
    HUB_PUBLIC_BASE_URL rather than from the Host header a proxy may rewrite.
    `kind` is the last path segment: ``status`` for delivery receipts,
    ``inbound`` for messages recipients send back.
    """

    kind: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class ConsentSignal:
    """A recipient granted or revoked a channel, known by one of their identifiers.

    `message_id` is the provider's id of the message that said it (Twilio's MessageSid), so that a repeat of
    that message (a webhook retried, a captured one posted again) is not applied again.
    """

    identifier: Identifier
    channel: str
    granted: bool
    message_id: str | None = None


@dataclass
class CallbackResult:
    """What a callback means for the hub, and what to answer the provider."""

    statuses: list[ProviderStatus] = field(default_factory=list)
    consent: list[ConsentSignal] = field(default_factory=list)
    response_body: bytes = b""
    response_media_type: str = "text/plain"


class CallbackReceiver(ABC):
    """Mixin for destinations whose provider calls back (``POST /v1/callbacks/{destination_id}[/{kind}]``).

    `handle_callback` must verify the request first (raise `ForbiddenError`
    for a bad signature, `BadPayloadError` for an unusable body) and only then
    parse it; the hub applies the result in one transaction.
    """

    @abstractmethod
    def handle_callback(self, request: CallbackRequest) -> CallbackResult:
        """Verify, then parse, one callback."""

    def cannot_reach(self, report: ProviderStatus) -> bool:
        """Whether a report that failed its message says the channel cannot reach the person (a number that no
        longer exists, a landline, a block), so their rule's next channel is tried; a failure of the provider
        or of the sender (a queue overflow, an unregistered number) says nothing about them. None does unless
        a destination overrides this: it keeps a table of its provider's codes."""
        return False
