"""The Destination contract: `send` lets vendor errors out, `classify` judges them, `deliver` joins the two.

The judgement of every documented vendor error is tested here without a
network round trip; the end-to-end tests (fake providers) show the engine
acting on it.
"""

from __future__ import annotations

import smtplib
from datetime import datetime, timezone

import httpx
import pytest
import requests
from pydantic import BaseModel
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceMalformedRequest, SalesforceRefusedRequest
from twilio.base.exceptions import TwilioRestException

from connectors.base import Destination
from connectors.destinations.email_smtp import EmailSmtpDestination
from connectors.destinations.salesforce import SalesforceDestination
from connectors.destinations.twilio_sms import TwilioSmsDestination
from hub.errors import AuthDeliveryError, DeliveryError, DeliveryFailure, PermanentDeliveryError, RetryableDeliveryError
from hub.model import Delivery, SendResult

DELIVERY = Delivery("d-1", "pager", "sms", "+14155550100", {"body": "Hi"}, 0, datetime(2026, 1, 1, tzinfo=timezone.utc))


class PagerConfig(BaseModel):
    pass


class PagerDestination(Destination):
    """A destination whose client raises LookupError for an unknown pager: a permanent refusal."""

    slug = "pager"
    title = "Pager"
    channel = "sms"
    Config = PagerConfig

    def __init__(self, raises: Exception | None) -> None:
        super().__init__("pager", PagerConfig())
        self.raises = raises

    def send(self, delivery: Delivery) -> SendResult:
        if self.raises is not None:
            raise self.raises
        return SendResult("sent", "P-1")

    def classify(self, error: Exception) -> DeliveryError:
        if isinstance(error, LookupError):
            return PermanentDeliveryError(DeliveryFailure("pager.unknown", str(error)))
        return super().classify(error)


@pytest.mark.parametrize(
    ("raised", "outcome", "error_class"),
    [
        (LookupError("no pager 42"), PermanentDeliveryError, "pager.unknown"),
        (requests.ConnectionError("refused"), RetryableDeliveryError, "network.ConnectionError"),
        (httpx.ConnectTimeout("slow"), RetryableDeliveryError, "network.ConnectTimeout"),
        (ConnectionRefusedError(111, "refused"), RetryableDeliveryError, "network.ConnectionRefusedError"),
        (ValueError("a connector bug"), RetryableDeliveryError, "unexpected.ValueError"),
    ],
)
def test_deliver_raises_what_classify_makes_of_the_error(raised: Exception, outcome: type, error_class: str) -> None:
    with pytest.raises(DeliveryError) as failed:
        PagerDestination(raised).deliver(DELIVERY)
    assert type(failed.value) is outcome
    assert failed.value.failure.error_class == error_class
    assert failed.value.__cause__ is raised


def test_a_delivery_error_raised_by_send_is_kept_as_it_is() -> None:
    own = AuthDeliveryError(DeliveryFailure("pager.key", "key revoked"))
    with pytest.raises(AuthDeliveryError) as failed:
        PagerDestination(own).deliver(DELIVERY)
    assert failed.value is own
    assert PagerDestination(None).deliver(DELIVERY).provider_message_id == "P-1"


def twilio() -> TwilioSmsDestination:
    config = TwilioSmsDestination.validate_config("test", {"account_sid": "AC" + "0" * 32, "auth_token": "t", "from_number": "+15005550006"})
    return TwilioSmsDestination("twilio_sms", config)


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (400, 21211, PermanentDeliveryError),  # invalid 'To' number
        (400, 21610, PermanentDeliveryError),  # recipient replied STOP
        (401, 20003, AuthDeliveryError),  # authentication failed
        (429, 20429, RetryableDeliveryError),  # too many requests
        (503, None, RetryableDeliveryError),
    ],
)
def test_twilio_errors_are_judged_by_code_then_status(status: int, code: int | None, outcome: type) -> None:
    error = twilio().classify(TwilioRestException(status, "/2010-04-01/Accounts/AC/Messages.json", "refused", code=code))
    assert type(error) is outcome
    assert error.failure.error_class == f"twilio.{code or status}"
    assert error.failure.revokes_consent is (code == 21610)


def salesforce() -> SalesforceDestination:
    config = SalesforceDestination.validate_config("test", {
        "consumer_key": "key", "consumer_secret": "secret", "username": "u@example.com", "password": "p",
    })
    return SalesforceDestination("salesforce", config)


@pytest.mark.parametrize(
    ("error", "outcome", "error_class"),
    [
        (SalesforceMalformedRequest("url", 400, "Lead", [{"errorCode": "INVALID_FIELD", "message": "No such column"}]),
         PermanentDeliveryError, "salesforce.INVALID_FIELD"),
        (SalesforceRefusedRequest("url", 403, "Lead", [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "limit"}]),
         RetryableDeliveryError, "salesforce.REQUEST_LIMIT_EXCEEDED"),
        (SalesforceAuthenticationFailed("invalid_grant", "authentication failure"), AuthDeliveryError, "salesforce.login.invalid_grant"),
        (SalesforceAuthenticationFailed(503, "Service Unavailable"), RetryableDeliveryError, "salesforce.login.503"),
    ],
)
def test_salesforce_errors_are_judged_by_error_code_then_status(error: Exception, outcome: type, error_class: str) -> None:
    judged = salesforce().classify(error)
    assert (type(judged), judged.failure.error_class) == (outcome, error_class)


def email() -> EmailSmtpDestination:
    config = EmailSmtpDestination.validate_config("test", {
        "host": "127.0.0.1", "port": 25, "tls": "none", "from_address": "hub@example.com",
        "unsubscribe_url": "https://hub.example.com/v1/unsubscribe", "unsubscribe_secret": "s",
    })
    return EmailSmtpDestination("email_smtp", config)


@pytest.mark.parametrize(
    ("error", "outcome", "error_class"),
    [
        (smtplib.SMTPRecipientsRefused({"jo@example.com": (550, b"5.1.1 no such user")}), PermanentDeliveryError, "smtp.550"),
        (smtplib.SMTPSenderRefused(451, b"4.7.1 try again later", "hub@example.com"), RetryableDeliveryError, "smtp.451"),
        (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), AuthDeliveryError, "smtp.535"),
        (smtplib.SMTPServerDisconnected("gone"), RetryableDeliveryError, "smtp.SMTPServerDisconnected"),
        (ConnectionRefusedError(111, "refused"), RetryableDeliveryError, "network.ConnectionRefusedError"),
    ],
)
def test_smtp_errors_are_judged_by_reply_code(error: Exception, outcome: type, error_class: str) -> None:
    judged = email().classify(error)
    assert (type(judged), judged.failure.error_class) == (outcome, error_class)
