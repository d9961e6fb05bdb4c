"""The `touchhub` CLI at its edges: user text holding markup, wrong settings, options that took anything.

Each test runs the real console script from a scratch folder with only the settings it names, as an ops
person's shell would, and asserts what they see: a readable problem and exit 2, never a traceback.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hub.settings import PROJECT_MAPPINGS, HubSettings
from tests.conftest import ADMIN_TOKEN, RunningHub, free_port

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def touchhub(*args: str, cwd: Path, timeout: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
    """`touchhub ARGS` run from `cwd` with only the HUB_* settings given (and no .env but `cwd`'s)."""
    return subprocess.run(
        [TOUCHHUB, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={"COLUMNS": "200", "PATH": "", **env},
    )


def flat(result: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr with Rich's wrapping and table borders folded away."""
    return " ".join((result.stdout + result.stderr).replace("│", " ").split())


def exit_code_within(args: list[str], cwd: Path, env: dict[str, str], wait: float) -> int | None:
    """The exit code of a long-lived command if it ended within `wait` seconds; else None (and it is stopped)."""
    process = subprocess.Popen([TOUCHHUB, *args], cwd=cwd, env={"COLUMNS": "200", "PATH": "", **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return None


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture
def maps(tmp_path: Path) -> Path:
    folder = tmp_path / "maps"
    shutil.copytree(PROJECT_MAPPINGS, folder)
    return folder


@pytest.fixture
def store_env(scratch: Path, tmp_path: Path) -> dict[str, str]:
    env = {"HUB_DATABASE_URL": f"sqlite:///{tmp_path}/hub.db"}
    assert touchhub("migrate", cwd=scratch, **env).returncode == 0
    return env


# --- user text is printed as it is --------------------------------------------------------------------------------


def test_a_key_name_with_brackets_is_printed_as_given_on_create_and_revoke(scratch: Path, store_env: dict[str, str]) -> None:
    """`styled` escaped the name before `{!r}` repr()ed it: "grafana [prod]" printed as "Key 'grafana \\' holds"."""
    created = touchhub("keys", "create", "grafana [prod]", "--scope", "read", cwd=scratch, **store_env)
    assert created.returncode == 0 and "Key 'grafana [prod]' holds: read" in flat(created), flat(created)
    key_id = created.stdout.strip().split("_")[1]
    revoked = touchhub("keys", "revoke", key_id, cwd=scratch, **store_env)
    assert revoked.returncode == 0 and f"Key {key_id} ('grafana [prod]') revoked" in flat(revoked), flat(revoked)


def test_a_key_name_with_a_closing_tag_is_made_once_and_confirmed(scratch: Path, store_env: dict[str, str]) -> None:
    """"ops [/] oncall": the key was stored, then the confirmation raised MarkupError (exit 1) for a live key."""
    created = touchhub("keys", "create", "ops [/] oncall", "--scope", "read", cwd=scratch, **store_env)
    assert created.returncode == 0 and "Key 'ops [/] oncall' holds" in flat(created), flat(created)[-300:]
    assert flat(touchhub("keys", "list", cwd=scratch, **store_env)).count("ops [/] oncall") == 1


@pytest.mark.parametrize(
    ("args", "answer"),
    [
        (["connectors", "show", "[/]x"], "No connector '[/]x'"),
        (["deliveries", "replay", "[/]x"], "No delivery '[/]x'"),
        (["profiles", "explain", "[/]x"], "No profile '[/]x'"),
        (["keys", "revoke", "[/]x"], "No API key has the id '[/]x'"),
        (["replay", "--source", "[/]x", "--since", "1h"], "No source '[/]x'"),
    ],
    ids=lambda value: " ".join(value[:2]) if isinstance(value, list) else "",
)
def test_an_unknown_id_holding_markup_gets_the_not_found_answer(
    scratch: Path, store_env: dict[str, str], args: list[str], answer: str
) -> None:
    """The id went into Rich markup unescaped: "[/]" ended in a MarkupError traceback instead of "No ... '[/]x'"."""
    result = touchhub(*args, cwd=scratch, **store_env)
    assert result.returncode in (1, 2) and answer in flat(result), flat(result)[-300:]


def test_mappings_preview_shows_values_with_square_brackets_as_they_are(scratch: Path, tmp_path: Path) -> None:
    """Table cells were read as markup: "[test] order" showed as " order", and "[/]" ended in a traceback."""
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"type": "track", "event": "[/]", "userId": "u1", "messageId": "m1",
                                  "properties": {"name": "[test] order", "note": "[b]big[/b] deal"}}))
    result = touchhub("mappings", "preview", "default", str(sample), cwd=scratch)
    assert result.returncode == 0, flat(result)[-300:]
    for value in ('"[test] order"', '"[b]big[/b] deal"', '"[/]"'):
        assert value in flat(result)


# --- a wrong HUB_DATABASE_URL -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["migrate"], ["worker"], ["deliveries", "list"], ["replay", "--source", "default", "--since", "1h"]])
@pytest.mark.parametrize("url", ["hub.db", "mysql://hub:s3cret@127.0.0.1:1/hub"])
def test_an_unusable_database_url_is_a_readable_problem(scratch: Path, command: list[str], url: str) -> None:
    """A bare file name, or a driver not installed: a traceback (ArgumentError / ImportError) and exit 1."""
    result = touchhub(*command, cwd=scratch, timeout=60, HUB_DATABASE_URL=url)
    assert "Traceback" not in flat(result) and result.returncode == 2, flat(result)[-400:]
    assert "HUB_DATABASE_URL" in flat(result) and "s3cret" not in flat(result)


def test_migrate_against_an_unreachable_postgresql_names_the_url_without_its_password(scratch: Path) -> None:
    """`touchhub migrate` with a PostgreSQL that is down ended in an OperationalError traceback, exit 1."""
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://hub:s3cret@127.0.0.1:{free_port()}/hub"
    result = touchhub("migrate", cwd=scratch, timeout=60, HUB_DATABASE_URL=url)
    assert "Traceback" not in flat(result) and result.returncode == 2, flat(result)[-400:]
    assert "HUB_DATABASE_URL=postgresql+psycopg://hub:***@127.0.0.1" in flat(result) and "s3cret" not in flat(result)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_hosted_providers_postgres_url_is_used_as_postgresql(scratch: Path, database_url: str) -> None:
    """Heroku and Render hand out `postgres://`, which SQLAlchemy refused: NoSuchModuleError, exit 1."""
    hosted = "postgres://" + database_url.partition("://")[2]
    migrated = touchhub("migrate", cwd=scratch, timeout=60, HUB_DATABASE_URL=hosted)
    assert migrated.returncode == 0, flat(migrated)[-400:]
    listed = touchhub("deliveries", "list", "--status", "dead", cwd=scratch, timeout=60, HUB_DATABASE_URL=hosted)
    assert listed.returncode == 0 and "Deliveries (0 shown)" in flat(listed), flat(listed)[-400:]


def test_replay_from_a_folder_without_the_store_says_so_and_creates_nothing(scratch: Path) -> None:
    """`touchhub replay` made and migrated an empty var/hub.db and reported "0 rewritten", exit 0."""
    result = touchhub("replay", "--source", "default", "--since", "24h", cwd=scratch)
    assert result.returncode == 2 and "no database file" in flat(result), flat(result)
    assert not (scratch / "var").exists()


# --- options and settings that took anything ----------------------------------------------------------------------


def test_deliveries_list_refuses_an_unknown_status_listing_the_statuses(scratch: Path, store_env: dict[str, str]) -> None:
    """`--status dea` (a typo of dead) showed "Deliveries (0 shown)", exit 0: an empty dead-letter queue."""
    result = touchhub("deliveries", "list", "--status", "dea", cwd=scratch, **store_env)
    assert result.returncode == 2, flat(result)
    assert all(status in flat(result) for status in ("pending", "retrying", "sent", "delivered", "failed", "dead"))


def test_the_api_refuses_an_unknown_delivery_status_naming_the_choices(running_hub: RunningHub) -> None:
    """/api/deliveries?status=dea answered 200 with no deliveries, as if the dead-letter queue were empty."""
    answer = running_hub.client.get("/api/deliveries", params={"status": "dea"},
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 400
    assert "status" in answer.json()["detail"] and "dead" in answer.json()["detail"]
    assert running_hub.admin("/api/deliveries", status="dead")["deliveries"] == []


@pytest.mark.parametrize("port", ["0", "70000"])
def test_a_port_outside_1_to_65535_is_refused(port: str) -> None:
    """HUB_PORT=70000 was taken: uvicorn listened on 70000 - 65536 and links carried the impossible port."""
    with pytest.raises(ValidationError, match="port"):
        HubSettings(port=port)  # type: ignore[arg-type]


def test_serve_with_a_port_above_65535_exits_2(scratch: Path, tmp_path: Path) -> None:
    """`touchhub serve --port 70000` announced port 70000 and listened on another."""
    code = exit_code_within(["serve", "--port", str(free_port() + 65536)], scratch,
                            {"HUB_DATABASE_URL": f"sqlite:///{tmp_path}/hub.db"}, wait=20)
    assert code == 2


def test_an_empty_unsubscribe_secret_is_refused_at_load(scratch: Path) -> None:
    """HUB_UNSUBSCRIBE_SECRET= was accepted, and every email's unsubscribe link, signed with "", was refused."""
    result = touchhub("migrate", cwd=scratch, HUB_UNSUBSCRIBE_SECRET="", HUB_DATABASE_URL="sqlite://")
    assert result.returncode == 2 and "HUB_UNSUBSCRIBE_SECRET" in flat(result), flat(result)


# --- the demo --------------------------------------------------------------------------------------------------------


def test_the_demo_runs_all_its_workers_whatever_hub_workers_says(scratch: Path) -> None:
    """With HUB_WORKERS=pipeline in .env no delivery or timer worker ran: every delivery stayed pending, exit 1."""
    (scratch / ".env").write_text("HUB_WORKERS=pipeline\n")
    result = touchhub("demo", cwd=scratch, timeout=120)
    assert result.returncode == 0, flat(result)[-600:]
    lines = {" ".join(line.replace("│", " ").split()) for line in result.stdout.splitlines()}
    assert "email sent 4 4" in lines and "Trigger fired: cart_abandonment 3" in lines


@pytest.mark.parametrize("content", ['{"type": "track"}\n{"type": "track"}\n', "[]", '{"events": [{"at": "2h"}]}'])
def test_demo_with_a_file_that_is_not_a_journey_is_a_usage_error(scratch: Path, tmp_path: Path, content: str) -> None:
    """JSON lines, an array, an entry without its message: JSONDecodeError / TypeError / KeyError tracebacks."""
    journey = tmp_path / "journey.jsonl"
    journey.write_text(content)
    result = touchhub("demo", "--journey", str(journey), cwd=scratch)
    assert "Traceback" not in flat(result) and result.returncode == 2, flat(result)[-400:]
    assert "--journey" in flat(result) and "journey.jsonl" in flat(result) and '"events"' in flat(result)


# --- `touchhub mappings check` runs the hub's start-up checks -----------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_mappings_check_fails_on_a_folder_without_the_required_files(scratch: Path, tmp_path: Path, kind: str) -> None:
    """A typo in HUB_MAPPINGS_DIR got "0 file(s) OK", exit 0, while the hub refused to start on the folder."""
    folder = tmp_path / "mapings"
    if kind == "empty":
        folder.mkdir()
    check = touchhub("mappings", "check", cwd=scratch, HUB_MAPPINGS_DIR=str(folder))
    assert check.returncode == 1, flat(check)
    for name in ("segment.yaml", "routes.yaml", "triggers.yaml"):
        assert f"{folder / name}: file not found" in flat(check)


def test_mappings_check_reports_a_template_that_does_not_parse(scratch: Path, maps: Path) -> None:
    """A stray `}` in a template passed the check; the hub then refused to start (TemplateSyntaxError)."""
    template = maps / "templates" / "cart_abandonment.push.j2"
    template.write_text(template.read_text().replace("}}", "}", 1))
    check = touchhub("mappings", "check", cwd=scratch, HUB_MAPPINGS_DIR=str(maps))
    assert check.returncode == 1 and f"{template}: TemplateSyntaxError" in flat(check), flat(check)


def test_mappings_check_reports_a_template_a_rule_names_that_does_not_exist(scratch: Path, maps: Path) -> None:
    """A rule's template deleted: the check said OK, the hub refused to start (TemplateNotFound)."""
    (maps / "templates" / "high_intent_pricing.crm.j2").unlink()
    check = touchhub("mappings", "check", cwd=scratch, HUB_MAPPINGS_DIR=str(maps))
    assert check.returncode == 1 and "high_intent_pricing.crm.j2" in flat(check), flat(check)


def test_mappings_check_reports_an_identifier_type_identity_yaml_does_not_declare(scratch: Path, maps: Path) -> None:
    """A mapping linking an undeclared identifier type: the check said OK, the hub refused to start."""
    mapping = maps / "segment.yaml"
    mapping.write_text(mapping.read_text().replace(
        "  device_id: context.device.id\n", "  device_id: context.device.id\n  shopify_id: context.shopify_id\n"
    ))
    check = touchhub("mappings", "check", cwd=scratch, HUB_MAPPINGS_DIR=str(maps))
    assert check.returncode == 1, flat(check)
    assert "identifiers.shopify_id: not declared in identity.yaml" in flat(check)


def test_mappings_check_passes_the_shipped_folder(scratch: Path) -> None:
    """The start-up checks added to the check find nothing wrong with the folder the hub ships."""
    check = touchhub("mappings", "check", cwd=scratch)
    assert check.returncode == 0 and "file(s) OK" in flat(check), flat(check)

