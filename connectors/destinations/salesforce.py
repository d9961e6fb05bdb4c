"""CRM updates in Salesforce with `simple-salesforce`: upsert the person, record the intent, alert the owner.

One delivery on the ``crm`` channel (target: the hub's profile id) becomes:

1. an upsert of a Lead (or Contact) keyed by an external-id field holding the
   profile id, with the mapped field values and the decision's intent, and
2. when the action asks for it, a Task for the record's owner, upserted by an
   external-id field holding the delivery id. A queue may own a Lead but never
   a Task, and a deactivated user is given no new Task: when a queue or an
   inactive user owns the record, the Task goes to the integration user.

Both writes are keyed upserts, so a retry or a replay after a lost answer
updates the same records instead of creating duplicates.

A merge makes two profiles one person, and the survivor's id keys that
person's record from then on. If the survivor has no record yet but a
profile merged into it does (the anonymous visitor whose cart made a Lead
before they logged in), that record is re-keyed to the survivor's id before
the upsert, so the person keeps one Lead and its history instead of gaining a
second. The delivery engine names those earlier keys
(`Delivery.previous_targets`, `hub.store.merged_targets`). The REST API
cannot merge two records, so when both already exist they stay two.

Forgetting a person (`hub.store.forget`) plans an erasure of each record the
hub may have written for them: a delivery whose content is `ERASURE` (the
key, and the record type when the update named one; nothing personal) deletes
the record by its external id, of this destination's `sobject` type unless named.
A record already gone (deleted by hand, or by an earlier try whose answer was
lost) counts as erased, and so does one waiting in the Recycle Bin, which
Salesforce answers by id with ENTITY_IS_DELETED (the Contact of a converted
Lead that a rep deleted). The Tasks the hub made hang off the record (``WhoId``)
and Salesforce deletes a Lead's or Contact's activities with it, so they are
not deleted one by one. Deleted records wait in the org's Recycle Bin for 15
days before Salesforce purges them.

A Lead a sales rep has converted is read-only: Salesforce refuses every
update to it (CANNOT_UPDATE_CONVERTED_LEAD), and the person lives on as the
Contact the conversion made. An update whose Lead turns out converted goes
to that Contact (``ConvertedContactId``), with the fields a Contact has; the
others are left out, and the attempt's summary names both. So does the
update of a survivor whose merged-in profile's Lead was converted: that Lead
cannot be re-keyed, and its Contact is the person's record. An erasure of a
converted Lead deletes its Contact too, where the updates went since.

What the action's ``params`` may carry (see `CrmParams`): ``sobject``,
``fields`` (field API name -> value), ``intent`` and ``task``. A template may
also fill fields from the profile: every ``{% block field_<ApiName> %}`` it
defines sets that field when it renders non-empty. The Task's description is
the template's ``description`` block, or, for a template without blocks,
the whole rendered template (one with blocks and no ``description`` block
leaves it empty).

API: https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/dome_upsert.htm
Delete by external id: https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_sobject_upsert_delete.htm
What its refusals mean: `connectors.destinations.salesforce_errors`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import requests
from pydantic import BaseModel, ValidationError
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.api import SFType
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession, SalesforceResourceNotFound

from connectors.base import Destination
from connectors.destinations import retry_after, salesforce_errors
from connectors.destinations.requests_transport import VendorAdapter
from connectors.destinations.salesforce_errors import (
    CONVERTED_LEAD, DUPLICATE_VALUE, INACTIVE_OWNER, error_code, no_such_record,
)
from connectors.destinations.salesforce_params import (
    SALESFORCE_ORIGIN, CrmErasure, CrmParams, CrmUpdate, SalesforceConfig, problems,
)
from hub.errors import DeliveryError, DeliveryFailure, PermanentDeliveryError
from hub.model import ERASURE, Delivery, SendResult

FIELD_BLOCK_PREFIX = "field_"
USER_ID_PREFIX = "005"  # a User's record id; a queue (a Group) is 00G, and may own a Lead but not a Task


class SalesforceDestination(Destination):
    slug = "salesforce"
    title = "Salesforce (Lead/Contact upsert, owner Task)"
    docs_url = "https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/"
    channel = "crm"
    keeps_record_per_profile = True
    Config = SalesforceConfig

    def __init__(self, destination_id: str, config: BaseModel) -> None:
        super().__init__(destination_id, config)
        assert isinstance(config, SalesforceConfig)
        self.settings = config
        self.session = requests.Session()
        self.session.mount("https://", VendorAdapter(SALESFORCE_ORIGIN, config.timeout_seconds, config.api_base_url))
        self.session.hooks["response"].append(salesforce_errors.noted)  # login and REST answers alike: for `retry_after.kept`
        self._login_lock = threading.Lock()
        self._salesforce: Salesforce | None = None
        self._field_names: dict[str, frozenset[str]] = {}  # by object type, from its describe

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> list[str]:
        """The problems `plan` would refuse every delivery of the action for (`salesforce.bad_params`)."""
        try:
            CrmParams.model_validate(dict(params))
        except ValidationError as exc:
            return problems("params", exc)
        return []

    def request_summary(self, delivery: Delivery) -> dict[str, Any]:
        try:
            if ERASURE in delivery.content:
                return {ERASURE: True, **self.erasure(delivery).model_dump()}
            update = self.plan(delivery)
        except PermanentDeliveryError:
            return {"external_id": delivery.target}
        return {"sobject": update.sobject, "external_id": update.external_id, "fields": sorted(update.fields),
                "task": update.task is not None, **({"previous_keys": list(update.previous_keys)} if update.previous_keys else {})}

    def plan(self, delivery: Delivery) -> CrmUpdate:
        """The writes a delivery asks for; PermanentDeliveryError naming the key if its params are malformed."""
        try:
            params = CrmParams.model_validate(delivery.content.get("params") or {})
        except ValidationError as exc:
            raise PermanentDeliveryError(DeliveryFailure("salesforce.bad_params", "; ".join(problems("params", exc)))) from None
        fields: dict[str, Any] = {
            name.removeprefix(FIELD_BLOCK_PREFIX): value
            for name, value in delivery.content.items()
            if name.startswith(FIELD_BLOCK_PREFIX) and value
        }
        fields.update(params.fields)
        if params.intent:
            fields[self.settings.intent_field] = params.intent
        task = None
        if params.task:
            description = delivery.content.get("description") or delivery.content.get("body", "")
            task = {"Subject": params.task.subject, "Priority": params.task.priority, "Status": params.task.status,
                    "Description": description}
        return CrmUpdate(params.sobject or self.settings.sobject, delivery.target, fields, task, delivery.delivery_id,
                         delivery.previous_targets)

    def erasure(self, delivery: Delivery) -> CrmErasure:
        """The record an erasure delivery deletes, its type always named; PermanentDeliveryError if its content
        does not name one."""
        try:
            erasure = CrmErasure.model_validate(delivery.content[ERASURE])
        except ValidationError as exc:
            failure = DeliveryFailure("salesforce.bad_erasure", "; ".join(problems(ERASURE, exc)))
            raise PermanentDeliveryError(failure) from None
        return erasure if erasure.sobject else erasure.model_copy(update={"sobject": self.settings.sobject})

    def send(self, delivery: Delivery) -> SendResult:
        with retry_after.kept(SalesforceError):
            if ERASURE in delivery.content:
                erasure = self.erasure(delivery)
                return self._signed_in(lambda client: self._erase(client, erasure))
            update = self.plan(delivery)
            return self._signed_in(lambda client: self._write(client, update))

    def _signed_in(self, call: Callable[[Salesforce], SendResult]) -> SendResult:
        """`call` with the logged-in client, and once more after a fresh login if the session had expired."""
        client = self._client()
        try:
            return call(client)
        except SalesforceExpiredSession as exc:
            # Sessions expire on an idle timeout or when an admin revokes
            # them; one fresh login is worth one more try.
            if error_code(exc) != "INVALID_SESSION_ID":
                raise
            return call(self._client(expired=client))

    def classify(self, error: Exception) -> DeliveryError:
        return salesforce_errors.classified(error, self.settings.external_id_field) or super().classify(error)

    def _client(self, expired: Salesforce | None = None) -> Salesforce:
        """A logged-in client; logs in again only if `expired` is still the current one (threads share it)."""
        with self._login_lock:
            if self._salesforce is None or self._salesforce is expired:
                settings = self.settings
                session_id, instance = SalesforceLogin(
                    username=settings.username,
                    password=settings.password.get_secret_value() if settings.password else None,
                    consumer_key=settings.consumer_key,
                    consumer_secret=settings.consumer_secret.get_secret_value(),
                    domain=settings.domain,
                    session=self.session,
                )
                # A client built from a session id leaves re-login to us: the
                # library's own retry loop re-logs in up to three times per call.
                self._salesforce = Salesforce(
                    session_id=session_id, instance=instance, session=self.session, version=settings.api_version
                )
            return self._salesforce

    def _write(self, client: Salesforce, update: CrmUpdate) -> SendResult:
        key_field = self.settings.external_id_field
        record_type = getattr(client, update.sobject)
        carried_from = None
        if update.previous_keys and (merged := self._merged_record(record_type, update)) is not None:
            previous, record = merged
            if contact_id := converted_contact(record):
                return self._write_converted(client, update, record, contact_id, {"merged_lead_key": previous})
            carried_from = self._carry_over(record_type, update, previous, record)
        try:
            answer = record_type.upsert(f"{key_field}/{quote(update.external_id, safe='')}", update.fields,
                                        raw_response=True)
        except SalesforceError as exc:
            if error_code(exc) != CONVERTED_LEAD:
                raise
            lead = self._record_keyed(client.Lead, update.external_id)
            if lead is None or not (contact_id := converted_contact(lead)):
                raise
            return self._write_converted(client, update, lead, contact_id)
        created = answer.status_code == 201
        record_id = answer.json()["id"] if answer.content else None
        summary: dict[str, Any] = {"sobject": update.sobject, "record_id": record_id, "created": created}
        if carried_from is not None:
            summary["carried_over_from"] = carried_from
        if update.task is not None:
            record = record_type.get_by_custom_id(key_field, update.external_id)
            summary.update(self._add_task(client, update, record))
            record_id = record["Id"]
        return SendResult(status="sent", provider_message_id=record_id, response_summary=summary)

    def _write_converted(self, client: Salesforce, update: CrmUpdate, lead: dict[str, Any], contact_id: str,
                         noted: Mapping[str, Any] | None = None) -> SendResult:
        """Write `update` to `contact_id`, the Contact its converted `lead` became, as far as a Contact has its
        fields; `noted` joins the attempt's summary.

        The Contact is not keyed by the profile id (Salesforce's conversion
        copies no custom field unless the org maps it), so each later update
        finds the Lead again and follows it here: one refused upsert and one
        read more per update (or, for a Lead a merged-in profile's updates
        made, the reads `_merged_record` makes). The Contact's type is
        described once per destination, so a field an admin adds to Contact
        counts after a restart.
        """
        on_contact = self._fields_of(client, "Contact")
        fields = {name: value for name, value in update.fields.items() if name in on_contact}
        if fields:
            client.Contact.update(contact_id, fields)
        summary: dict[str, Any] = {"sobject": "Contact", "record_id": contact_id, "created": False,
                                   "converted_lead_id": lead["Id"], **(noted or {})}
        left_out = sorted(set(update.fields) - set(fields))
        if left_out:
            summary["left_out"] = f"{', '.join(left_out)}: no such field on Contact (the Lead was converted)"
        if update.task is not None:
            contact = client.Contact.get(contact_id)
            summary.update(self._add_task(client, replace(update, sobject="Contact"), contact))
        return SendResult(status="sent", provider_message_id=contact_id, response_summary=summary)

    def _fields_of(self, client: Salesforce, sobject: str) -> frozenset[str]:
        """The API names of `sobject`'s fields, described once per destination."""
        if sobject not in self._field_names:
            described = getattr(client, sobject).describe()
            self._field_names[sobject] = frozenset(field["name"] for field in described["fields"])
        return self._field_names[sobject]

    def _add_task(self, client: Salesforce, update: CrmUpdate, record: dict[str, Any]) -> dict[str, Any]:
        """Upsert the update's Task on `record`, for its owner; returns what the attempt's summary keeps of it.

        Assignment rules often hand new Leads to a queue, which may own a Lead
        but never a Task, and a rep who left keeps owning their records once
        deactivated, but Salesforce gives an inactive user no new Task
        (INACTIVE_OWNER_OR_USER). Either way the Task is sent without an
        owner, so Salesforce gives it to the integration user, and the summary
        says why, rather than failing the whole CRM update after the record
        was written. Salesforce's refusal is the only word that an owner is
        inactive, so each Task for one costs a refused upsert more.
        """
        assert update.task is not None
        task = {**update.task, "WhoId": record["Id"]}
        owner = record.get("OwnerId") or ""
        if not owner.startswith(USER_ID_PREFIX):
            return {"task_owner": f"integration user: the {update.sobject}'s owner {owner or '(none)'} is not a user, "
                                  "and a queue cannot own a Task", **self._upsert_task(client, update, task)}
        try:
            return self._upsert_task(client, update, {**task, "OwnerId": owner})
        except SalesforceError as exc:
            if error_code(exc) != INACTIVE_OWNER:
                raise
        return {"task_owner": f"integration user: the {update.sobject}'s owner {owner} is an inactive user, whom "
                              "Salesforce gives no new Task", **self._upsert_task(client, update, task)}

    def _upsert_task(self, client: Salesforce, update: CrmUpdate, task: dict[str, Any]) -> dict[str, Any]:
        """Upsert `task`, keyed by the delivery, so a retry or replay updates the one Task; returns its id for the
        attempt's summary."""
        task_field = self.settings.task_external_id_field
        answer = client.Task.upsert(f"{task_field}/{quote(update.task_key, safe='')}", task, raw_response=True)
        return {"task_id": answer.json()["id"] if answer.content else None}

    def _erase(self, client: Salesforce, erasure: CrmErasure) -> SendResult:
        """Delete the record keyed by the erasure's external id, and first the Contact a converted Lead became;
        one already gone counts as erased (a retry after a lost answer finds nothing, and so does an erasure of
        a record a user deleted).

        After a conversion the hub's updates went to the Contact
        (`_write_converted`), which Salesforce does not delete with its Lead:
        it goes first, so a retry after a lost answer still finds the Lead
        that names it. Erasing a Lead costs one read more for that.
        """
        summary: dict[str, Any] = {"sobject": erasure.sobject}
        if erasure.sobject == "Lead":
            lead = self._record_keyed(client.Lead, erasure.external_id)
            if lead is not None and (contact_id := converted_contact(lead)):
                summary.update(converted_contact_id=contact_id, contact_deleted=_deleted(client.Contact, contact_id))
        key = f"{self.settings.external_id_field}/{quote(erasure.external_id, safe='')}"
        deleted = _deleted(getattr(client, erasure.sobject), key)
        return SendResult("sent", None, {**summary, "deleted": deleted, **({} if deleted else {"already_gone": True})})

    def _merged_record(self, record_type: SFType, update: CrmUpdate) -> tuple[str, dict[str, Any]] | None:
        """The record of a profile merged into this one, with the key it is found by, when this one has no
        record yet; else None.

        Before a merge each side's CRM updates upserted a record of its own;
        without taking that one over the survivor's first update would create
        a second Lead for the same person, and the first, with its history and
        owner, would stop being updated. Every update of a profile with
        merged-in records to look for pays one read more (its own record,
        found): the outbox cannot tell which record types a merged-in id
        keyed, and a Contact written for the survivor says nothing of its
        Lead. Only profiles merged into after a CRM update pay it.
        """
        if self._record_keyed(record_type, update.external_id) is not None:
            return None
        for previous in update.previous_keys:
            record = self._record_keyed(record_type, previous)
            if record is not None:
                return previous, record
        return None

    def _carry_over(self, record_type: SFType, update: CrmUpdate, previous: str, record: dict[str, Any]) -> str | None:
        """Re-key `record`, found by the merged-in key `previous`, to this profile's id; returns `previous`, or
        None when another send keyed a record to this profile meanwhile (the upsert then updates that one)."""
        try:
            record_type.update(record["Id"], {self.settings.external_id_field: update.external_id})
        except SalesforceError as exc:
            if error_code(exc) != DUPLICATE_VALUE:
                raise
            return None
        return previous

    def _record_keyed(self, record_type: SFType, key: str) -> dict[str, Any] | None:
        try:
            return record_type.get_by_custom_id(self.settings.external_id_field, key)
        except SalesforceResourceNotFound:
            return None

    def close(self) -> None:
        self.session.close()


def converted_contact(record: Mapping[str, Any]) -> str | None:
    """The id of the Contact a converted Lead became; None for a Lead not converted, or any other record."""
    return record.get("ConvertedContactId") if record.get("IsConverted") else None


def _deleted(record_type: SFType, key: str) -> bool:
    """Delete the record `key` names (an id, or ``<external-id field>/<value>``); False if it was gone already,
    or in the Recycle Bin. A NOT_FOUND that blames the external-id field, not the record, is raised: a setup to
    fix."""
    try:
        record_type.delete(key)
    except SalesforceResourceNotFound as exc:
        if not no_such_record(exc):
            raise
        return False
    return True
