"""Mappings as ops meet them: the language, `touchhub mappings check|preview`, the preview API, hot reload."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from connectors.sandbox.providers import SandboxProviders
from hub.cli import app
from hub.config_files import with_line
from hub.errors import ConfigError, EventDropped, MappingError
from hub.mapping import MappingSpec, compile_mapping, load_mapping
from hub import mapping_catalog
from hub.mapping_catalog import MappingCatalog
from hub.model import RawEvent
from hub.normalize import normalize
from hub.rules import ACTION_KINDS
from tests.conftest import ADMIN_TOKEN, RunningHub, logs_of, make_settings, message, serve_hub
from hub.settings import PROJECT_MAPPINGS
from tests.source_contract import FIXTURES

RECEIVED = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
BASE: dict[str, Any] = {
    "event": "name",
    "occurred_at": "at",
    "identifiers": {"user_id": "uid"},
    "properties": "props",
    "events": {"Order Completed": {"stage": "decision", "moment": "purchase"}},
    "default": {"stage": "awareness", "moment": "other"},
}


def mapped(payload: dict[str, Any], **spec: Any) -> Any:
    mapping = compile_mapping("test", MappingSpec.model_validate({**BASE, **spec}))
    return normalize(RawEvent("src", "m-1", payload), mapping, RECEIVED, "US")


def test_value_map_renames_vendor_events_before_the_stage_table() -> None:
    touchpoint = mapped({"name": "order.paid", "uid": "u"}, value_maps={"event": {"order.paid": "Order Completed"}})
    assert (touchpoint.event, touchpoint.stage, touchpoint.moment) == ("Order Completed", "decision", "purchase")


def test_constants_win_defaults_fill_gaps_and_value_maps_apply_to_properties() -> None:
    touchpoint = mapped(
        {"name": "x", "uid": "u", "props": {"plan": "p1", "tier": "gold"}},
        constants={"properties.tier": "fixed", "context.source_system": "shop"},
        defaults={"properties.currency": "EUR", "properties.plan": "free"},
        value_maps={"properties.plan": {"p1": "premium"}},
    )
    assert touchpoint.properties == {"plan": "premium", "tier": "fixed", "currency": "EUR"}
    assert touchpoint.context == {"source_system": "shop"}


def test_fields_bring_values_from_elsewhere_in_the_message_into_an_object_field() -> None:
    fields = {"context.channel": "channel", "properties.plan": "account.plan"}
    touchpoint = mapped({"name": "x", "uid": "u", "channel": "browser", "account": {"plan": "p1"}, "props": {"plan": "own"}},
                        fields=fields, value_maps={"properties.plan": {"p1": "premium"}})
    assert (touchpoint.context, touchpoint.properties) == ({"channel": "browser"}, {"plan": "premium"})
    assert mapped({"name": "x", "uid": "u", "props": {"plan": "own"}}, fields=fields).properties == {"plan": "own"}
    with pytest.raises(ValueError, match="'event' is not a key of an object field"):
        mapped({"name": "x", "uid": "u"}, fields={"event": "name"})
    with pytest.raises(ValueError, match="invalid JMESPath expression"):
        mapped({"name": "x", "uid": "u"}, fields={"context.channel": "channel["})


def test_segments_channel_is_context_channel_for_rules() -> None:
    segment = load_mapping(PROJECT_MAPPINGS / "segment.yaml")
    raw = RawEvent("default", "m-1", message(userId="u", event="Page Viewed", channel="browser"))
    assert normalize(raw, segment, RECEIVED, "US").context["channel"] == "browser"


@pytest.mark.parametrize("source", ["segment.yaml", "rudderstack.yaml"])
@pytest.mark.parametrize(("event", "kind"), [
    ("Application Backgrounded", "system"), ("Push Notification Received", "system"), ("Application Updated", "system"),
    ("Application Opened", "track"), ("Deep Link Opened", "track"), ("Product Added", "track"),
])
def test_events_an_sdk_sends_on_its_own_are_not_the_persons_actions(source: str, event: str, kind: str) -> None:
    """An absence rule waiting for `any` action counts tracks, pages and screens. The SDK's own Application
    Backgrounded, sent as the person leaves the app, ended the cart's wait: the mobile nudge never went."""
    mapping = load_mapping(PROJECT_MAPPINGS / source)
    assert normalize(RawEvent("default", "m-1", message(userId="u", event=event)), mapping, RECEIVED, "US").kind == kind
    assert ("system" in ACTION_KINDS, "track" in ACTION_KINDS) == (False, True)


