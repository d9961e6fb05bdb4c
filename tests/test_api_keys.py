"""Scoped API keys for the admin API: made, listed and revoked with `touchhub keys`, checked on every /api/ route.

Before them one HUB_ADMIN_TOKEN did everything, the irreversible forget included, for every person and tool
that read the delivery log.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import select
from typer.testing import CliRunner

from hub.cli_keys import app as keys_app
from hub.store.api_keys import ADMIN, SCOPES
from hub.store.schema import api_keys
from tests.conftest import RunningHub, message

# (method, path, JSON body, the scope it needs, the answer a key holding only that scope gets)
ROUTES = [
    ("GET", "/api/stats", None, "read", 200),
    ("POST", "/api/deliveries/no-such-delivery/replay", None, "replay", 404),
    ("POST", "/api/profiles/no-such-profile/unmerge", {"merged_profile_id": "p-2"}, "profiles:write", 404),
    ("DELETE", "/api/profiles/no-such-profile", None, "profiles:delete", 404),
    ("POST", "/api/sources/default/replay?since=1h", None, "replay", 200),
    ("POST", "/api/mappings/default/preview", {"sample": message(userId="u-1", event="Product Viewed")}, "mappings", 200),
]


def keys(running_hub: RunningHub, *args: str) -> Result:
    """`touchhub keys ARGS` against the running hub's store."""
    env = {"HUB_DATABASE_URL": running_hub.hub.settings.database_url, "COLUMNS": "250"}
    return CliRunner().invoke(keys_app, list(args), env=env)


def new_key(running_hub: RunningHub, name: str, *scopes: str) -> str:
    result = keys(running_hub, "create", name, *[arg for scope in scopes for arg in ("--scope", scope)])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def listed(running_hub: RunningHub, key_id: str) -> list[str]:
    """The cells of the key's row in `touchhub keys list`: id, name, scopes, created, last used, revoked."""
    result = keys(running_hub, "list")
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if key_id in line]
    return [cell.strip() for cell in line.split("│")[1:-1]]


def call(running_hub: RunningHub, method: str, path: str, key: str, **kwargs: Any) -> Any:
    return running_hub.client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)


def test_a_key_is_printed_once_and_only_its_digest_is_stored(running_hub: RunningHub) -> None:
    """There were no keys: one shared HUB_ADMIN_TOKEN, which nobody could hand out in part or take back."""
    result = keys(running_hub, "create", "grafana", "--scope", "read")
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("thk_") and "\n" not in key  # alone on stdout: KEY=$(touchhub keys create ...) takes it
    assert "only time the key is shown" in " ".join(result.stderr.split())
    with running_hub.hub.store.read() as connection:
        [row] = connection.execute(select(api_keys)).all()
    secret = key.split("_", 2)[2]
    assert key.split("_")[1] == row.key_id and secret not in repr(row)
    assert call(running_hub, "GET", "/api/stats", key).status_code == 200


@pytest.mark.parametrize(("method", "path", "body", "scope", "allowed"), ROUTES, ids=[route[3] for route in ROUTES])
def test_each_route_needs_its_scope_and_a_key_without_it_gets_403_naming_scope_and_key(
    running_hub: RunningHub, method: str, path: str, body: Any, scope: str, allowed: int
) -> None:
    """A key without the scope is refused before the body is read: a malformed one gets 403, not the parser's 422."""
    others = new_key(running_hub, "ops-dashboard", *(other for other in SCOPES if other not in (scope, ADMIN)))
    refused = call(running_hub, method, path, others, content=b"{oops" if method == "POST" else None)
    assert refused.status_code == 403, refused.text
    assert f"needs the '{scope}' scope" in refused.json()["detail"] and "'ops-dashboard'" in refused.json()["detail"]
    assert refused.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{scope}"'
    only = new_key(running_hub, f"only-{scope}", scope)
    assert call(running_hub, method, path, only, json=body).status_code == allowed
    admin = new_key(running_hub, "admin", ADMIN)
    assert call(running_hub, method, path, admin, json=body).status_code == allowed


