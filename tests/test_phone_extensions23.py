"""Phones with an extension: two people behind one switchboard number are two people, a text never goes to the
switchboard in place of the person, and masking and forgetting know the extension as part of the phone."""

from __future__ import annotations

from pathlib import Path

from connectors.sandbox.providers import SandboxProviders
from hub.cli_profiles import app as profiles_app
from tests.conftest import RunningHub, message
from tests.test_absence_timers import BOTH_DATABASES, accept, hub_on
from tests.test_cli_output20 import flat, run
from tests.test_fallbacks22 import cart_left_with_sms_else_email
from tests.test_forget21 import tables_holding
from tests.test_forget_messages import forget, profile

SWITCHBOARD = "+14155550100"


def colleagues(ana_phone: str, bo_phone: str) -> tuple[dict, dict]:
    """Identifies of Ana and Bo, who work at one company, each with their own email, giving `ana_phone` and
    `bo_phone`."""
    return (message("identify", anonymousId="ana-laptop", traits={"email": "ana@acme.example", "phone": ana_phone}),
            message("identify", anonymousId="bo-laptop", traits={"email": "bo@acme.example", "phone": bo_phone}))


@BOTH_DATABASES
def test_two_people_behind_one_switchboard_with_their_own_extensions_stay_two_profiles(
    tmp_path: Path, database_url: str
) -> None:
    """Ana (ext. 12) and Bo (ext. 13) gave their office number: E.164 dropped the extension, both phones became
    +14155550100, and the two colleagues were merged into one profile."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, *colleagues("+1 415 555 0100 ext. 12", "+1 (415) 555-0100 x13"))
        ana, bo = profile(hub, "email", "ana@acme.example"), profile(hub, "email", "bo@acme.example")
        assert ana != bo
        assert profile(hub, "phone", f"{SWITCHBOARD};ext=12") == ana
        assert profile(hub, "phone", f"{SWITCHBOARD};ext=13") == bo
    finally:
        hub.store.dispose()


@BOTH_DATABASES
def test_one_extension_written_two_ways_is_one_phone(tmp_path: Path, database_url: str) -> None:
    """Keeping the extension must not split one person whose forms write it differently; nor change a phone
    without one, which stays in E.164 as phones were always stored."""
    hub = hub_on(tmp_path, database_url=database_url)
    try:
        accept(hub, message("identify", anonymousId="ana-laptop", traits={"phone": "+1 415 555 0100 ext. 12"}),
               message("identify", anonymousId="ana-phone", traits={"phone": "(415) 555-0100 x12"}),
               message("identify", anonymousId="cy-phone", traits={"phone": "(415) 555-0177"}))
        assert profile(hub, "anonymous_id", "ana-laptop") == profile(hub, "anonymous_id", "ana-phone")
        assert profile(hub, "phone", "+14155550177") == profile(hub, "anonymous_id", "cy-phone")
    finally:
        hub.store.dispose()


def test_an_sms_for_a_person_whose_phone_has_an_extension_falls_back_to_email(
    tmp_path: Path, sandbox: SandboxProviders
) -> None:
    """A text cannot reach an extension: Ana's nudge went to her company's switchboard number (or, once the
    extension was kept, to a To Twilio refuses) instead of the email her rule falls back to."""
    deliveries, explained = cart_left_with_sms_else_email(
        tmp_path, sandbox, "u-ana", {"email": "ana@acme.example", "first_name": "Ana", "phone": "+1 415 555 0100 ext. 12"}
    )
    [delivery] = deliveries.values()
    sms, email = explained["actions"]
    assert (sms["fate"], sms["because"], sms["to"], email["fate"]) == ("fell_back", "skipped", "email", "planned")
    assert "extension" in sms["reason"] and "mobile" in sms["reason"]
    assert (delivery["channel"], delivery["status"]) == ("email", "sent")
    assert [r.rcpt_tos for r in sandbox.smtp.received] == [["ana@acme.example"]]
    assert sandbox.twilio.messages == []


def test_profiles_show_masks_the_extension_with_the_phone(tmp_path: Path) -> None:
    """`touchhub profiles show` masked "+1 415 555 0100 ext. 12" as "+1******0100 ext. 12", and the identifier
    "+14155550100;ext=12" as "+1*******0012": the extension's digits shown, standing for the number's last four."""
    hub = hub_on(tmp_path)
    try:
        accept(hub, message("identify", anonymousId="ana-laptop", traits={"phone": "+1 415 555 0100 ext. 12",
                                                                           "desk": "4155550100x12"}))
        url = hub.settings.database_url
    finally:
        hub.store.dispose()
    result = run(profiles_app, url, "show", "anonymous_id:ana-laptop")
    shown = flat(result)
    assert result.exit_code == 0, result.output
    assert "+1******0100;ext=**" in shown and "4*****0100;ext=**" in shown
    for written in ("ext. 12", "x12", "ext=12", "0012"):
        assert written not in shown, written


@BOTH_DATABASES
def test_forget_takes_out_the_persons_phone_with_its_extension_however_written_and_leaves_the_colleagues(
    tmp_path: Path, mappings_dir: Path, database_url: str
) -> None:
    """Forgetting Ana left her phone in the raw body of the front desk's event a mapping dropped, written there as
    "(415) 555-0100 x12": a phone with an extension was not known as a phone, so only its exact spelling
    ("+14155550100;ext=12") was looked for."""
    segment = mappings_dir / "segment.yaml"
    segment.write_text(segment.read_text() + "drop:\n  - when: \"event == 'Application Backgrounded'\"\n    reason: noise\n")
    hub = hub_on(tmp_path, mappings_dir=mappings_dir, database_url=database_url)
    try:
        accept(hub, *colleagues("+1 415 555 0100 ext. 12", "+1 415 555 0100 ext. 13"),
               message(anonymousId="front-desk", event="Application Backgrounded", properties={"call": "(415) 555-0100 x12"}),
               message(anonymousId="front-desk", event="Application Backgrounded", properties={"call": "(415) 555-0100 x13"}))
        forget(hub, profile(hub, "email", "ana@acme.example"))
        for written in ("ext. 12", "0100 x12", "ext=12"):
            assert tables_holding(hub, written) == [], written
        assert tables_holding(hub, "(415) 555-0100 x13") == ["inbox"]  # Bo's dropped event stays
        assert profile(hub, "phone", f"{SWITCHBOARD};ext=13") == profile(hub, "email", "bo@acme.example")
    finally:
        hub.store.dispose()


def test_a_stop_from_the_switchboard_number_opts_out_its_owner_not_the_people_behind_its_extensions(
    running_hub: RunningHub,
) -> None:
    """Twilio's From never has an extension: a STOP from the company's number found the one profile that held it,
    into which every colleague who gave an extension had been merged, and opted them all out."""
    running_hub.send(*colleagues("+1 415 555 0100 ext. 12", SWITCHBOARD))  # Bo has the switchboard's own number
    running_hub.settle()
    inbound = f"{running_hub.url}/v1/callbacks/twilio_sms/inbound"
    assert running_hub.sandbox.twilio.post_inbound(inbound, SWITCHBOARD, "STOP").status_code == 200
    by_email = {
        email: running_hub.admin("/api/profiles/lookup", type="email", value=email)["traits"]
        for email in ("ana@acme.example", "bo@acme.example")
    }
    assert by_email["bo@acme.example"]["sms_opt_out"] is True
    assert "sms_opt_out" not in by_email["ana@acme.example"]
