"""What Salesforce's refusals mean for a CRM update: retry, park (auth), or give up.

Salesforce's errorCode decides first and the HTTP status second; a login
refusal is judged by its OAuth error. simple-salesforce's exceptions keep an
answer's status and body, not its headers, so the destination's session notes
each answer (`noted`) for `retry_after` to keep the Retry-After of the one a
refusal was made of.

Errors: https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError

from connectors.destinations import retry_after
from hub.clock import utcnow
from hub.errors import (
    AuthDeliveryError,
    DeliveryError,
    DeliveryFailure,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from hub.retry import outcome_for_status, parse_retry_after

# A Lead a sales rep converted is read-only, and so is every write that references it (a Task's WhoId). The
# destination follows the conversion to its Contact; the code only reaches `classified` when the Lead names none.
CONVERTED_LEAD = "CANNOT_UPDATE_CONVERTED_LEAD"
# Salesforce's errorCode, not the HTTP status, says whether trying again can
# help: REQUEST_LIMIT_EXCEEDED is a 403 that passes once the rolling 24-hour
# API allowance frees up, while most 400s name a mapping mistake.
SALESFORCE_CODE_OUTCOMES: Mapping[str, type[DeliveryError]] = {
    "REQUEST_LIMIT_EXCEEDED": RetryableDeliveryError,
    "SERVER_UNAVAILABLE": RetryableDeliveryError,
    "UNABLE_TO_LOCK_ROW": RetryableDeliveryError,  # another transaction holds the record
    "INVALID_SESSION_ID": AuthDeliveryError,  # still refused right after a fresh login
    "INSUFFICIENT_ACCESS_OR_READONLY": AuthDeliveryError,
    "API_DISABLED_FOR_ORG": AuthDeliveryError,
    "INVALID_FIELD": PermanentDeliveryError,
    "MALFORMED_ID": PermanentDeliveryError,
    "INVALID_CROSS_REFERENCE_KEY": PermanentDeliveryError,
    "REQUIRED_FIELD_MISSING": PermanentDeliveryError,
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": PermanentDeliveryError,
    "STRING_TOO_LONG": PermanentDeliveryError,
    "NOT_FOUND": PermanentDeliveryError,
    CONVERTED_LEAD: PermanentDeliveryError,
}
# A unique field's value already taken. Two sends for one new person both find no record keyed by the profile id
# and both insert: Salesforce refuses the later so, naming the external-id field. Trying again updates the
# winner's record; a duplicate of any other unique field is the data's, and stays permanent.
DUPLICATE_VALUE = "DUPLICATE_VALUE"
# Login refusals that say Salesforce, not our credentials, is at fault. Its token endpoint answers a passing
# fault with HTTP 500 {"error": "unknown_error", "error_description": "retry your request"}, and
# simple-salesforce passes on the error code without the status.
RETRYABLE_LOGIN_ERRORS = frozenset({"unknown_error", "server_error", "temporarily_unavailable"})
RETRY_YOUR_REQUEST = "retry your request"
# Salesforce answers 404 NOT_FOUND both for no such record and for an external-id field the integration user
# cannot see; only the message tells them apart. The first means erased, the second a setup to fix.
NO_SUCH_FIELD = "Provided external ID field does not exist"
# A deleted record waits in the Recycle Bin for 15 days, and Salesforce answers a call naming its id with 404
# ENTITY_IS_DELETED "entity is deleted" instead of NOT_FOUND: for an erasure, it is gone all the same.
ENTITY_IS_DELETED = "ENTITY_IS_DELETED"
# A user an admin deactivated (a rep who left) keeps owning their records, but Salesforce gives them nothing new:
# a Task for them is refused with 400 "operation performed with inactive user [005...] as owner of task".
INACTIVE_OWNER = "INACTIVE_OWNER_OR_USER"


def classified(error: Exception, external_id_field: str) -> DeliveryError | None:
    """simple-salesforce's exception as our error, by Salesforce errorCode first, HTTP status second; None for
    anything else. `external_id_field` keys the profile's record: a DUPLICATE_VALUE on it is a lost race."""
    if isinstance(error, SalesforceAuthenticationFailed):
        outcome = RetryableDeliveryError if _login_may_pass(error) else AuthDeliveryError
        return outcome(DeliveryFailure(
            error_class=f"salesforce.login.{error.code}", message=f"Salesforce login refused: {error.auth_message}",
            provider_code=str(error.code), retry_after=_retry_after_of(error),
        ))
    if isinstance(error, SalesforceError):
        code = error_code(error)
        detail = error.content[0].get("message") if code else error.content
        return _outcome(error, code, external_id_field)(DeliveryFailure(
            error_class=f"salesforce.{code or error.status}",
            message=f"Salesforce {error.status} {code}: {detail}",
            provider_code=code,
            retry_after=_retry_after_of(error),
            response_summary={"status": error.status, "errorCode": code},
        ))
    return None


def _outcome(error: SalesforceError, code: str | None, external_id_field: str) -> type[DeliveryError]:
    """By errorCode, then HTTP status; a DUPLICATE_VALUE on the profile's external-id field is a lost insert
    race, not bad data. The destination's carry-over handles its own, so one that gets here came from the
    record's upsert."""
    if code == DUPLICATE_VALUE and _names_field(error, external_id_field):
        return RetryableDeliveryError
    return SALESFORCE_CODE_OUTCOMES.get(code or "") or outcome_for_status(error.status)


def _login_may_pass(error: SalesforceAuthenticationFailed) -> bool:
    """A login refusal that says Salesforce is at fault for now, so trying later may pass."""
    if isinstance(error.code, int):  # a login endpoint that is down answers non-JSON; the code is then its status
        return error.code >= 500
    return error.code in RETRYABLE_LOGIN_ERRORS or RETRY_YOUR_REQUEST in error.auth_message.lower()


def _names_field(exc: SalesforceError, field: str) -> bool:
    """Whether a REST error is about `field`: in its ``fields``, or named in its message (Salesforce often leaves
    ``fields`` empty on a DUPLICATE_VALUE: "duplicate value found: <field> duplicates value on record with id")."""
    error = exc.content[0]
    return field in (error.get("fields") or ()) or field in str(error.get("message")).split()


def noted(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Session response hook: each answer's headers, for `retry_after.kept` (simple-salesforce raises right
    after the answer it reads a refusal from, so the last answer is that one)."""
    retry_after.note(response.headers)


def _retry_after_of(error: SalesforceError) -> float | None:
    """Seconds the answer behind `error` asked us to wait (Retry-After), if it did."""
    return parse_retry_after(retry_after.of(error), utcnow())


def no_such_record(exc: SalesforceError) -> bool:
    """A refusal that says the record does not exist or is in the Recycle Bin, not that the external-id field is
    out of reach."""
    code = error_code(exc)
    if code == ENTITY_IS_DELETED:
        return True
    return code == "NOT_FOUND" and NO_SUCH_FIELD not in str(exc.content[0].get("message"))


def error_code(exc: SalesforceError) -> str | None:
    """The first errorCode of a REST error body: Salesforce answers a list of {message, errorCode, fields}."""
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode")
    return None
