"""SMS through Twilio's Messages API, with the official `twilio` library.

API: https://www.twilio.com/docs/messaging/api/message-resource
Errors: https://www.twilio.com/docs/api/errors
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.rest import Client

from connectors.base import CallbackReceiver, CallbackRequest, CallbackResult, Destination
from connectors.destinations import retry_after, twilio_callbacks
from connectors.destinations.twilio_transport import AsyncPooledHttpClient, BaseUrlHttpClient, PooledHttpClient
from hub.clock import utcnow
from hub.errors import (
    AuthDeliveryError,
    BadPayloadError,
    DeliveryError,
    DeliveryFailure,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from hub.model import Delivery, ProviderStatus, SendResult
from hub.pii import mask_phone
from hub.retry import outcome_for_status, parse_retry_after

# Twilio answers most refusals with HTTP 400 and a numeric code; the code, not
# the status, says whether trying again can ever help. A refusal of the hub's own
# setup (credentials, HUB_TWILIO_FROM_NUMBER, the StatusCallback URL) is the same on
# every message: auth, so each SMS is parked (dead-lettered) and replayed once it is fixed.
TWILIO_CODE_OUTCOMES: Mapping[int, type[DeliveryError]] = {
    20003: AuthDeliveryError,  # authentication failed
    20429: RetryableDeliveryError,  # too many requests
    21211: PermanentDeliveryError,  # invalid 'To' number
    21212: AuthDeliveryError,  # the 'From' is not a valid phone number, sender ID or short code
    21408: PermanentDeliveryError,  # no permission to send to that region: the account's Geo Permissions
    21602: PermanentDeliveryError,  # message body required
    21603: AuthDeliveryError,  # no valid 'From' (the hub always sends one: it is not a sender of the account)
    21604: PermanentDeliveryError,  # 'To' required
    21606: PermanentDeliveryError,  # 'From' is not a valid, SMS-capable number of the account
    21609: AuthDeliveryError,  # invalid StatusCallback URL: the hub's own (HUB_PUBLIC_BASE_URL), on every message
    21610: PermanentDeliveryError,  # recipient replied STOP: unsubscribed (also revokes SMS consent)
    21611: RetryableDeliveryError,  # the 'From' number's queue of unsent messages is full: it drains
    21612: PermanentDeliveryError,  # 'To' unreachable from this 'From'
    21614: PermanentDeliveryError,  # 'To' is not a mobile number
    21659: AuthDeliveryError,  # the 'From' is not a Twilio number (or still porting)
    21660: AuthDeliveryError,  # the 'From' belongs to another account than the credentials'
}
# The library's refusals, whose answers' Retry-After `retry_after.kept` keeps for `classify`.
REFUSALS = (TwilioRestException, TwilioServiceException)


class TwilioSmsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr
    from_number: str = Field(pattern=r"^\+[1-9]\d{6,14}$", description="Sender number in E.164.")
    api_base_url: str | None = Field(None, description="Twilio-compatible endpoint instead of api.twilio.com.")
    timeout_seconds: float = Field(10.0, gt=0)
    status_callback_url: str | None = Field(
        None, description="Where Twilio posts status updates: the hub's /v1/callbacks/{destination_id}."
    )


class TwilioSmsDestination(CallbackReceiver, Destination):
    slug = "twilio_sms"
    title = "Twilio Programmable Messaging (SMS)"
    docs_url = "https://www.twilio.com/docs/messaging/api/message-resource"
    channel = "sms"
    message_parts = ("body",)  # Twilio refuses an empty one (21602)
    # Routing skips a longer one, so its fallback is tried: Twilio refuses it for good (21617), in characters
    # (https://www.twilio.com/docs/api/errors/21617).
    part_limits: ClassVar[Mapping[str, int]] = {"body": 1600}
    Config = TwilioSmsConfig

    def __init__(self, destination_id: str, config: BaseModel) -> None:
        super().__init__(destination_id, config)
        assert isinstance(config, TwilioSmsConfig)
        self.settings = config
        if config.api_base_url:
            http_client: PooledHttpClient = BaseUrlHttpClient(config.api_base_url, timeout=config.timeout_seconds)
        else:
            http_client = PooledHttpClient(timeout=config.timeout_seconds)
        self.client = Client(config.account_sid, config.auth_token.get_secret_value(), http_client=http_client)
        # The client imports its REST API's modules at first use: 35 ms on an idle box, 100 ms and more
        # under load. Resolved here, at startup, rather than at the first SMS on the delivery engine's loop,
        # which that import would stall with every send in flight.
        self._messages = self.client.messages
        self._async_client: Client | None = None  # `send_async`'s, built on the delivery engine's loop

    def request_summary(self, delivery: Delivery) -> dict[str, Any]:
        return {"to": mask_phone(delivery.target), "from": self.settings.from_number, "body_chars": len(delivery.content["body"])}

    def send(self, delivery: Delivery) -> SendResult:
        with retry_after.kept(*REFUSALS):
            return _sent(self._messages.create(**self._message(delivery)))

    async def send_async(self, delivery: Delivery) -> SendResult:
        """The library's own async call (aiohttp), on the delivery engine's loop instead of a worker thread."""
        if self._async_client is None:
            http_client = AsyncPooledHttpClient(self.settings.timeout_seconds, self.settings.api_base_url)
            self._async_client = Client(
                self.settings.account_sid, self.settings.auth_token.get_secret_value(), http_client=http_client
            )
        with retry_after.kept(*REFUSALS):
            return _sent(await self._async_client.messages.create_async(**self._message(delivery)))

    def _message(self, delivery: Delivery) -> dict[str, Any]:
        return {"to": delivery.target, "from_": self.settings.from_number, "body": delivery.content["body"],
                "status_callback": self.settings.status_callback_url}

    def classify(self, error: Exception) -> DeliveryError:
        if isinstance(error, REFUSALS):
            return _as_delivery_error(error, retry_after.of(error))
        return super().classify(error)

    def handle_callback(self, request: CallbackRequest) -> CallbackResult:
        form = twilio_callbacks.verified_form(request, self.settings.auth_token.get_secret_value())
        if request.kind == "status":
            return CallbackResult(statuses=[twilio_callbacks.status_update(form)])
        if request.kind == "inbound":
            # Twilio answers opt-out keywords itself; the empty TwiML adds no reply of ours.
            signal = twilio_callbacks.consent_change(form)
            return CallbackResult(
                consent=[signal] if signal else [],
                response_body=twilio_callbacks.EMPTY_TWIML,
                response_media_type="text/xml",
            )
        raise BadPayloadError(f"callback kind {request.kind!r}: Twilio destinations take 'status' or 'inbound'")

    def cannot_reach(self, report: ProviderStatus) -> bool:
        return twilio_callbacks.cannot_reach(report)

    def close(self) -> None:
        session = getattr(self.client.http_client, "session", None)
        if session is not None:
            session.close()

    async def close_async(self) -> None:
        if self._async_client is not None:
            await self._async_client.http_client.close()  # type: ignore[attr-defined]
            self._async_client = None


def _sent(message: Any) -> SendResult:
    return SendResult(
        status=message.status or "queued",
        provider_message_id=message.sid,
        response_summary={"sid": message.sid, "status": message.status, "segments": message.num_segments},
    )


def _as_delivery_error(
    exc: TwilioRestException | TwilioServiceException, retry_after: str | None = None
) -> DeliveryError:
    """Twilio's two error shapes (classic `code`/`message`, and RFC 9457 problem details) as our errors.

    `retry_after` is the response's Retry-After header (seconds or an HTTP date), if any.
    """
    text = exc.msg if isinstance(exc, TwilioRestException) else (exc.detail or exc.title)
    outcome = TWILIO_CODE_OUTCOMES.get(exc.code or 0) or outcome_for_status(exc.status)
    error_class = f"twilio.{exc.code or exc.status}"
    return outcome(
        DeliveryFailure(
            error_class=error_class,
            message=f"Twilio {exc.status} error {exc.code}: {text}",
            provider_code=str(exc.code) if exc.code else None,
            response_summary={"status": exc.status, "code": exc.code},
            retry_after=parse_retry_after(retry_after, utcnow()),
            revokes_consent=str(exc.code) == twilio_callbacks.UNSUBSCRIBED_ERROR,
            unreachable=error_class in twilio_callbacks.UNREACHABLE_ERRORS,  # a landline: the rule's next channel may
        )
    )