def test_a_crms_change_to_a_contact_is_not_the_persons_action() -> None:
    """A HubSpot workflow setting a lifecycle stage 30 s into a cart's wait cancelled the nudge."""
    hubspot = load_mapping(PROJECT_MAPPINGS / "hubspot.yaml")
    change = {"objectId": 501, "subscriptionType": "contact.propertyChange", "propertyName": "lifecyclestage",
              "propertyValue": "lead", "occurredAt": 1_790_000_000_000, "portalId": 62515}
    assert normalize(RawEvent("crm", "m-1", change), hubspot, RECEIVED, "US").kind == "system"


def test_default_event_name_when_the_payload_has_none() -> None:
    assert mapped({"uid": "u"}, defaults={"event": "Ping"}).event == "Ping"


def test_stage_expression_wins_over_the_table_and_is_checked() -> None:
    assert mapped({"name": "Order Completed", "uid": "u", "s": "retention"}, stage="s").stage == "retention"
    with pytest.raises(MappingError, match="stage: 'later' is not one of awareness"):
        mapped({"name": "x", "uid": "u", "s": "later"}, stage="s")


def test_drop_rule_drops_with_its_reason() -> None:
    with pytest.raises(EventDropped, match="internal test traffic"):
        mapped({"name": "x", "uid": "u", "test": True}, drop=[{"when": "test", "reason": "internal test traffic"}])
    assert mapped({"name": "x", "uid": "u", "test": False}, drop=[{"when": "test", "reason": "r"}]).event == "x"


def test_epoch_milliseconds_and_seconds_both_read_as_utc() -> None:
    assert mapped({"name": "x", "uid": "u", "at": 1462216307945}).occurred_at == datetime(2016, 5, 2, 19, 11, 47, 945000, tzinfo=timezone.utc)
    assert mapped({"name": "x", "uid": "u", "at": 1462216307}).occurred_at == datetime(2016, 5, 2, 19, 11, 47, tzinfo=timezone.utc)


def test_mapping_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    spec = {**BASE, "events": {"Foo": {"stage": "later", "moment": "x"}}, "value_maps": {"nope.field": {"a": "b"}}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    lines = path.read_text().splitlines()
    with pytest.raises(ConfigError) as raised:
        load_mapping(path)
    assert [with_line(problem, path) for problem in raised.value.problems] == [
        f"{path}:{lines.index('    stage: later') + 1}: events.Foo.stage: Input should be 'awareness', 'consideration', "
        "'decision', 'retention' or 'advocacy'",
        f"{path}:{lines.index('value_maps:') + 1}: value_maps: Value error, 'nope.field' is not a canonical field: use event, kind, stage, moment, "
        "occurred_at, or properties.<name>, traits.<name>, context.<name>",
    ]


def cli(mappings_dir: Path, *args: str) -> Any:
    env = {"HUB_MAPPINGS_DIR": str(mappings_dir), "COLUMNS": "160"}
    return CliRunner().invoke(app, list(args), env=env)


def test_mappings_check_passes_on_the_shipped_files(mappings_dir: Path) -> None:
    result = cli(mappings_dir, "mappings", "check")
    assert result.exit_code == 0, result.output
    assert f"{len(list(mappings_dir.glob('*.yaml')))} file(s) OK" in result.output


def test_mappings_check_needs_no_secrets(mappings_dir: Path) -> None:
    (mappings_dir / "sources.yaml").write_text(
        "sources:\n  - {id: svix, connector: standard_webhooks, secrets: {secret: HUB_UNSET_SVIX_SECRET}}\n"
    )
    result = cli(mappings_dir, "mappings", "check")
    assert result.exit_code == 0, result.output


def test_mappings_check_lists_every_problem_with_file_line_and_key(mappings_dir: Path) -> None:
    hubspot = mappings_dir / "hubspot.yaml"
    hubspot.write_text(hubspot.read_text().replace("event: subscriptionType", "event: subscriptionType ||"))
    (mappings_dir / "sources.yaml").write_text("sources:\n  - id: crm\n    connector: hubspot\n    config: {client_secret: x}\n")
    result = cli(mappings_dir, "mappings", "check")
    assert result.exit_code == 1
    assert f"{hubspot}:6: event: Value error, invalid JMESPath expression 'subscriptionType ||'" in result.output
    assert (f"{mappings_dir / 'sources.yaml'}:2: sources.0.config.client_secret: is a secret; "
            "name an environment variable under `secrets:` instead") in result.output
    assert "2 problem(s)" in result.output


@pytest.mark.parametrize(
    ("source", "sample", "expected"),
    [
        ("default", "segment_batch.json", ["identify", "Song Played"]),
        ("hubspot", "hubspot_contact_events.json", ["Contact Updated"]),
        ("hubspot", "hubspot_deal_property_change.json", ["Deal Updated"]),
        ("rudderstack", "rudderstack_track.json", ["Product Reviewed"]),
        ("standard_webhooks", "standard_webhooks_contact_created.json", ["contact.created"]),
        ("generic_hmac", "rudderstack_track.json", ["Product Reviewed"]),
    ],
)
def test_preview_works_on_every_shipped_sample(mappings_dir: Path, source: str, sample: str, expected: list[str]) -> None:
    result = cli(mappings_dir, "mappings", "preview", "--json", source, str(FIXTURES / sample))
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.output)
    assert [o["touchpoint"]["event"] for o in outcomes if o["outcome"] == "touchpoint"] == expected


