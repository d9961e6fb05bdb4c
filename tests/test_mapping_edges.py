"""Mappings at their edges: data a function cannot take, values longer than their columns, YAML that is not
JSON, keys given twice, files `mappings check` must find, and what the preview shows of it all."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from connectors.sandbox.providers import SandboxProviders
from hub.cli import app
from hub.errors import ConfigError, MappingError
from hub.mapping import MAX_LENGTH, MappingSpec, compile_mapping, load_mapping
from hub import mapping_catalog
from hub.mapping_catalog import MappingCatalog
from hub.model import RawEvent
from hub.normalize import normalize
from hub.settings import PROJECT_MAPPINGS
from hub.store import schema
from tests.conftest import ADMIN_TOKEN, RunningHub, logs_of, make_settings, message, serve_hub
from tests.test_mappings import BASE, RECEIVED

JOIN_TAGS = "join(', ', properties.tags)"


def mapped(payload: dict[str, Any], **spec: Any) -> Any:
    mapping = compile_mapping("test", MappingSpec.model_validate({**BASE, **spec}))
    return normalize(RawEvent("src", "m-1", payload), mapping, RECEIVED, "US")


def cli(mappings_dir: Path, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"HUB_MAPPINGS_DIR": str(mappings_dir), "COLUMNS": "200"})


def preview_api(running_hub: RunningHub, body: Any) -> Any:
    return running_hub.client.post("/api/mappings/default/preview", json=body,
                                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def wait_for(predicate: Any, timeout: float = 6.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.1)
    return predicate()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def touch_later(path: Path) -> None:
    """Some file systems keep mtimes in whole seconds: make the change visible regardless."""
    later = time.time() + 2
    os.utime(path, (later, later))


# --- an expression that fails on one event's data -----------------------------------------------------------------

@pytest.mark.parametrize(("spec", "field", "expression"), [
    ({"fields": {"properties.tag_list": "join(', ', tags)"}}, "properties.tag_list", "join(', ', tags)"),
    ({"properties": "merge(props || `{}`, {via: 'x'})"}, "properties", "merge(props || `{}`, {via: 'x'})"),
    ({"identifiers": {"user_id": "max_by(people, &age).id"}}, "identifiers.user_id", "max_by(people, &age).id"),
    ({"drop": [{"when": "people[?age > `30`]", "reason": "adults"}]}, "drop.0.when", "people[?age > `30`]"),
])
def test_a_function_failing_on_one_events_data_is_a_mapping_error_naming_field_and_expression(
    spec: dict[str, Any], field: str, expression: str
) -> None:
    """jmespath's JMESPathTypeError (join() of a string, merge() of a string), and the plain TypeError it lets out
    comparing a number with a string, escaped normalize(): the pipeline retried the event as a crash."""
    payload = {"name": "x", "uid": "u", "tags": "a", "props": "web", "people": [{"age": 40, "id": "p"}, {"age": "old"}]}
    with pytest.raises(MappingError) as raised:
        mapped(payload, **spec)
    assert str(raised.value).startswith(f"{field}: mapping {expression!r} failed on this event: ")


def test_the_same_expression_maps_an_event_whose_data_suits_it() -> None:
    touchpoint = mapped({"name": "x", "uid": "u", "tags": ["a", "b"]}, fields={"properties.tag_list": "join(', ', tags)"})
    assert touchpoint.properties == {"tag_list": "a, b"}


def test_pipeline_quarantines_an_event_a_function_fails_on_at_once_under_stage_mapping(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders
) -> None:
    """It was retried with backoff (2, 4, 8, 16 s), then quarantined under `pipeline` naming no field."""
    edit(mappings_dir / "segment.yaml", "fields:\n", f'fields:\n  properties.tag_list: "{JOIN_TAGS}"\n')
    settings = make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as running:
        running.send(message(userId="u-1", event="Tagged", properties={"tags": "a"}),
                     message(userId="u-1", event="Tagged", properties={"tags": ["a", "b"]}))
        quarantined = wait_for(lambda: running.admin("/api/quarantine")["quarantine"])
        running.settle()
        stored = running.admin("/api/touchpoints")["touchpoints"]
    assert [tp["properties"]["tag_list"] for tp in stored] == ["a, b"]
    [entry] = quarantined
    assert entry["stage"] == "mapping"
    assert entry["reason"].startswith(f"properties.tag_list: mapping {JOIN_TAGS!r} failed on this event")


def test_cli_preview_reports_an_event_a_function_fails_on_as_unmappable(mappings_dir: Path, tmp_path: Path) -> None:
    """`touchhub mappings preview` printed a jmespath traceback."""
    draft = tmp_path / "segment.draft.yaml"
    draft.write_text((mappings_dir / "segment.yaml").read_text().replace(
        "fields:\n", f'fields:\n  properties.tag_list: "{JOIN_TAGS}"\n', 1))
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"batch": [message(userId="u-1", event="Tagged", properties={"tags": "a"})]}))
    result = cli(mappings_dir, "mappings", "preview", "--json", "--mapping", str(draft), "default", str(sample))
    assert result.exit_code == 0, result.output
    [outcome] = json.loads(result.output)
    assert outcome["outcome"] == "unmappable" and outcome["reason"].startswith("properties.tag_list: ")


# --- values longer than their columns -----------------------------------------------------------------------------

def test_the_length_limits_are_the_widths_of_the_columns() -> None:
    columns = {
        "event": schema.touchpoints.c.event, "moment": schema.touchpoints.c.moment, "kind": schema.touchpoints.c.kind,
        "mapping_version": schema.touchpoints.c.mapping_version,
        "identifier type": schema.identifiers.c.type, "identifier value": schema.identifiers.c.value,
    }
    assert {name: column.type.length for name, column in columns.items()} == MAX_LENGTH


@pytest.mark.parametrize(("field", "spec"), [
    ("event", {}), ("moment", {"moment": "name"}), ("kind", {"kind": "name"}),
])
def test_a_text_field_longer_than_the_hub_keeps_is_a_mapping_error_naming_it(field: str, spec: dict[str, Any]) -> None:
    """PostgreSQL refused the insert (StringDataRightTruncation): retried five times, quarantined as `pipeline`."""
    limit = MAX_LENGTH[field]
    assert mapped({"name": "x" * limit, "uid": "u"}, **spec)  # at the limit: kept
    with pytest.raises(MappingError, match=rf"^{field}: 'x+'\.\.\. is {limit + 1} characters long; the hub keeps at most {limit}"):
        mapped({"name": "x" * (limit + 1), "uid": "u"}, **spec)


def test_an_identifier_longer_than_the_hub_keeps_is_left_out() -> None:
    touchpoint = mapped({"name": "x", "uid": "u" * 321, "anon": "a-1"},
                        identifiers={"user_id": "uid", "anonymous_id": "anon"})
    assert [(i.type, i.value) for i in touchpoint.identifiers] == [("anonymous_id", "a-1")]


@pytest.mark.parametrize(("spec", "key"), [
    ({"events": {"E" * 201: {"stage": "awareness", "moment": "other"}}}, "events"),
    ({"events": {"E": {"stage": "awareness", "moment": "m" * 81}}}, "events.E.moment"),
    ({"default": {"stage": "awareness", "moment": "other", "kind": "k" * 21}}, "default.kind"),
    ({"identifiers": {"t" * 41: "uid"}}, "identifiers"),
])
def test_names_in_a_mapping_file_longer_than_the_hub_keeps_are_refused_at_load(
    tmp_path: Path, spec: dict[str, Any], key: str
) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump({**BASE, **spec}))
    with pytest.raises(ConfigError, match=rf"{path}: {key}: "):
        load_mapping(path)


def test_a_mapping_file_name_too_long_for_the_version_it_stamps_is_refused(tmp_path: Path) -> None:
    path = tmp_path / ("n" * 68 + ".yaml")  # + "@" + 12 hex digits: 81 characters of mapping_version
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match="the file name is 68 characters .* room for 67"):
        load_mapping(path)
    (tmp_path / ("n" * 67 + ".yaml")).write_text(yaml.safe_dump(BASE))
    assert len(load_mapping(tmp_path / ("n" * 67 + ".yaml")).version) == 80


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_an_overlong_event_is_quarantined_at_once_and_an_overlong_id_left_out(running_hub: RunningHub) -> None:
    """Both were retried with backoff as if the database were down, then quarantined under `pipeline`."""
    running_hub.send(message(userId="u-1", event="Viewed " + "x" * 250),
                     message(userId="u" * 400, anonymousId="visitor-1", event="Product Viewed"))
    quarantined = wait_for(lambda: running_hub.admin("/api/quarantine")["quarantine"])
    running_hub.settle()
    assert [(q["stage"], q["reason"][:6]) for q in quarantined] == [("mapping", "event:")]
    [stored] = running_hub.admin("/api/touchpoints")["touchpoints"]
    assert stored["identifiers"] == [["anonymous_id", "visitor-1"]]


# --- YAML values that are not JSON --------------------------------------------------------------------------------

def test_yaml_dates_in_a_mapping_are_iso_text(tmp_path: Path) -> None:
    """YAML reads an unquoted date as datetime.date: every event then failed at the insert (not JSON)."""
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(BASE) + "constants:\n  properties.campaign_start: 2026-11-01\n"
                    "  properties.launch: 2026-11-01 09:30:00Z\n"
                    "value_maps:\n  properties.week:\n    2026-11-02: first week\n")
    mapping = load_mapping(path)
    touchpoint = normalize(RawEvent("src", "m-1", {"name": "x", "uid": "u", "props": {"week": "2026-11-02"}}),
                           mapping, RECEIVED, "US")
    assert touchpoint.properties == {"campaign_start": "2026-11-01", "launch": "2026-11-01T09:30:00+00:00",
                                     "week": "first week"}


@pytest.mark.parametrize("value", ["!!set {a, b}", "!!binary aGk="])
def test_a_yaml_value_json_cannot_hold_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(BASE) + f"constants:\n  properties.tags: {value}\n")
    with pytest.raises(ConfigError, match=rf"{path}: constants.properties.tags: input was not a valid JSON value"):
        load_mapping(path)


# --- keys given twice ---------------------------------------------------------------------------------------------

PRODUCT_VIEWED_AGAIN = "  Product Viewed:     {stage: awareness, moment: browsing}\ndefault:"


def test_mappings_check_refuses_a_key_given_twice_at_its_line(mappings_dir: Path) -> None:
    """PyYAML keeps the last of two equal keys without a word: `mappings check` said OK."""
    path = mappings_dir / "segment.yaml"
    edit(path, "default:", PRODUCT_VIEWED_AGAIN)
    lines = path.read_text().splitlines()
    first = lines.index("  Product Viewed:     {stage: consideration, moment: product_view}") + 1
    second = lines.index(PRODUCT_VIEWED_AGAIN.splitlines()[0]) + 1
    result = cli(mappings_dir, "mappings", "check")
    assert result.exit_code == 1, result.output
    assert f"{path}:{second}: 'Product Viewed' is given twice (first at line {first})" in result.output


@pytest.fixture
def catalog_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    with logs_of(monkeypatch, mapping_catalog) as logs:
        yield logs


def test_hot_reload_refuses_a_key_given_twice_and_keeps_the_last_good_mapping(
    mappings_dir: Path, catalog_logs: list[dict[str, Any]]
) -> None:
    catalog = MappingCatalog(mappings_dir, {"default": "segment.yaml"}, check_seconds=60)
    path = mappings_dir / "segment.yaml"
    edit(path, "default:", PRODUCT_VIEWED_AGAIN)
    touch_later(path)
    assert catalog.refresh() == ["segment.yaml"]
    assert catalog["default"].label("Product Viewed").moment == "product_view"
    assert "'Product Viewed' is given twice" in catalog_logs[0]["problems"][0]


def test_a_key_given_beside_a_yaml_merge_overrides_it_as_yaml_means(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump({key: value for key, value in BASE.items() if key != "events"}) + (
        "events:\n"
        "  Product Viewed: &viewed {stage: consideration, moment: product_view}\n"
        "  Product Compared: {<<: *viewed, moment: comparing}\n"))
    label = load_mapping(path).label("Product Compared")
    assert (label.stage, label.moment) == ("consideration", "comparing")


# --- `mappings check` and the mapping files sources.yaml names ------------------------------------------------------

@pytest.mark.parametrize("mapping_file", ["shop.yml", "shop/orders.yaml"])
def test_mappings_check_validates_a_mapping_sources_yaml_names_outside_the_top_level_yaml(
    mappings_dir: Path, mapping_file: str
) -> None:
    """Only `*.yaml` at the top was checked: a broken `shop.yml` passed, and the hub refused to start."""
    target = mappings_dir / mapping_file
    target.parent.mkdir(exist_ok=True)
    target.write_text((mappings_dir / "generic_hmac.yaml").read_text())
    (mappings_dir / "sources.yaml").write_text(
        f"sources:\n  - id: shop\n    connector: generic_hmac\n    mapping: {mapping_file}\n"
        "    secrets: {secret: HUB_UNSET_SHOP_SECRET}\n")
    top_level = len(list(mappings_dir.glob("*.yaml")))
    assert f"{top_level + 1} file(s) OK" in cli(mappings_dir, "mappings", "check").output
    edit(target, "event: ", "event: '(' # ")
    result = cli(mappings_dir, "mappings", "check")
    assert result.exit_code == 1, result.output
    assert f"{target}:" in result.output and "event: Value error, invalid JMESPath expression '('" in result.output


# --- the JSON Schema editors lint with -------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"constants": {"nope": 1}},
    {"defaults": {"properties": {"plan": "free"}}},
    {"value_maps": {"properties.plan.tier": {"a": "b"}}},
    {"fields": {"event": "name"}},
    {"identifiers": {"t" * 41: "uid"}},
    {"events": {"E" * 201: {"stage": "awareness", "moment": "other"}}},
])
def test_the_mapping_json_schema_refuses_the_keys_the_loader_refuses(extra: dict[str, Any]) -> None:
    """The field-path rules lived only in validators: editors showed these files as valid."""
    document = {**BASE, **extra}
    with pytest.raises(ValidationError):
        MappingSpec.model_validate(document)
    schema_document = json.loads((PROJECT_MAPPINGS / "schema" / "mapping.schema.json").read_text())
    assert list(jsonschema.Draft202012Validator(schema_document).iter_errors(document))


# --- value maps and JSON's spelling -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("found", "key"), [(True, "true"), (False, "false"), (None, "null"), (3, "3"), (2.5, "2.5")])
def test_a_value_map_matches_a_json_value_as_json_writes_it(found: Any, key: str) -> None:
    """A found value was looked up as str(): JSON's true as "True", so `'true': ...` never matched."""
    touchpoint = mapped({"name": "x", "uid": "u", "props": {"subscribed": found}},
                        value_maps={"properties.subscribed": {key: "mapped"}})
    assert touchpoint.properties["subscribed"] == "mapped"


