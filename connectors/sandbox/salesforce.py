"""A fake of Salesforce's OAuth token endpoint and sObject REST API that `simple-salesforce` talks to.

The library reaches it through `connectors.destinations.requests_transport.VendorAdapter`
mounted on the session it is given, so login, URL building and error parsing
stay the library's own. The fake checks what Salesforce checks before writing
a record, answers in Salesforce's JSON shapes, records every request and can
be told to fail the next ones.

Salesforce behaviour reproduced here
(https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm,
https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_username_password_flow.htm):

* Login is OAuth 2.0 at ``/services/oauth2/token``: the username-password
  grant (form fields) or the client-credentials grant (Basic auth). Failures
  are HTTP 400 ``{"error", "error_description"}``; success names the
  ``instance_url`` every later call goes to.
* API errors are a JSON *list* of ``{"message", "errorCode", "fields"}``. An
  expired or revoked session is 401 ``INVALID_SESSION_ID``; the org's daily
  API limit is 403 ``REQUEST_LIMIT_EXCEEDED``.
* Upsert is ``PATCH /sobjects/{type}/{externalIdField}/{value}``: 201 with
  ``created: true`` for a new record, 200 with ``created: false`` for an
  update (API v46.0 and later).
* Update is ``PATCH /sobjects/{type}/{id}``: 204 and no body. External-id
  fields here are unique, so a value another record of the type already
  holds is refused with 400 ``DUPLICATE_VALUE``. So is an upsert that loses
  a race: two that insert one new external-id value at once (`lose_next_race`).
* Delete is ``DELETE /sobjects/{type}/{externalIdField}/{value}`` or
  ``DELETE /sobjects/{type}/{id}``: 204 and no body; a value no record holds
  is 404 ``NOT_FOUND``. A Lead's or Contact's activities (Tasks whose
  ``WhoId`` is the record) go with it.
* A deleted record waits in the Recycle Bin (15 days in Salesforce; here
  until `reset`): by external id it is found no more (404 ``NOT_FOUND``),
  but a read, update or delete by its id is 404 ``ENTITY_IS_DELETED``
  "entity is deleted".
* Record ids are 18 characters whose first three name the object type
  (``00Q`` Lead, ``003`` Contact, ``00T`` Task, ``005`` User, ``00G`` a
  queue). A queue may own a Lead (`assign_to_queue`), never a Task.
* A user an admin deactivated (`deactivate_user`; a rep who left) keeps
  owning their records, but no write may make them an owner: 400
  ``INACTIVE_OWNER_OR_USER`` "operation performed with inactive user [id]
  as owner of task". The integration user (`owner_id`) owns every new
  record; `add_user` makes a rep, `assign_owner` gives them a record.
* A converted Lead (`convert_lead`) reads ``IsConverted: true`` and names
  its Contact in ``ConvertedContactId``; every Lead reads ``IsConverted``
  (false until converted). The Lead's activities move to the Contact, and
  deleting the Lead leaves the Contact. Salesforce refuses to write a converted Lead, by
  upsert or update, and a Task whose ``WhoId`` is one: 400
  ``CANNOT_UPDATE_CONVERTED_LEAD`` "cannot reference converted lead".
* ``GET /sobjects/{type}/describe`` names the type's fields.
* A login may fail for a moment: HTTP 500 ``unknown_error`` "retry your
  request" (`fail_next_login`).

Injected faults (`fail_next`) apply to ``/services/data`` calls only, never to
login; `fail_next_login` fails logins. This module keeps the records;
`connectors.sandbox.salesforce_api` serves them over HTTP.
"""

from __future__ import annotations

import copy
import re
import secrets
import string
from collections import deque
from dataclasses import dataclass
from typing import Any

from connectors.sandbox.recording import Fault, IssuedTokens, RecordingFake
from hub.clock import utcnow

SANDBOX_CONSUMER_KEY = "sandbox-consumer-key"
SANDBOX_CONSUMER_SECRET = "sandbox-consumer-secret"
SANDBOX_USERNAME = "integration@touchhub.example"
SANDBOX_PASSWORD = "sandbox-password"
SANDBOX_INSTANCE = "touchhub-sandbox.my.salesforce.com"

