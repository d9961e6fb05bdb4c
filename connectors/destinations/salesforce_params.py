"""What the Salesforce destination is set up with and what a `crm` action may ask of it, checked before a send.

`SalesforceConfig` is the connected app and where records go; `CrmParams`
the ``params`` of a ``crm`` action in triggers.yaml, checked when the rules
load (`SalesforceDestination.check_params`) and again as each update is
planned; `CrmErasure` the record an erasure names; `CrmUpdate` what one
delivery writes. `connectors.destinations.salesforce` does the writing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator,
)
from pydantic_core import PydanticCustomError

from connectors.destinations.json_form import json_problems

# Login and instance hosts alike: login.salesforce.com, acme.my.salesforce.com,
# acme--uat.sandbox.my.salesforce.com.
SALESFORCE_ORIGIN = re.compile(r"^https://(?:[A-Za-z0-9-]+\.)+salesforce\.com(?::\d+)?(?=[/?]|$)")
API_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"  # a Salesforce field's API name, as it appears in REST paths
_API_NAME = re.compile(API_NAME)
# Pydantic's mark on the location of a dict key's own error, left out where a problem is named.
_KEY_MARK = "[key]"


class SalesforceConfig(BaseModel):
    """A connected app's OAuth credentials and where the hub writes.

    With `username` and `password` the hub logs in with the username-password
    flow; without them, with the client-credentials flow, which Salesforce
    only serves on a My Domain (`domain` such as ``acme.my``).
    """

    model_config = ConfigDict(extra="forbid")
    domain: str = Field("login", pattern=r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$",
                        description="login, test, or the My Domain prefix such as acme.my")
    consumer_key: str = Field(min_length=1)
    consumer_secret: SecretStr
    username: str | None = None
    password: SecretStr | None = None
    api_version: str = Field("59.0", pattern=r"^\d+\.\d$")
    sobject: Literal["Lead", "Contact"] = "Lead"
    external_id_field: str = Field("Touchhub_Profile_Id__c", pattern=API_NAME,
                                   description="External-id field holding the profile id.")
    intent_field: str = Field("Touchhub_Intent__c", pattern=API_NAME,
                              description="Custom field the decision's intent is written to.")
    task_external_id_field: str = Field("Touchhub_Delivery_Id__c", pattern=API_NAME,
                                        description="External-id field on Task.")
    api_base_url: str | None = Field(None, description="Salesforce-compatible endpoint instead of *.salesforce.com.")
    timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _one_login_flow(self) -> "SalesforceConfig":
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password (username-password flow) or neither (client credentials)")
        if self.username is None and self.domain in ("login", "test"):
            raise ValueError("the client-credentials flow needs a My Domain such as acme.my, not login/test")
        return self


class TaskParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=255)
    priority: Literal["High", "Normal", "Low"] = "Normal"
    status: str = "Not Started"


def _api_name(name: str) -> str:
    """`name` if Salesforce could have a field so named. The label ops see in Salesforce ("First Name") is no
    API name, and Salesforce refuses such a key on every update of the rule (INVALID_FIELD, or JSON_PARSER_ERROR
    for an empty one), so it is refused when the rules load."""
    if not _API_NAME.fullmatch(name):
        raise PydanticCustomError("salesforce_api_name", "not a Salesforce field API name (a letter, then letters, "
                                  "digits and underscores, such as FirstName or Touchhub_Score__c: the field's API "
                                  "Name in Setup, not its label)")
    return name


FieldApiName = Annotated[str, AfterValidator(_api_name)]


class CrmParams(BaseModel):
    """The ``params`` of a ``crm`` action in triggers.yaml."""

    model_config = ConfigDict(extra="forbid")
    sobject: Literal["Lead", "Contact"] | None = None
    fields: dict[FieldApiName, str | int | float | bool | None] = Field(default_factory=dict)
    intent: str | None = None
    task: TaskParams | None = None

    @field_validator("fields")
    @classmethod
    def _sendable(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """Each value as JSON can write it: simple-salesforce would send YAML's `.nan` or `.inf` as ``NaN`` or
        ``Infinity``, which Salesforce refuses on every update of the rule."""
        problems = json_problems(fields, "")
        if problems:
            raise ValueError("; ".join(problems))
        return fields


class CrmErasure(BaseModel):
    """What an erasure delivery's content names under `ERASURE`: the record to delete. Its type only when the
    update that wrote it named one (`params.sobject`); else this destination's `sobject`, the type such an
    update wrote here, as the node that planned the erasure may not have this one's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sobject: Literal["Lead", "Contact"] | None = None
    external_id: str = Field(min_length=1)


@dataclass(frozen=True)
class CrmUpdate:
    """What one delivery writes: the person's record and, optionally, a Task for its owner."""

    sobject: str
    external_id: str
    fields: dict[str, Any]
    task: dict[str, Any] | None
    task_key: str
    previous_keys: tuple[str, ...] = ()  # ids of profiles merged into this one that may key its record


def problems(where: str, exc: ValidationError) -> list[str]:
    """Each problem as `<where>.<key>: <reason>` (`params.task.subject: ...`; a map key's own problem is named by
    the key: `params.fields.First Name: ...`)."""
    return [f"{where}.{'.'.join(str(part) for part in e['loc'] if part != _KEY_MARK)}: {e['msg']}"
            for e in exc.errors()]
