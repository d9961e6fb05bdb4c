"""The Salesforce destination against what an org's people do behind the hub's back: a field named by its label, a
Contact a rep deleted to the Recycle Bin, a rep who left and was deactivated. Real simple-salesforce against the
fake org."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceResourceNotFound

from connectors.destinations.salesforce import SalesforceDestination
from connectors.sandbox.salesforce import FakeSalesforce
from connectors.sandbox.salesforce_api import create_app
from hub.errors import PermanentDeliveryError
from hub.model import ERASURE
from hub.serving import BackgroundServer
from tests.conftest import vendor_fake_fixtures
from tests.test_salesforce import CONTENT, PROFILE_ID, delivery, destination

fake, server, fresh = vendor_fake_fixtures("fake", FakeSalesforce, create_app)


@pytest.fixture
def crm(server: BackgroundServer, fake: FakeSalesforce) -> Iterator[SalesforceDestination]:
    built = destination(server, fake)
    yield built
    built.close()


@pytest.mark.parametrize("name", ["First Name", "1st_contact__c", "Email-Address", "Lead.Status", ""])
def test_crm_fields_salesforce_can_never_take_stop_the_rules_at_load(
    crm: SalesforceDestination, fake: FakeSalesforce, name: str
) -> None:
    """A `fields` key that is no field API name (a label with a space, a hyphen, a leading digit, a dot, nothing)
    passed the load-time check, and Salesforce refused it on every send of the rule, each CRM update failing for
    good."""
    params = {"fields": {name: "x", "LeadSource": "Touchpoint Hub"}}
    problem = f"params.fields.{name}: not a Salesforce field API name (a letter, then letters, digits and underscores"

    [reported] = SalesforceDestination.check_params(params)

    assert reported.startswith(problem), reported
    with pytest.raises(PermanentDeliveryError) as refused:  # an update planned before the rule was fixed
        crm.deliver(delivery({"body": "", "params": params}))
    assert refused.value.failure.message == reported
    assert fake.requests == []
    assert SalesforceDestination.check_params({"fields": {"Touchhub_Score__c": 3, "FirstName": "Ana"}}) == []


def test_the_fake_answers_a_record_in_the_recycle_bin_by_id_as_deleted(
    crm: SalesforceDestination, fake: FakeSalesforce
) -> None:
    """A deleted record waits in Salesforce's Recycle Bin, and a call naming its id is refused 404 ENTITY_IS_DELETED;
    the fake forgot such a record outright and answered NOT_FOUND, hiding every mishandling of the code."""
    crm.deliver(delivery())
    [lead] = fake.records("Lead")
    fake.delete_record("Lead", lead["Id"])

    with pytest.raises(SalesforceResourceNotFound) as refused:
        crm._client().Lead.delete(lead["Id"])

    assert refused.value.content[0]["errorCode"] == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceResourceNotFound) as by_key:
        crm._client().Lead.get_by_custom_id("Touchhub_Profile_Id__c", PROFILE_ID)
    assert by_key.value.content[0]["errorCode"] == "NOT_FOUND"  # its external id finds it no more
    assert (fake.records("Lead"), fake.records("Task")) == ([], [])


def test_forgetting_a_person_whose_contact_a_rep_deleted_still_deletes_their_lead(
    crm: SalesforceDestination, fake: FakeSalesforce
) -> None:
    """Ana's Lead was converted, and a rep then deleted the Contact it became, to the Recycle Bin: Salesforce
    answered the erasure's DELETE of that Contact 404 ENTITY_IS_DELETED, which did not count as already gone, so
    the erasure failed for good before the Lead, and the Lead kept her name and email after she was forgotten."""
    crm.deliver(delivery())
    [lead] = fake.records("Lead")
    contact_id = fake.convert_lead(lead["Id"])
    fake.delete_record("Contact", contact_id)

    result = crm.deliver(delivery({ERASURE: {"external_id": PROFILE_ID}}, "dlv-erase"))

    assert fake.records("Lead") == []
    assert [(r["path"].split("/sobjects/")[-1], r["status"]) for r in fake.requests if r["method"] == "DELETE"] == [
        (f"Contact/{contact_id}", 404), (f"Lead/Touchhub_Profile_Id__c/{PROFILE_ID}", 204),
    ]
    assert (result.status, result.response_summary) == ("sent", {
        "sobject": "Lead", "deleted": True, "converted_contact_id": contact_id, "contact_deleted": False,
    })


def test_a_lead_owned_by_a_deactivated_rep_still_gets_its_update_and_task(
    crm: SalesforceDestination, fake: FakeSalesforce
) -> None:
    """The Lead's owner left and their user was deactivated (Salesforce keeps them as its owner): the Task given
    to them was refused 400 INACTIVE_OWNER_OR_USER and the CRM update failed for good though the Lead was
    written, as did every later update of the person."""
    crm.deliver(delivery())
    [lead] = fake.records("Lead")
    rep = fake.add_user()
    fake.assign_owner("Lead", lead["Id"], rep)
    fake.deactivate_user(rep)

    result = crm.deliver(delivery({**CONTENT, "field_Title": "CTO"}, "dlv-2"))

    [updated] = fake.records("Lead")
    assert (updated["Title"], updated["OwnerId"]) == ("CTO", rep)  # written, and still the rep's
    task = next(t for t in fake.records("Task") if t["Touchhub_Delivery_Id__c"] == "dlv-2")
    assert (task["WhoId"], task["OwnerId"]) == (lead["Id"], fake.owner_id)  # the integration user
    assert task["Subject"] == "Customer opened a ticket after buying"
    task_writes = [(r["status"], "OwnerId" in r["json"]) for r in fake.requests if "/sobjects/Task/" in r["path"]]
    assert task_writes[-2:] == [(400, True), (201, False)]  # refused for the rep, then the integration user's
    assert result.status == "sent"
    assert result.response_summary["task_owner"] == (
        f"integration user: the Lead's owner {rep} is an inactive user, whom Salesforce gives no new Task"
    )


def test_a_task_for_a_lead_an_active_rep_owns_is_theirs_and_the_fake_refuses_an_inactive_owner(
    crm: SalesforceDestination, fake: FakeSalesforce
) -> None:
    """The fake took any user as an owner, so the refusal Salesforce gives a deactivated one was never seen."""
    crm.deliver(delivery())
    [lead] = fake.records("Lead")
    rep = fake.add_user()
    fake.assign_owner("Lead", lead["Id"], rep)

    crm.deliver(delivery(delivery_id="dlv-2"))

    task = next(t for t in fake.records("Task") if t["Touchhub_Delivery_Id__c"] == "dlv-2")
    assert task["OwnerId"] == rep
    fake.deactivate_user(rep)
    with pytest.raises(SalesforceMalformedRequest) as refused:
        crm._client().Task.update(task["Id"], {"OwnerId": rep})
    assert refused.value.content[0]["errorCode"] == "INACTIVE_OWNER_OR_USER"
