"""What the command line told a new ops person, checked against what the hub then does.

`mappings check` must refuse what start-up refuses; `replay` must not blame
the mapping for events a forgotten person took with them; a CA bundle or
service-account key file that cannot work is a problem naming its setting,
never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors.base import load_registry
from hub.cli import app
from hub.mapping_check import check_folder
from hub.errors import ConfigError
from hub.runtime import Hub
from tests.conftest import ADMIN_TOKEN, WRITE_KEY, RunningHub, make_settings, message

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))
RESERVED = "'default' is the built-in source of HUB_DEFAULT_WRITE_KEY; pick another id"


def flat(output: str) -> str:
    """Output with Rich's wrapping and table borders folded away."""
    return " ".join(output.replace("│", " ").split())


def start_problems(tmp_path: Path, **settings: Any) -> list[str]:
    """What the hub says when it refuses to start with `settings`."""
    with pytest.raises(ConfigError) as raised:
        Hub(make_settings(tmp_path, **settings))
    return raised.value.problems


def test_mappings_check_refuses_a_source_with_the_reserved_id_default(tmp_path: Path, mappings_dir: Path) -> None:
    """`mappings check` passed a sources.yaml entry with `id: default` ("a clean check means it starts"), then
    serve and worker refused it: the rule lived only where the hub builds its sources."""
    (mappings_dir / "sources.yaml").write_text(
        "sources:\n  - id: default\n    connector: generic_hmac\n    secrets: {secret: HUB_SRC_X_SECRET}\n"
    )
    where = f"{mappings_dir / 'sources.yaml'}:2: sources.0.id"
    assert start_problems(tmp_path, mappings_dir=mappings_dir) == [f"{where}: {RESERVED}"]

    checked = CliRunner().invoke(app, ["mappings", "check"], env={"HUB_MAPPINGS_DIR": str(mappings_dir), "COLUMNS": "300"})
    assert checked.exit_code == 1, checked.output
    assert f"{where}: {RESERVED}" in flat(checked.output)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_replay_does_not_report_a_forgotten_persons_erased_events_as_unmappable(
    running_hub: RunningHub, database_url: str
) -> None:
    """Forgetting a person empties their raw events to {}; every replay after it re-normalized those and
    reported them "still unmappable" ("event: mapping ... gave None"), telling ops the mapping was broken."""
    running_hub.send(message("identify", userId="gone-1", traits={"email": "gone@example.com"}),
                     message(userId="gone-1", event="Product Viewed"), message(userId="kept-1", event="Product Viewed"))
    running_hub.settle()
    profile = running_hub.admin("/api/profiles/lookup", type="user_id", value="gone-1")["profile_id"]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert running_hub.client.delete(f"/api/profiles/{profile}", headers=headers).status_code == 200

    env = {"HUB_DATABASE_URL": database_url, "HUB_DEFAULT_WRITE_KEY": WRITE_KEY, "COLUMNS": "120"}
    result = CliRunner().invoke(app, ["replay", "--source", "default", "--since", "1h"], env=env)
    assert result.exit_code == 0, result.output
    lines = {flat(line) for line in result.output.splitlines()}
    assert {"still unmappable 0", "already current 1"} <= lines, result.output  # kept-1's event alone
    assert "gave None" not in result.output

    answer = running_hub.client.post("/api/sources/default/replay", params={"since": "1h"}, headers=headers)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["unchanged"], report["unmappable"], report["errors"]) == (1, 0, {})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read '{path}' (No such file or directory); point it at a PEM bundle"),
        ("not a certificate\n", "'{path}' holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND); point it at a PEM bundle"),
    ],
    ids=["missing", "not-pem"],
)
def test_an_smtp_ca_file_that_is_missing_or_not_pem_is_a_readable_problem(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    """HUB_SMTP_CA_FILE naming a file that is not there, or not a PEM bundle, ended serve and worker in a
    FileNotFoundError / SSLError traceback from the email destination's constructor."""
    ca_file = tmp_path / "relay-ca.pem"
    if content is not None:
        ca_file.write_text(content)
    [reported] = start_problems(tmp_path, smtp_ca_file=str(ca_file))
    assert reported.startswith("HUB_SMTP_* / HUB_EMAIL_FROM / HUB_UNSUBSCRIBE_*: ca_file: "), reported
    assert problem.format(path=ca_file) in reported, reported


def test_the_worker_exits_2_naming_an_smtp_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    """The process an ops person starts: it ended in an SSLError traceback, exit 1."""
    (tmp_path / "relay-ca.pem").write_text("not a certificate\n")
    result = subprocess.run(
        [TOUCHHUB, "worker", "--only", "timers"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PATH": "", "COLUMNS": "200", "HUB_SMTP_CA_FILE": str(tmp_path / "relay-ca.pem"),
             "HUB_DATABASE_URL": f"sqlite:///{tmp_path}/hub.db"},
    )
    output = flat(result.stdout + result.stderr)
    assert result.returncode == 2 and "Traceback" not in output, output[-600:]
    assert "HUB_SMTP_* / HUB_EMAIL_FROM / HUB_UNSUBSCRIBE_*: ca_file:" in output, output[-600:]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[]", 'is JSON but not an object, as a key is ({"type": "service_account", ...})'),
        ("null", 'is JSON but not an object, as a key is ({"type": "service_account", ...})'),
        ("{not json", "is not JSON (Expecting property name enclosed in double quotes"),
        ('{"type": "authorized_user"}', 'is not a service-account key (Invalid service account certificate'),
    ],
    ids=["list", "null", "not-json", "not-a-service-account"],
)
def test_an_fcm_key_file_that_is_not_a_service_account_key_is_a_readable_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    """HUB_FCM_CREDENTIALS_FILE holding JSON that is not an object ended start-up in an AttributeError traceback
    from firebase-admin; other bad keys were refused without naming the setting they came from."""
    key_file = tmp_path / "service-account.json"
    key_file.write_text(content)
    [reported] = start_problems(tmp_path, fcm_credentials_file=key_file)
    assert reported.startswith(f"HUB_FCM_*: credentials_file: Value error, {key_file} {problem}"), reported
    assert reported.endswith("point it at the key JSON the Firebase console gives (Project settings > Service accounts)")


