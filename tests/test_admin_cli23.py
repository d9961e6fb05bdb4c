"""The admin API and the CLI as ops use them (session 23): arguments that are not UTF-8, delivery-log filters that
match nothing, the log of a forgotten person, revoking a leaked key as it was found, and the JSON of
`decisions explain`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from hub.cli import app
from hub.store import Store
from tests.conftest import ADMIN_TOKEN, RunningHub, support_ticket

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TOUCHHUB = Path(sys.executable).with_name("touchhub")


def touchhub(database_url: str, *args: str) -> Result:
    """`touchhub ARGS` against the store at `database_url`."""
    return CliRunner().invoke(app, list(args), env={"HUB_DATABASE_URL": database_url, "COLUMNS": "250"})


def flat(text: str) -> str:
    """`text` with Rich's wrapping and panel borders folded away."""
    return " ".join(text.replace("│", " ").split())


# --- an argument that is not UTF-8 ---------------------------------------------------------------------------------

NOT_UTF8 = [  # (the command line as a terminal in another encoding sends it, the parameter the answer names)
    ([b"keys", b"create", b"Jos\xe9", b"--scope", b"read"], "'name'"),  # a name typed in a Latin-1 terminal
    ([b"keys", b"revoke", b"\xff"], "'key_id'"),
    ([b"profiles", b"show", b"user_id:\xff"], "'profile'"),
    ([b"profiles", b"explain", b"\xff"], "'profile_id'"),
    ([b"deliveries", b"replay", b"\xff"], "'delivery_id'"),
    ([b"deliveries", b"list", b"--profile", b"\xff"], "'--profile'"),
    ([b"decisions", b"explain", b"\xff", b"--json"], "'decision_id'"),
]


@pytest.mark.parametrize(("args", "named"), NOT_UTF8, ids=[b" ".join(args[:2]).decode() for args, _ in NOT_UTF8])
def test_an_argument_that_is_not_utf8_is_refused_naming_it(
    store: Store, database_url: str, tmp_path: Path, args: list[bytes], named: str
) -> None:
    """Python hands each byte that is not UTF-8 over as a lone surrogate (\\udcff), which the commands passed to
    the store: its driver could not encode it, and each died with a traceback ending in UnicodeEncodeError
    (exit 1) instead of saying which argument is unreadable."""
    result = subprocess.run(
        [TOUCHHUB, *args], capture_output=True, text=True, errors="replace", timeout=120, cwd=tmp_path,
        env={"COLUMNS": "250", "PATH": "", "HUB_DATABASE_URL": database_url},
    )
    said = flat(result.stderr)
    assert result.returncode == 2 and "Traceback" not in said, said[-600:]
    assert f"Invalid value for {named}:" in said and "is not valid UTF-8; check the terminal's encoding" in said, said
    assert ("'Jos\\xe9'" if b"Jos\xe9" in args else "\\xff'") in said  # the value as the terminal sent it


# --- delivery-log filters that match nothing ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "typo", "known"), [("destination", "twilo_sms", "twilio_sms"), ("channel", "smss", "sms")])
def test_a_delivery_log_filter_naming_no_destination_or_channel_is_a_400_listing_the_ids(
    running_hub: RunningHub, name: str, typo: str, known: str
) -> None:
    """GET /api/deliveries, which the console's free-text Destination and Channel boxes feed, answered a typo
    200 with no deliveries ("No delivery matches."): read as an empty log, or an empty dead-letter queue, which
    `touchhub deliveries list` was fixed to refuse."""
    answer = running_hub.client.get("/api/deliveries", params={name: typo}, headers=AUTH)
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith(f"{name}: '{typo}' is no ") and known in detail.split("use one of: ")[1].split(", ")
    assert running_hub.client.get("/api/deliveries", params={name: known}, headers=AUTH).status_code == 200


@pytest.mark.parametrize("path", ["/api/deliveries", "/api/decisions", "/api/touchpoints"])
def test_a_blank_profile_id_filter_is_a_400_not_everyones_rows(running_hub: RunningHub, path: str) -> None:
    """`?profile_id=` was read as no filter: everyone's rows, with status=dead the whole dead-letter queue, where
    the CLI refuses `--profile ''`."""
    for blank in ("", " "):
        answer = running_hub.client.get(path, params={"profile_id": blank}, headers=AUTH)
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"].startswith("profile_id: needs a value")