def test_a_value_map_key_yaml_reads_as_no_text_is_refused_asking_to_quote_it(tmp_path: Path) -> None:
    """Files are read as YAML 1.2: `yes` is text there, `true` still a boolean."""
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(BASE) + "value_maps:\n  properties.subscribed:\n    true: opted in\n")
    with pytest.raises(ConfigError, match=r"value_maps: Value error, properties.subscribed: key True is not text: quote it"):
        load_mapping(path)


# --- the phone region setting ------------------------------------------------------------------------------------------

def test_the_phone_region_is_read_in_any_case(tmp_path: Path) -> None:
    assert make_settings(tmp_path, default_phone_region="gb").default_phone_region == "GB"


def test_a_phone_region_phonenumbers_does_not_know_is_refused_naming_the_setting(tmp_path: Path) -> None:
    """`UK` (phonenumbers says GB) made every national number unparseable: dropped as junk, without a word."""
    with pytest.raises(ValidationError, match=r"HUB_DEFAULT_PHONE_REGION: 'UK' is not a region .*\(GB, not UK"):
        make_settings(tmp_path, default_phone_region="UK")


# --- the preview --------------------------------------------------------------------------------------------------------

def test_preview_shows_every_identifier_and_numbers_outcomes_by_their_place_in_the_sample(running_hub: RunningHub) -> None:
    """The preview showed one value per identifier type while the pipeline links them all, and numbered
    outcomes by kept event: [refused, valid] were both "index 0"."""
    sample = {"batch": [{"type": "track", "event": "No Identity"},
                        message("identify", userId="u-9", traits={"email": "home@example.org"},
                                context={"traits": {"email": "work@example.org"}})]}
    outcomes = preview_api(running_hub, {"sample": sample}).json()["outcomes"]
    assert [(o["index"], o["outcome"]) for o in outcomes] == [(0, "refused"), (1, "touchpoint")]
    assert outcomes[1]["touchpoint"]["identifiers"] == {"user_id": ["u-9"], "email": ["home@example.org", "work@example.org"]}