def test_mappings_check_refuses_two_sources_sharing_a_write_key_as_the_hub_does(
    tmp_path: Path, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With both secrets in the environment, two `segment` sources with one write key passed the check, and the
    restart it cleared failed: the hub refuses them (the first would take all the SDK traffic sent with it)."""
    (mappings_dir / "sources.yaml").write_text(
        "sources:\n"
        "  - id: web\n    connector: segment\n    secrets: {write_key: HUB_SRC_WEB_KEY}\n"
        "  - id: app\n    connector: segment\n    secrets: {write_key: HUB_SRC_APP_KEY}\n"
    )
    monkeypatch.setenv("HUB_SRC_WEB_KEY", "one-key-for-both")
    monkeypatch.setenv("HUB_SRC_APP_KEY", "one-key-for-both")
    with pytest.raises(ConfigError) as refused:
        Hub(make_settings(tmp_path, mappings_dir=mappings_dir))
    [at_start] = [problem for problem in refused.value.problems if "same write key" in problem]
    _, problems = check_folder(mappings_dir, load_registry())
    assert [problem for problem in problems if "same write key" in problem] == [at_start]


def test_mappings_check_does_not_call_unset_write_keys_shared(mappings_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check builds sources without their secrets, each unset one as the same placeholder: two sources whose
    write keys are not set where the check runs (CI) were reported as sharing a key, a folder that starts."""
    (mappings_dir / "sources.yaml").write_text(
        "sources:\n"
        "  - id: web\n    connector: segment\n    secrets: {write_key: HUB_SRC_UNSET_WEB}\n"
        "  - id: app\n    connector: segment\n    secrets: {write_key: HUB_SRC_UNSET_APP}\n"
    )
    monkeypatch.delenv("HUB_SRC_UNSET_WEB", raising=False)
    monkeypatch.delenv("HUB_SRC_UNSET_APP", raising=False)
    _, problems = check_folder(mappings_dir, load_registry())
    assert problems == []
