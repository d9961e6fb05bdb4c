"""What `touchhub` prints as an ops person meets it: masked traits, ids whole in any width, escaped control
characters, and a readable problem (exit 2) for a busy store, a .env not in UTF-8 and a destination or channel
id the hub does not have.

The commands run in this process (CliRunner) against the store of a real hub or of the `store` fixture; COLUMNS
unset is a pipe (Rich's 80 columns).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from hub.cli_deliveries import app as deliveries_app
from hub.cli_keys import app as keys_app
from hub.cli_profiles import app as profiles_app
from hub.cli_support import writing
from hub.store import Store
from tests.conftest import RunningHub, message, support_ticket


def run(app: typer.Typer, database_url: str, *args: str, columns: str | None = "200", **env: str) -> Result:
    """`touchhub ... ARGS` on the store at `database_url`; `columns=None` prints as into a pipe."""
    return CliRunner().invoke(app, list(args), env={"HUB_DATABASE_URL": database_url, "COLUMNS": columns, **env})


def flat(result: Result) -> str:
    """The output with Rich's wrapping, panels and table borders folded away."""
    return " ".join(result.output.replace("│", " ").split())


# --- PII --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phone, region, shown", [
    ("4155550124", "US", "+1******0124"),
    pytest.param("07911 123456", "GB", "+4*******3456", marks=pytest.mark.hub_settings(default_phone_region="GB")),
], ids=["bare-digits", "national-form"])
def test_profiles_show_masks_the_phone_trait_the_phone_identifier_came_from(
    running_hub: RunningHub, phone: str, region: str, shown: str
) -> None:
    """The phone identifier (from traits.phone) was masked, but the trait it came from was printed whole: traits
    were masked by pattern, and bare digits or a national form match none. A trait holding the device's push
    token, which has no look at all, was printed whole too."""
    running_hub.send(message("identify", userId="pii-1", traits={"phone": phone, "device_token": "fcm-token-0123456789abcdef"},
                             context={"device": {"token": "fcm-token-0123456789abcdef"}}))
    running_hub.settle()
    result = run(profiles_app, running_hub.hub.settings.database_url, "show", "user_id:pii-1",
                 HUB_DEFAULT_PHONE_REGION=region)
    assert result.exit_code == 0, result.output
    assert shown in result.output  # the identifier, masked
    assert phone not in result.output and phone.replace(" ", "") not in result.output, result.output
    assert "fcm-token-…" in result.output and "0123456789abcdef" not in result.output, result.output


def test_profiles_show_does_not_pass_terminal_escape_sequences_from_events_to_the_ops_terminal(
    running_hub: RunningHub,
) -> None:
    """Traits come from SDK traffic sent with the client-side write key; Rich drops BEL and CR but passes ESC, so
    a first name of ESC[2J cleared the ops person's screen and an OSC 52 sequence wrote to their clipboard."""
    running_hub.send(message("identify", userId="esc-1", traits={
        "first_name": "\x1b[2JEve", "company": "\x1b]52;c;cm0gLXJmIH4K\x1b\\ACME",
    }))
    running_hub.settle()
    result = run(profiles_app, running_hub.hub.settings.database_url, "show", "user_id:esc-1", columns=None)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output, repr(result.output)  # in a pipe Rich adds no colour codes of its own
    assert r"\x1b[2JEve" in result.output and r"\x1b]52;c;cm0gLXJmIH4K\x1b\ACME" in flat(result), result.output


# --- ids a command takes back stay whole ---------------------------------------------------------------------------


def test_deliveries_list_in_a_pipe_keeps_each_delivery_id_whole(running_hub: RunningHub) -> None:
    """In a pipe every column folded, so each 36-character delivery id was cut over six lines: nothing to grep
    or to copy into `touchhub deliveries replay ID`."""
    running_hub.send(*support_ticket("pipe-1", {"phone": "+14155550123", "email": "pipe@example.com"}))
    running_hub.settle()
    ids = [item["delivery_id"] for item in running_hub.admin("/api/deliveries")["deliveries"]]
    assert ids
    result = run(deliveries_app, running_hub.hub.settings.database_url, "list", columns=None)
    assert result.exit_code == 0, result.output
    assert [each for each in ids if each not in result.output] == [], result.output


@pytest.mark.parametrize("columns", [None, "120"], ids=["pipe", "120-columns"])
def test_keys_list_keeps_each_key_id_whole(store: Store, columns: str | None) -> None:
    """`keys revoke ID` takes the id as `keys list` shows it, but the list folded the 26-character id over two
    or three lines, in a pipe and even on a 120-column terminal."""
    created = run(keys_app, store.url, "create", "grafana read-only dashboards", "--scope", "read", "--scope", "replay")
    assert created.exit_code == 0, created.output
    key_id = created.stdout.strip().split("_")[1]
    listed = run(keys_app, store.url, "list", columns=columns)
    assert listed.exit_code == 0, listed.output
    assert key_id in listed.output, listed.output


# --- problems said, not raised ---------------------------------------------------------------------------------------


def test_a_write_on_a_locked_sqlite_store_is_a_message_not_a_traceback(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another writer holding the SQLite file past the busy timeout (a sqlite3 shell left in a transaction, a
    backup) ended `keys create`, `keys revoke` and `deliveries replay` in a "database is locked" traceback.

    The store's one pooled connection is given a busy timeout of 0.1 s first, as the hub's 30 s would make
    this test wait that long; everything else is the commands' own path (`writing`)."""
    with store.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA busy_timeout=100")
    holder = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(typer.Exit) as exited, writing(store, "The API key cannot be created"):
            pytest.fail("the write went ahead beside another writer")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    shown = " ".join(capsys.readouterr().err.split())
    assert exited.value.exit_code == 2
    assert "The API key cannot be created" in shown and "the store is busy: another process has held its write lock" in shown
    assert f"fuser {Path(store.engine.url.database or '').resolve()}" in shown, shown


def test_a_dot_env_not_saved_as_utf8_is_a_readable_problem(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .env saved as Latin-1 (an admin token with an "é") ended every command, even `migrate`, in a
    UnicodeDecodeError traceback; a YAML file with the same mistake is "not UTF-8 ...; save the file as UTF-8"."""
    monkeypatch.chdir(tmp_path)
    Path(".env").write_bytes(f"HUB_DATABASE_URL={store.url}\nHUB_ADMIN_TOKEN=caf\xe9-token\n".encode("latin-1"))
    result = CliRunner().invoke(keys_app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert ".env:2: not UTF-8 (byte 0xe9 at column 20" in flat(result) and "save the file as UTF-8" in flat(result)


@pytest.mark.parametrize("args", [
    ["replay", "--all", "--destination", "twilo_sms"],
    ["list", "--destination", "twilo_sms"],
    ["list", "--channel", "smss"],
], ids=["replay-destination", "list-destination", "list-channel"])
def test_replay_all_with_a_destination_no_connector_has_says_so(store: Store, args: list[str]) -> None:
    """A typo during an incident (`replay --all --destination twilo_sms`) answered "0 dead deliveries queued
    again." and exit 0, so the real dead-letter queue stayed dead while ops believed it empty; `list` showed an
    empty log."""
    result = run(deliveries_app, store.url, *args)
    assert result.exit_code == 2, result.output
    assert "twilio_sms" in flat(result) if "--destination" in args else "sms, webhook" in flat(result), result.output
    assert "queued again" not in flat(result)
