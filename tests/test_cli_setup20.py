"""Settings a new ops person gets wrong while setting the hub up, met on the command line.

Each wrong setting must end a command with exit 2 and a line naming the setting and what to do, not a traceback
(exit 1) and not a hub that starts and then fails every event or sends links no one can follow.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hub.cli import app
from hub.errors import ConfigError
from hub.rulebook import RuleBook
from hub.settings import PROJECT_MAPPINGS

TOUCHHUB = str(Path(sys.executable).with_name("touchhub"))


def cli(*args: str, **settings: str) -> Any:
    """`touchhub ARGS` in this process with the HUB_* settings given (and the project's mappings)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **settings})


def flat(output: str) -> str:
    """The output with Rich's wrapping folded away."""
    return " ".join(output.split())


def refused(result: Any, setting: str) -> str:
    """The refusal's text, once it is asserted to be exit 2 naming `setting` with no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2 and setting in flat(result.output), (result.exit_code, flat(result.output)[-500:])
    return flat(result.output)


# --- HUB_DATABASE_URL ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_the_way", ["the folder is a file", "the writer lock is a folder"])
def test_a_store_folder_that_cannot_be_used_is_a_readable_problem(tmp_path: Path, in_the_way: str) -> None:
    """With `var` a file, sqlite:///var/hub.db ended migrate, serve and worker in a FileExistsError traceback (the
    folder's mkdir); a folder where the writer lock's file goes, in an IsADirectoryError one."""
    if in_the_way == "the folder is a file":
        (tmp_path / "var").write_text("not a folder\n")
    else:
        (tmp_path / "var" / "hub.db-writer.lock").mkdir(parents=True)
    text = refused(cli("migrate", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/var/hub.db"), "HUB_DATABASE_URL")
    assert str(tmp_path / "var") in text and "point HUB_DATABASE_URL at a file in a folder" in text


def test_a_worker_on_a_store_folder_that_is_a_file_exits_2(tmp_path: Path) -> None:
    """The hub opens its store the same way: `touchhub worker` ended in the same traceback."""
    (tmp_path / "var").write_text("not a folder\n")
    refused(cli("worker", "--only", "timers", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/var/hub.db"), "HUB_DATABASE_URL")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:hub?mode=memory&uri=true"])
def test_an_in_memory_store_is_refused(url: str) -> None:
    """`migrate` said "Schema is up to date" and `serve` started, but SQLite gives each pooled connection its own
    empty memory database: every ingest was a 500 (no such table: inbox), and nothing could survive a restart."""
    text = refused(cli("migrate", HUB_DATABASE_URL=url), "HUB_DATABASE_URL")
    assert "give a file, e.g. sqlite:///var/hub.db" in text and "Schema is up to date" not in text


# --- HUB_PORT -----------------------------------------------------------------------------------------------------


def test_serve_on_a_port_in_use_exits_2_saying_what_to_do(tmp_path: Path) -> None:
    """`touchhub serve` on a port something listens on announced "Touchpoint Hub on http://127.0.0.1:PORT",
    started the hub, then exited 3 with only uvicorn's "[Errno 98]" log line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([TOUCHHUB, "serve", "--port", str(port)], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path, env={"COLUMNS": "200", "PATH": "", "HUB_DATABASE_URL": f"sqlite:///{tmp_path}/hub.db"})
    text = flat(result.stdout + result.stderr)
    assert result.returncode == 2, (result.returncode, text[-500:])
    assert f"HUB_PORT (--port): cannot listen on 127.0.0.1:{port}" in text and "pick a free port" in text, text[-500:]
    assert "Touchpoint Hub on" not in text  # nothing was started


# --- HUB_MAPPINGS_DIR ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["mappings", "check"], ["worker", "--only", "timers"]])
def test_hub_mappings_dir_naming_a_file_is_a_readable_problem(tmp_path: Path, command: list[str]) -> None:
    """HUB_MAPPINGS_DIR=mappings/triggers.yaml (the file, not its folder) ended `mappings check`, `worker`, `serve`
    and `triggers test` in a NotADirectoryError traceback."""
    maps = tmp_path / "maps"
    shutil.copytree(PROJECT_MAPPINGS, maps)
    text = refused(cli(*command, HUB_MAPPINGS_DIR=str(maps / "triggers.yaml"),
                       HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db"), "HUB_MAPPINGS_DIR")
    assert f"is a file; point it at the folder of the mapping files, e.g. {maps}" in text


def test_rules_under_a_file_are_a_config_problem_not_a_traceback(tmp_path: Path) -> None:
    """Looking at triggers.yaml for edits caught only FileNotFoundError: a file where its folder should be raised
    NotADirectoryError out of the rule book."""
    (tmp_path / "maps").write_text("a file, not the mappings folder\n")
    with pytest.raises(ConfigError, match="triggers.yaml: cannot be read"):
        RuleBook(tmp_path / "maps" / "triggers.yaml")


# --- HUB_LOG_LEVEL and HUB_PUBLIC_BASE_URL ------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["verbose", "trace"])
def test_an_unknown_log_level_names_the_setting_and_the_choices(tmp_path: Path, level: str) -> None:
    """An unknown level passed validation and every command, even `migrate`, ended in "ValueError: Unknown level"."""
    text = refused(cli("migrate", HUB_LOG_LEVEL=level, HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db"), "HUB_LOG_LEVEL")
    assert "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'" in text


def test_a_log_level_in_lower_case_is_taken(tmp_path: Path) -> None:
    """Logging reads `warning` as WARNING; so does the setting."""
    result = cli("migrate", HUB_LOG_LEVEL="warning", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db")
    assert result.exit_code == 0, flat(result.output)


def test_a_public_base_url_without_a_scheme_is_refused_at_start(tmp_path: Path) -> None:
    """HUB_PUBLIC_BASE_URL=hub.example.com was taken, and every unsubscribe link, List-Unsubscribe header and
    Twilio StatusCallback carried a URL no mail client or provider could follow."""
    text = refused(cli("migrate", HUB_PUBLIC_BASE_URL="hub.example.com", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db"),
                   "HUB_PUBLIC_BASE_URL")
    assert "e.g. https://hub.example.com" in text and "(got 'hub.example.com')" in text



def test_an_unsubscribe_link_lifetime_past_a_century_is_refused_at_start(tmp_path: Path) -> None:
    """HUB_UNSUBSCRIBE_LINK_DAYS had no bound: past about 2.9 million days every email's link expiry overflowed the
    calendar, and every email failed as it was sent."""
    text = refused(cli("migrate", HUB_UNSUBSCRIBE_LINK_DAYS="3000000", HUB_DATABASE_URL=f"sqlite:///{tmp_path}/hub.db"),
                   "HUB_UNSUBSCRIBE_LINK_DAYS")
    assert "36500" in text