# --- a reload that fails in a way the loader does not name ------------------------------------------------------------------

def test_a_reload_failing_with_any_error_keeps_the_last_good_mapping_and_logs_why(
    mappings_dir: Path, catalog_logs: list[dict[str, Any]]
) -> None:
    """YAML nested past Python's recursion limit raised RecursionError out of refresh() into the pipeline."""
    catalog = MappingCatalog(mappings_dir, {"default": "segment.yaml"}, check_seconds=60)
    good = catalog["default"].version
    path = mappings_dir / "segment.yaml"
    path.write_text(path.read_text() + "description: " + "[" * 5000 + "]" * 5000 + "\n")
    touch_later(path)
    assert catalog.refresh() == ["segment.yaml"]
    assert catalog["default"].version == good
    [refused] = catalog_logs
    assert refused["event"] == "mapping change refused; the last good version stays active"
    assert refused["problems"][0] == (
        f"{path}: nested too deeply to read: lists or maps hundreds of levels inside each other; look for brackets pasted by mistake"
    )


def test_a_mapping_that_cannot_be_read_is_a_problem_named_by_its_file(mappings_dir: Path) -> None:
    path = mappings_dir / "segment.yaml"
    path.unlink()
    path.mkdir()
    with pytest.raises(ConfigError, match=rf"{path}: cannot be read \(Is a directory\)"):
        load_mapping(path)