def test_preview_table_is_one_sorted_row_per_field(mappings_dir: Path) -> None:
    result = cli(mappings_dir, "mappings", "preview", "hubspot", str(FIXTURES / "hubspot_contact_events.json"))
    assert result.exit_code == 0, result.output
    rows = [line.split("|")[1].strip() for line in result.output.splitlines() if line.startswith("| ") and "field" not in line]
    assert rows[: rows.index("touchpoint_id") + 1] == sorted(rows[: rows.index("touchpoint_id") + 1])
    assert "| event                    | \"Contact Updated\"" in result.output
    assert "event 1: dropped" in result.output and "bulk imports are not customer interactions" in result.output


def test_preview_tries_a_draft_file_and_reports_its_problems(mappings_dir: Path, tmp_path: Path) -> None:
    draft = tmp_path / "hubspot.draft.yaml"
    draft.write_text((mappings_dir / "hubspot.yaml").read_text().replace("Contact Updated", "Contact Changed"))
    result = cli(mappings_dir, "mappings", "preview", "--json", "--mapping", str(draft), "hubspot",
                 str(FIXTURES / "hubspot_contact_events.json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["touchpoint"]["event"] == "Contact Changed"
    draft.write_text("event: 1\n")
    broken = cli(mappings_dir, "mappings", "preview", "--mapping", str(draft), "hubspot", str(FIXTURES / "hubspot_contact_events.json"))
    assert broken.exit_code == 2 and f"{draft}:1: occurred_at: Field required" in broken.output


def test_preview_of_a_configured_journey_source_uses_its_map(mappings_dir: Path) -> None:
    (mappings_dir / "sources.yaml").write_text(
        "sources:\n  - id: shop-map\n    connector: journey_map\n    secrets: {secret: HUB_UNSET_FOR_PREVIEW}\n"
        "    config: {map_file: journeys/web_shop.json, events: events, message_id: id}\n"
    )
    result = cli(mappings_dir, "mappings", "preview", "--json", "shop-map", str(FIXTURES / "journey_map_events.json"))
    assert result.exit_code == 0, result.output
    mapped_, refused = json.loads(result.output)  # in the sample's order
    assert (refused["index"], refused["outcome"]) == (1, "refused") and "TP-NOWHERE" in refused["reason"]
    assert (mapped_["touchpoint"]["stage"], mapped_["touchpoint"]["moment"]) == ("consideration", "product_comparison")


def test_preview_of_an_unknown_source_names_the_known_ones(mappings_dir: Path) -> None:
    result = cli(mappings_dir, "mappings", "preview", "nope", str(FIXTURES / "segment_batch.json"))
    assert result.exit_code == 2
    assert "'nope' is neither a configured source nor a connector" in result.output


def preview_api(running_hub: RunningHub, source: str, body: Any, token: str = ADMIN_TOKEN) -> Any:
    return running_hub.client.post(f"/api/mappings/{source}/preview", json=body, headers={"Authorization": f"Bearer {token}"})


def test_preview_api_returns_outcomes_and_stores_nothing(running_hub: RunningHub) -> None:
    answer = preview_api(running_hub, "default", {"sample": json.loads((FIXTURES / "segment_batch.json").read_text())})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["mapping_version"].startswith("segment@")
    assert [o["touchpoint"]["identifiers"] for o in body["outcomes"]] == [
        {"user_id": ["019mr8mf4r"], "email": ["jake@yahoo.com"]}, {"user_id": ["019mr8mf4r"]}
    ]
    assert running_hub.admin("/api/stats")["inbox"] == {}


def test_preview_normalizes_custom_identifiers_as_identity_yaml_declares(mappings_dir: Path, tmp_path: Path) -> None:
    draft = tmp_path / "segment.draft.yaml"
    draft.write_text((mappings_dir / "segment.yaml").read_text().replace("identifiers:\n", "identifiers:\n  loyalty_id: properties.loyalty\n", 1))
    sample = tmp_path / "track.json"
    sample.write_text(json.dumps({"batch": [{"type": "track", "event": "Order Completed", "userId": "u-1", "messageId": "m-1",
                                             "properties": {"loyalty": "  GOLD-42 "}}]}))
    result = cli(mappings_dir, "mappings", "preview", "--json", "--mapping", str(draft), "default", str(sample))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["touchpoint"]["identifiers"]["loyalty_id"] == ["gold-42"]  # identity.yaml: lowercase


def test_preview_api_tries_a_draft_mapping_before_it_is_saved(running_hub: RunningHub) -> None:
    draft = yaml.safe_load((PROJECT_MAPPINGS / "segment.yaml").read_text())
    draft["value_maps"] = {"event": {"Song Played": "Product Viewed"}}
    sample = json.loads((FIXTURES / "segment_batch.json").read_text())
    answer = preview_api(running_hub, "default", {"sample": sample, "mapping": draft})
    assert answer.status_code == 200, answer.text
    track = answer.json()["outcomes"][1]["touchpoint"]
    assert (track["event"], track["moment"], track["mapping_version"][:14]) == ("Product Viewed", "product_view", "draft-segment@")
    draft["value_maps"] = {"nope": {}}
    refused = preview_api(running_hub, "default", {"sample": sample, "mapping": draft})
    assert refused.status_code == 422
    assert refused.json()["detail"] == ["mapping.value_maps: Value error, 'nope' is not a canonical field: use event, kind, "
                                        "stage, moment, occurred_at, or properties.<name>, traits.<name>, context.<name>"]


def test_preview_api_reports_unmappable_events_and_bad_samples(running_hub: RunningHub) -> None:
    unmappable = {"sample": {"batch": [message(userId="null", event="x")]}}
    [outcome] = preview_api(running_hub, "default", unmappable).json()["outcomes"]
    assert outcome["outcome"] == "unmappable" and outcome["reason"].startswith("identifiers: no usable identifier")
    bad = preview_api(running_hub, "default", {"sample": {"events": []}})
    assert (bad.status_code, bad.json()["error"]) == (400, "no valid message in the request")
    assert {"index": None, "field": "type", "reason": "is required"} in bad.json()["rejected"]
    assert preview_api(running_hub, "default", {"no_sample": 1}).status_code == 422
    assert preview_api(running_hub, "nobody", {"sample": {}}).status_code == 404
    assert preview_api(running_hub, "default", {"sample": {}}, token="wrong").status_code == 401


def test_catalog_reloads_a_saved_mapping_and_refuses_a_broken_one(mappings_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = MappingCatalog(mappings_dir, {"default": "segment.yaml"}, check_seconds=60)
    path = mappings_dir / "segment.yaml"
    original = catalog["default"].version
    path.write_text(path.read_text().replace("Product Viewed:     {stage: consideration, moment: product_view}",
                                             "Product Viewed:     {stage: consideration, moment: browsing_products}"))
    _touch_later(path)
    assert catalog.refresh() == []
    assert catalog["default"].label("Product Viewed").moment == "browsing_products"
    good = catalog["default"].version
    assert good != original
    path.write_text(path.read_text().replace("event: ", "event: '(' # ", 1))
    _touch_later(path)
    with logs_of(monkeypatch, mapping_catalog) as logs:
        assert catalog.refresh() == ["segment.yaml"]
    assert catalog["default"].version == good  # the last good version stays active
    [refused] = logs
    assert refused["event"] == "mapping change refused; the last good version stays active"
    assert refused["active_version"] == good and "event: Value error, invalid JMESPath expression" in refused["problems"][0]


def _touch_later(path: Path) -> None:
    """Some file systems keep mtimes in whole seconds: make the change visible regardless."""
    later = time.time() + 2
    os.utime(path, (later, later))


def test_saved_mapping_applies_to_new_events_without_a_restart(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, mappings_reload_seconds=0.05, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        running.send(message(userId="u-1", event="Product Viewed"))
        running.settle()
        path = mappings_dir / "segment.yaml"
        path.write_text(path.read_text().replace("moment: product_view}", "moment: browsing_products}"))
        _touch_later(path)
        time.sleep(0.1)
        running.send(message(userId="u-1", event="Product Viewed"))
        running.settle()
        newest, oldest = running.admin("/api/touchpoints")["touchpoints"]
    assert (oldest["moment"], newest["moment"]) == ("product_view", "browsing_products")
    assert oldest["mapping_version"] != newest["mapping_version"]


def test_connectors_show_prints_the_config_schema(mappings_dir: Path) -> None:
    result = cli(mappings_dir, "connectors", "show", "hubspot")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)  # the schema alone, for jq; the connector's name and docs on stderr
    assert "hubspot" in result.stderr
    assert schema["required"] == ["client_secret"]
    assert schema["properties"]["tolerance_seconds"]["default"] == 300
    assert cli(mappings_dir, "connectors", "show", "nope").exit_code == 2
