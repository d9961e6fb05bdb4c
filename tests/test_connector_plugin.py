"""docs/connectors.md "Write a connector", followed word for word with an out-of-tree package.

The package in tests/plugins/ must be exactly what the guide shows, and the
guide's commands are run as written: install it, see it in `touchhub
connectors list`, configure a source, check, and send it a submission. Only
pip is given `--target`, a folder of the test's own put on the path of its
commands and of this process: installed into the environment, the package
was seen by the tests other workers run beside it (pytest-xdist), and
half-installed it failed their hubs' start.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.sandbox.providers import SandboxProviders
from tests.conftest import make_settings, serve_hub

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "connectors.md").read_text()
SECTION = GUIDE[GUIDE.index("## Write a connector"):]
PLUGIN = Path(__file__).parent / "plugins" / "touchhub_example_connector"
DISTRIBUTION = "touchhub-example-connector"
TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def blocks(language: str) -> list[str]:
    """The guide's fenced blocks of one language ("" for command lines), in order."""
    found, current, open_language = [], [], None
    for line in SECTION.splitlines(keepends=True):
        if line.startswith("```"):
            if open_language is None:
                open_language, current = line[3:].strip(), []
            else:
                if open_language == language:
                    found.append("".join(current))
                open_language = None
        elif open_language is not None:
            current.append(line)
    return found


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command line of the guide, run here: `pip` is this environment's pip installing into `PYTHONPATH`'s
    folder, `touchhub` its console script."""
    program, *args = shlex.split(command)
    argv = [sys.executable, "-m", "pip", *args, "--target", env["PYTHONPATH"]] if program == "pip" else [TOUCHHUB, *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_is_exactly_what_the_guide_shows() -> None:
    shown = blocks("toml") + blocks("python") + blocks("yaml")
    for path in ("pyproject.toml", "touchhub_example_connector/__init__.py", "example_form.yaml"):
        assert (PLUGIN / path).read_text() in shown, f"{path} differs from docs/connectors.md"


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The guide's working folder: the package, as step 1 creates it, and a mappings folder."""
    shutil.copytree(PLUGIN, tmp_path / "touchhub_example_connector")
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    yield tmp_path
    importlib.invalidate_caches()


def test_following_the_guide_adds_a_working_source(workdir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch) -> None:
    site = workdir / "site-packages"
    env = {"PATH": os.environ.get("PATH", ""), "COLUMNS": "200", "HUB_MAPPINGS_DIR": str(workdir / "mappings"),
           "HUB_SRC_FORMS_TOKEN": "form-token", "PYTHONPATH": str(site)}
    install, list_connectors = blocks("")[0].strip().splitlines()
    installed = run(install, workdir, env)
    assert installed.returncode == 0, installed.stderr
    listed = run(list_connectors, workdir, env)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if "example_form" in line]
    assert "source" in row and "token*" in row and DISTRIBUTION in listed.stdout

    shutil.copy(workdir / "touchhub_example_connector" / "example_form.yaml", workdir / "mappings")  # step 3
    sources_yaml = next(block for block in blocks("yaml") if block.startswith("sources:"))
    (workdir / "mappings" / "sources.yaml").write_text(sources_yaml)  # step 5
    export, check = blocks("")[1].strip().splitlines()
    assert export.startswith("export HUB_SRC_FORMS_TOKEN=")
    checked = run(check, workdir, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    monkeypatch.syspath_prepend(str(site))  # invalidates the import caches: another process installed it
    monkeypatch.setenv("HUB_SRC_FORMS_TOKEN", "form-token")
    settings = make_settings(workdir, mappings_dir=workdir / "mappings", **sandbox.settings_overrides())
    with serve_hub(settings, sandbox) as hub:
        submission = {"submission_id": "sub-1", "form_name": "support", "answers": {"email": "Ana@Example.com", "topic": "refund"}}
        assert hub.client.post("/v1/webhooks/forms", json=submission, headers={"X-Form-Token": "wrong"}).status_code == 401
        answer = hub.client.post("/v1/webhooks/forms", json=submission, headers={"X-Form-Token": "form-token"})
        assert answer.status_code == 200, answer.text
        hub.settle()
        [touchpoint] = hub.admin("/api/touchpoints", source="forms")["touchpoints"]
    assert (touchpoint["event"], touchpoint["stage"], touchpoint["moment"]) == ("Ticket Submitted", "retention", "support_request")
    assert touchpoint["identifiers"] == [["email", "ana@example.com"]]
