"""Emails and phones in the delivery log, written every way ingest takes them (audit 21): an address with an
apostrophe or a dotless domain, a phone as bare digits or "(415)555-0123", each masked like any other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.destinations.salesforce import SalesforceDestination
from connectors.sandbox.providers import SandboxProviders
from connectors.sandbox.salesforce import FakeSalesforce
from connectors.sandbox.salesforce_api import create_app
from hub.attempt_outcomes import AttemptOutcomes
from hub.delivery_policy import DeliveryPolicyFile, PolicyBook
from hub.errors import PermanentDeliveryError
from hub.identifiers import normalize_identifier
from hub.pii import mask_recipient
from hub.serving import BackgroundServer
from hub.store.delivery_log import unrouted
from tests.conftest import make_settings, serve_hub, support_ticket, vendor_fake_fixtures
from tests.test_salesforce import CONTENT, delivery, destination

fake, server, fresh = vendor_fake_fixtures("fake", FakeSalesforce, create_app)


@pytest.fixture
def crm(server: BackgroundServer, fake: FakeSalesforce) -> Iterator[SalesforceDestination]:
    built = destination(server, fake)
    yield built
    built.close()


@pytest.mark.parametrize("address", ["mary.o'brien@example.com", "jane{doe}@example.com", "jane&john.smith@example.com", "bo@localhost"])
def test_an_email_ingest_takes_is_masked_to_its_first_character(address: str) -> None:
    """The mask knew only letters, digits and `.%+-` before the @ and a dotted domain after it, where ingest takes
    every RFC 5322 local part and a dotless domain: the log showed "mary.o'b***@example.com" (her name), and
    "jane{doe}@...", "jane&john.smith@..." and "bo@localhost" whole, as recipient and in free text alike."""
    identifier = normalize_identifier("email", address, "US")
    assert identifier is not None, "ingest takes it as the person's email"
    domain = address.rpartition("@")[2]
    assert mask_recipient(address, identifier) == f"{address[0]}***@{domain}"
    assert mask_recipient(f"write to {address}.", None) == f"write to {address[0]}***@{domain}."


@pytest.mark.parametrize(("field", "refused", "shown"), [
    ("field_Email", "ana.silva@gmail", "a***@gmail"),
    ("field_Phone", "(415)555-0123", "4*****0123"),
])
def test_a_value_salesforce_refuses_is_masked_in_the_attempts_error(
    crm: SalesforceDestination, fake: FakeSalesforce, tmp_path: Path, field: str, refused: str, shown: str
) -> None:
    """Salesforce quotes the value it refuses ("Email: invalid email address: ana.silva@gmail"); the masks
    needed a dotted domain and a space or dash after "(415)", so the person's address or phone reached the
    delivery log whole through the attempt's error."""
    fake.fail_next(400, "INVALID_FIELD", message=f"{field}: invalid value: {refused}")
    refused_delivery = delivery({**CONTENT, field: refused})
    with pytest.raises(PermanentDeliveryError) as failure:
        crm.deliver(refused_delivery)
    outcomes = AttemptOutcomes(PolicyBook(DeliveryPolicyFile(), make_settings(tmp_path)), unrouted)
    outcome = outcomes.failed(refused_delivery, failure.value, datetime.now(timezone.utc), time.perf_counter(), {})
    assert outcome.attempt is not None
    assert outcome.attempt.error_message.endswith(f"{field}: invalid value: {shown}"), outcome.attempt.error_message


@pytest.mark.parametrize("typed", ["4155550123", "(415)555-0123"])
def test_the_delivery_log_masks_a_phone_in_a_crm_field_however_the_person_typed_it(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, typed: str
) -> None:
    """Ingest reads bare digits and "(415)555-0123" as the person's phone (+14155550123), and the profile view
    masks them, but no pattern for free text matched them: /api/deliveries showed the CRM field whole."""
    template = mappings_dir / "templates" / "post_purchase_support.crm.j2"
    template.write_text(template.read_text() + '{% block field_Phone %}{{ profile.phone | default("") }}{% endblock %}\n')
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides()), sandbox) as hub:
        hub.send(*support_ticket("sam", {"phone": typed}))
        hub.settle()
        assert hub.admin("/api/profiles/lookup", type="phone", value="+14155550123")["identifiers"]
        [crm_update] = hub.admin("/api/deliveries", channel="crm")["deliveries"]
    assert crm_update["content"]["field_Phone"] == "4*****0123"