def test_forget_takes_a_key_with_profiles_delete_not_one_that_can_only_unmerge(running_hub: RunningHub) -> None:
    """Whoever could read the delivery log could also erase a person for good: both took the one token."""
    running_hub.send(message("identify", userId="u-ana", traits={"email": "ana@example.com"}))
    running_hub.settle()
    profile_id = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-ana")["profile_id"]
    repairer = new_key(running_hub, "identity-repair", "read", "profiles:write")
    assert call(running_hub, "DELETE", f"/api/profiles/{profile_id}", repairer).status_code == 403
    assert call(running_hub, "GET", f"/api/profiles/{profile_id}", repairer).status_code == 200
    privacy = new_key(running_hub, "privacy-requests", "profiles:delete")
    assert call(running_hub, "DELETE", f"/api/profiles/{profile_id}", privacy).status_code == 200
    assert call(running_hub, "GET", f"/api/profiles/{profile_id}", repairer).status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_revoked_or_unknown_key_is_401_saying_how_to_get_one(running_hub: RunningHub) -> None:
    """Taking access back from one person meant changing HUB_ADMIN_TOKEN for everyone."""
    key = new_key(running_hub, "old-laptop", "read", "replay")
    assert call(running_hub, "GET", "/api/touchpoints", key).status_code == 200
    key_id = key.split("_")[1]
    [_id, name, scopes, created, last_used, revoked_at] = listed(running_hub, key_id)
    assert (name, scopes, revoked_at) == ("old-laptop", "read, replay", "") and created and last_used

    revoked = keys(running_hub, "revoke", key_id)
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    answer = call(running_hub, "GET", "/api/touchpoints", key)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert "'old-laptop'" in answer.json()["detail"] and "revoked" in answer.json()["detail"]
    assert "touchhub keys create" in answer.json()["detail"]
    assert listed(running_hub, key_id)[5]  # the revoked column

    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for token in (forged, "thk_01NOSUCHKEY_secret", "not-a-key"):
        answer = call(running_hub, "GET", "/api/touchpoints", token)
        assert answer.status_code == 401 and "touchhub keys create" in answer.json()["detail"], token
    assert "touchhub keys create" in running_hub.client.get("/api/touchpoints").json()["detail"]


@pytest.mark.hub_settings(admin_token="")
def test_an_empty_admin_token_turns_the_bootstrap_token_off_and_keys_still_work(running_hub: RunningHub) -> None:
    """The bootstrap token cannot be revoked; once keys are handed out, emptying HUB_ADMIN_TOKEN is how ops
    close it (the development value no longer opens anything), and the API stays open to keys."""
    key = new_key(running_hub, "ops", "read")
    assert call(running_hub, "GET", "/api/stats", key).status_code == 200
    for token in ("dev-admin-token", "thk_"):
        assert call(running_hub, "GET", "/api/stats", token).status_code == 401, token


def test_every_admin_operation_shows_its_scope_in_the_openapi(running_hub: RunningHub) -> None:
    """/docs is where an integrator learns which scope a key needs; before, it named no credential at all."""
    paths = running_hub.client.get("/openapi.json").json()["paths"]
    required = {
        (method, path): operation.get("security") for path, operations in paths.items() if path.startswith("/api/")
        for method, operation in operations.items()
    }
    assert required[("delete", "/api/profiles/{profile_id}")] == [{"APIKey": ["profiles:delete"]}]
    for (method, path), security in required.items():
        assert security in ([{"APIKey": [scope]}] for scope in SCOPES), (method, path)
        assert method != "get" or security == [{"APIKey": ["read"]}], path


def test_keys_create_refuses_an_unknown_scope_naming_the_choices(running_hub: RunningHub) -> None:
    """A mistyped scope would make a key that can do nothing, found out only at its first 403."""
    result = keys(running_hub, "create", "ci", "--scope", "write")
    assert result.exit_code == 2
    assert "'write' is not one of 'read', 'replay', 'profiles:write'" in " ".join(result.output.split())
    missing = keys(running_hub, "revoke", "01NOSUCHKEY")
    assert missing.exit_code == 1 and "touchhub keys list" in missing.output


def test_a_leaked_key_pasted_whole_is_revoked_and_its_secret_never_printed(running_hub: RunningHub) -> None:
    """`keys revoke` took only the id: a whole key found in a log and pasted in was "no API key has the id
    'thk_..._<secret>'", printing the secret back into the terminal's scrollback, and the key stayed valid."""
    key = new_key(running_hub, "leaked", "read")
    secret = key.rsplit("_", 1)[1]
    revoked = keys(running_hub, "revoke", key)
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    assert secret not in revoked.output
    assert call(running_hub, "GET", "/api/touchpoints", key).status_code == 401