ID_PREFIXES = {"Lead": "00Q", "Contact": "003", "Task": "00T", "User": "005", "Account": "001", "Group": "00G"}
STANDARD_FIELDS = {
    "Lead": {"FirstName", "LastName", "Company", "Email", "Phone", "MobilePhone", "LeadSource", "Status",
             "Description", "Title", "OwnerId"},
    "Contact": {"FirstName", "LastName", "Email", "Phone", "MobilePhone", "LeadSource", "Description", "Title",
                "OwnerId", "AccountId"},
    "Task": {"Subject", "Description", "Status", "Priority", "ActivityDate", "WhoId", "OwnerId", "Type"},
}
REQUIRED_ON_CREATE = {"Lead": ("LastName", "Company"), "Contact": ("LastName",), "Task": ()}
# Reference fields and the object types their ids may point at.
REFERENCES = {"OwnerId": ("User",), "WhoId": ("Lead", "Contact"), "AccountId": ("Account",)}
# What a Lead reads once converted; Salesforce sets these, and no API call may write them.
CONVERSION_FIELDS = ("IsConverted", "ConvertedContactId", "ConvertedDate")
QUEUE_OWNED = {"Lead"}  # object types a queue (a Group) may own; never an activity such as a Task
RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class CustomField:
    sobject: str
    name: str
    external_id: bool = False


DEFAULT_CUSTOM_FIELDS = (
    CustomField("Lead", "Touchhub_Profile_Id__c", external_id=True),
    CustomField("Lead", "Touchhub_Intent__c"),
    CustomField("Contact", "Touchhub_Profile_Id__c", external_id=True),
    CustomField("Contact", "Touchhub_Intent__c"),
    CustomField("Task", "Touchhub_Delivery_Id__c", external_id=True),
)