# --- the delivery log of a forgotten person ----------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_delivery_log_by_a_forgotten_profile_id_lists_the_crm_erasure_and_earlier_deliveries(
    running_hub: RunningHub,
) -> None:
    """A profile id with no profile row was read as "find nothing": after DELETE /api/profiles/{id} answered
    `crm_erasures: 1`, GET /api/deliveries?profile_id=ID (and the CLI's and console's Profile filter) listed
    nothing, while the erasure and the person's earlier deliveries carried that very id."""
    running_hub.send(*support_ticket("u-forget", {"phone": "+14155550177"}))
    running_hub.settle()
    profile_id = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-forget")["profile_id"]
    forgot = running_hub.client.delete(f"/api/profiles/{profile_id}", headers=AUTH)
    assert forgot.status_code == 200 and forgot.json()["crm_erasures"] == 1, forgot.text
    running_hub.settle()
    theirs = {d["delivery_id"] for d in running_hub.admin("/api/deliveries")["deliveries"] if d["profile_id"] == profile_id}
    assert len(theirs) == 3  # the SMS and the CRM update sent before, and the CRM erasure
    by_profile = running_hub.admin("/api/deliveries", profile_id=profile_id)["deliveries"]
    assert {d["delivery_id"] for d in by_profile} == theirs


# --- revoking a leaked key as it was found -------------------------------------------------------------------------


def new_key(running_hub: RunningHub) -> str:
    created = touchhub(running_hub.hub.settings.database_url, "keys", "create", "leaky", "--scope", "read")
    assert created.exit_code == 0, created.output
    return created.stdout.strip()


@pytest.mark.parametrize(
    "found_as",
    ["Bearer {key}", " {key} ", 'curl -H "Authorization: Bearer {key}" http://hub/api/stats', "{key_id_lower}"],
    ids=["header-value", "blanks-around", "curl-command", "id-in-lower-case"],
)
def test_keys_revoke_takes_a_leaked_key_as_it_was_found_and_never_prints_its_secret(
    running_hub: RunningHub, found_as: str
) -> None:
    """`_id_in` needed the text to be the key exactly: a key pasted as the header value it leaked in, or with
    the blank before it, revoked nothing (exit 1) and the error printed the whole secret back; a key id in lower
    case (a ULID reads the same in either case) named no key either."""
    key = new_key(running_hub)
    secret = key.split("_", 2)[2]
    result = touchhub(
        running_hub.hub.settings.database_url, "keys", "revoke", found_as.format(key=key, key_id_lower=key.split("_")[1].lower())
    )
    assert secret not in result.output, "the leaked key's secret was printed back"
    assert result.exit_code == 0 and f"Key {key.split('_')[1]} ('leaky') revoked" in flat(result.stdout), result.output
    assert running_hub.client.get("/api/stats", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_keys_revoke_of_a_secret_pasted_alone_says_no_key_without_printing_it(running_hub: RunningHub) -> None:
    """The not-found line printed back whatever was given, so a secret pasted without its `thk_<id>_` (or a key
    cut short of its prefix) went to the terminal, its scroll-back and any ticket the answer was pasted to."""
    key = new_key(running_hub)
    for pasted in (key.split("_", 2)[2], key.split("_", 1)[1]):
        result = touchhub(running_hub.hub.settings.database_url, "keys", "revoke", pasted)
        assert result.exit_code == 1 and pasted not in result.output, result.output
        assert "No API key has the id <redacted>" in flat(result.stderr), result.stderr


# --- decisions explain --json and deliveries list --profile ------------------------------------------------------------


def test_decisions_explain_json_writes_times_as_the_api_does(running_hub: RunningHub) -> None:
    """The CLI wrote times with str() ("2026-12-07 16:36:08+00:00") where GET /api/decisions/{id} writes ISO 8601:
    one explanation read two ways by a script, and a diff of the two showed every time changed."""
    running_hub.send(*support_ticket("u-json", {"phone": "+14155550177"}))
    running_hub.settle()
    [decision] = running_hub.admin("/api/decisions")["decisions"]
    result = touchhub(running_hub.hub.settings.database_url, "decisions", "explain", decision["decision_id"], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == running_hub.admin(f"/api/decisions/{decision['decision_id']}")


@pytest.mark.parametrize("empty", ["", " "])
def test_deliveries_list_with_an_empty_profile_is_refused(store: Store, database_url: str, empty: str) -> None:
    """`--profile ''` (a shell variable that was not set) was read as no filter and listed every person's
    deliveries as if they were that one person's."""
    result = touchhub(database_url, "deliveries", "list", "--profile", empty)
    assert result.exit_code == 2, result.output
    assert "--profile" in flat(result.stderr) and "needs a value" in flat(result.stderr), result.stderr