class FakeSalesforce(RecordingFake):
    """One fake org: its connected app, integration user, live sessions and records.

    Call `expire_sessions` to revoke every issued access token, as an admin or
    a session timeout would; the next API call gets 401 ``INVALID_SESSION_ID``.
    """

    def __init__(self, custom_fields: tuple[CustomField, ...] = DEFAULT_CUSTOM_FIELDS) -> None:
        super().__init__()
        self.consumer_key = SANDBOX_CONSUMER_KEY
        self.consumer_secret = SANDBOX_CONSUMER_SECRET
        self.username = SANDBOX_USERNAME
        self.password = SANDBOX_PASSWORD
        self.instance_url = f"https://{SANDBOX_INSTANCE}"
        self.fields = {sobject: set(names) for sobject, names in STANDARD_FIELDS.items()}
        self.external_ids: dict[str, set[str]] = {sobject: set() for sobject in STANDARD_FIELDS}
        for custom in custom_fields:
            self.fields[custom.sobject].add(custom.name)
            if custom.external_id:
                self.external_ids[custom.sobject].add(custom.name)
        self.owner_id = new_record_id("User")  # the integration user
        self.queue_id = new_record_id("Group")
        self._users: dict[str, bool] = {self.owner_id: True}  # id -> active
        self._login_faults: deque[Fault] = deque()
        self._races = 0
        self.sessions = IssuedTokens(lambda: "00D" + secrets.token_hex(8) + "!" + secrets.token_urlsafe(48))
        self._records: dict[str, dict[str, dict[str, Any]]] = {sobject: {} for sobject in STANDARD_FIELDS}
        self._recycle_bin: dict[str, dict[str, Any]] = {}  # deleted records by id

    def records(self, sobject: str) -> list[dict[str, Any]]:
        """Records of one object type, oldest first, as a GET would return them."""
        with self._lock:
            return copy.deepcopy(list(self._records[sobject].values()))

    @property
    def logins(self) -> int:
        return self.sessions.issued

    def state(self) -> dict[str, Any]:
        with self._lock:
            records = copy.deepcopy(self._records)
        return {"logins": self.logins, "records": records}

    def expire_sessions(self) -> None:
        self.sessions.revoke_all()

    def fail_next_login(self, status: int, error: str, description: str, **fields: Any) -> None:
        """Answer the next logins with this OAuth error (`Fault`'s `times`, `retry_after`, `delay_seconds` apply),
        such as the 500 ``unknown_error`` "retry your request" Salesforce's token endpoint gives on a passing fault."""
        fault = Fault(status=status, code=error, message=description, **fields)
        with self._lock:
            self._login_faults.extend([fault] * fault.times)

    def lose_next_race(self) -> None:
        """Make the next upsert that would insert lose a race: another request inserts the same external id
        first, and this one is refused with 400 ``DUPLICATE_VALUE``, as when two sends create one person at once."""
        with self._lock:
            self._races += 1

    def assign_to_queue(self, record_id: str) -> None:
        """Give a Lead to the org's queue, as a Lead assignment rule does."""
        self.assign_owner("Lead", record_id, self.queue_id)

    def assign_owner(self, sobject: str, record_id: str, owner_id: str) -> None:
        """Give a record to a user or queue, as a rep or an assignment rule does in Salesforce's UI."""
        self._write(sobject, record_id, {"OwnerId": owner_id})

    def add_user(self) -> str:
        """A new active user, such as a sales rep who may own records; returns their id."""
        user_id = new_record_id("User")
        with self._lock:
            self._users[user_id] = True
        return user_id

    def deactivate_user(self, user_id: str) -> None:
        """Deactivate a user as an admin does when a rep leaves: their records stay theirs."""
        with self._lock:
            self._users[user_id] = False

    def convert_lead(self, lead_id: str) -> str:
        """Convert a Lead as a sales rep does: a new Contact gets the Lead's standard fields a Contact has (the
        org maps no custom field here) and its activities, and the Lead, read-only from then on, names it.
        Returns the Contact's id."""
        with self._lock:
            lead = self._records["Lead"][lead_id]
            carried = {name: value for name, value in lead.items() if name in STANDARD_FIELDS["Contact"]}
        contact = self._write("Contact", new_record_id("Contact"), carried)
        self._write("Lead", lead_id, {"IsConverted": True, "ConvertedContactId": contact["Id"],
                                      "ConvertedDate": utcnow().date().isoformat(), "Status": "Closed - Converted"})
        with self._lock:
            for task in self._records["Task"].values():
                if task.get("WhoId") == lead_id:
                    task["WhoId"] = contact["Id"]
        return contact["Id"]

    def _converted(self, record_id: str) -> bool:
        """Whether `record_id` is a converted Lead, which Salesforce lets no one write or reference."""
        lead = self._find("Lead", "Id", record_id)
        return lead is not None and bool(lead.get("IsConverted"))

    def reset(self) -> None:
        super().reset()
        self.sessions.reset()
        with self._lock:
            self._login_faults.clear()
            self._races = 0
            for records in self._records.values():
                records.clear()
            self._recycle_bin.clear()
            self._users = {self.owner_id: True}

    def _next_login_fault(self) -> Fault | None:
        with self._lock:
            return self._login_faults.popleft() if self._login_faults else None

    def _loses_race(self) -> bool:
        with self._lock:
            if self._races == 0:
                return False
            self._races -= 1
            return True

    def _find(self, sobject: str, field: str, value: str) -> dict[str, Any] | None:
        with self._lock:
            return next((r for r in self._records[sobject].values() if r.get(field) == value), None)

    def _exists(self, record_id: str) -> bool:
        with self._lock:
            return any(record_id[:15] in {i[:15] for i in ids} for ids in (*self._records.values(), self._users)) or (
                record_id[:15] == self.queue_id[:15]
            )

    def _recycled(self, record_id: str) -> bool:
        """Whether `record_id` was deleted and waits in the Recycle Bin, which Salesforce answers by id with
        ENTITY_IS_DELETED rather than NOT_FOUND."""
        with self._lock:
            return record_id in self._recycle_bin

    def _inactive_user(self, record_id: str) -> bool:
        """Whether `record_id` names a deactivated user, whom Salesforce lets no write make an owner."""
        with self._lock:
            return self._users.get(record_id) is False

    def _write(self, sobject: str, record_id: str, values: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            record = self._records[sobject].setdefault(record_id, self._new_record(sobject, record_id))
            record.update(values)
            record["LastModifiedDate"] = utcnow().strftime("%Y-%m-%dT%H:%M:%S.000+0000")
            return copy.deepcopy(record)

    def _new_record(self, sobject: str, record_id: str) -> dict[str, Any]:
        record: dict[str, Any] = {"attributes": {"type": sobject}, "Id": record_id, "OwnerId": self.owner_id}
        if sobject == "Lead":
            record.update({"IsConverted": False, "ConvertedContactId": None})
        return record

    def delete_record(self, sobject: str, record_id: str) -> None:
        """Delete a record and the activities that hang off it (Tasks whose ``WhoId`` it is) to the Recycle Bin,
        as Salesforce does, whether through the API or a user in its UI."""
        with self._lock:
            self._recycle(sobject, record_id)
            tasks = self._records["Task"]
            for task_id in [task_id for task_id, task in tasks.items() if task.get("WhoId") == record_id]:
                self._recycle("Task", task_id)

    def _recycle(self, sobject: str, record_id: str) -> None:
        """Move a record to the Recycle Bin; the caller holds the lock."""
        record = self._records[sobject].pop(record_id, None)
        if record is not None:
            self._recycle_bin[record_id] = record


def new_record_id(sobject: str) -> str:
    return ID_PREFIXES[sobject] + "5a" + "".join(secrets.choice(ID_ALPHABET) for _ in range(13))
