"""The web console under /console/: its files and headers, the API it calls, and what it may show."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.routing import Match

from connectors.sandbox.providers import SandboxProviders
from hub.api import create_app
from hub.api.console import FILES
from hub.clock import utcnow
from hub.store import api_keys
from tests.conftest import ADMIN_TOKEN, WRITE_KEY, RunningHub, hub_with_source, message

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SCRIPT = (FILES / "console.js").read_text(encoding="utf-8")
CRM_SECRET = "crm-client-secret-never-shown"
MARKUP = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"
# What the console calls, as DESIGN.md and the ops views need it; {} stands for a path parameter.
VIEW_CALLS = {
    ("GET", "/api/stats"), ("GET", "/api/sources"), ("POST", "/api/mappings/{}/preview"), ("GET", "/api/rules"),
    ("GET", "/api/deliveries"), ("POST", "/api/deliveries/{}/replay"), ("GET", "/api/profiles/lookup"),
    ("GET", "/api/profiles/{}"), ("GET", "/api/touchpoints"), ("GET", "/api/profiles/{}/explain"),
    ("GET", "/api/quarantine"), ("GET", "/api/quarantine/{}"), ("GET", "/api/identifier-types"),
    ("POST", "/api/sources/{}/replay"),
}
# Ways a script can turn a string into markup or code: the console uses none of them.
HTML_AND_CODE_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|createContextualFragment|DOMParser|srcdoc"
    r"|\beval\s*\(|new\s+Function\b|setTimeout\s*\(\s*[\"'`]|setInterval\s*\(\s*[\"'`]"
)


class _Markup(HTMLParser):
    """The page's script and style references, and anything that would run or style inline."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.stylesheets: list[str | None] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.inline += [f"{tag} {name}" for name in found if name.startswith("on") or name == "style"]
        if tag == "script":
            self.scripts.append(found)
        elif tag == "style":
            self.inline.append("style element")
        elif tag == "link" and found.get("rel") == "stylesheet":
            self.stylesheets.append(found.get("href"))

    def handle_data(self, data: str) -> None:
        if self.lasttag == "script" and data.strip():
            self.inline.append("inline script")


def _script_calls() -> set[tuple[str, str]]:
    """Every `api(METHOD, "/api/...")` call of console.js, template placeholders as {}."""
    calls = re.findall(r"\bapi\(\s*\"([A-Z]+)\",\s*[\"`](/api/[^\"`]*)[\"`]", SCRIPT)
    return {(method, re.sub(r"\$\{[^}]*\}", "{}", path)) for method, path in calls}


def test_console_page_and_its_files_are_served_with_a_strict_content_security_policy(running_hub: RunningHub) -> None:
    """Before, /console/ was a 404: DESIGN.md's web console did not exist."""
    expected_types = {"/console/": "text/html", "/console/console.js": "text/javascript", "/console/console.css": "text/css"}
    for path, media_type in expected_types.items():
        answer = running_hub.client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith(media_type), path
        policy = answer.headers["content-security-policy"]
        assert {"script-src 'self'", "frame-ancestors 'none'", "default-src 'none'"} <= set(policy.split("; ")), path
        assert "unsafe" not in policy, path
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert answer.headers["referrer-policy"] == "no-referrer", path
    page = _Markup()
    page.feed(running_hub.client.get("/console/").text)
    assert page.scripts == [{"type": "module", "src": "console.js"}]
    assert page.stylesheets == ["console.css"]
    assert page.inline == []


def test_console_without_its_slash_redirects_and_other_names_are_not_served(running_hub: RunningHub) -> None:
    answer = running_hub.client.get("/console", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (307, "console/")
    assert running_hub.client.get("/console", follow_redirects=True).url.path == "/console/"
    for name in ("hub.db", "console.py", "%2e%2e%2fconsole.py", "..%2fapp.py"):
        assert running_hub.client.get(f"/console/{name}").status_code == 404, name


def test_every_admin_api_call_of_the_console_is_a_route_of_the_app(running_hub: RunningHub) -> None:
    """A call the script makes to a path or method the app lacks would only show up as a broken view."""
    calls = _script_calls()
    assert len(re.findall(r"(?<!function )\bapi\(", SCRIPT)) == len(re.findall(r"\bapi\(\s*\"", SCRIPT)), (
        "every api() call names its method and a literal /api/ path, so this test sees it")
    assert calls == VIEW_CALLS
    routes = create_app(running_hub.hub, run_workers=False).routes
    for method, path in calls:
        scope = {"type": "http", "method": method, "path": path.replace("{}", "some-id")}
        assert any(route.matches(scope)[0] == Match.FULL for route in routes), f"{method} {path} is no route of the app"


@pytest.fixture
def crm_hub(
    tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningHub]:
    """A hub with one signed webhook source besides the built-in `default` one."""
    with hub_with_source(
        tmp_path, mappings_dir, sandbox, monkeypatch, "{id: crm, connector: hubspot, secrets: {client_secret: "
        "HUB_SRC_CRM_SECRET}}", {"HUB_SRC_CRM_SECRET": CRM_SECRET}, public_base_url="https://hub.example.com",
    ) as hub:
        yield hub


def _key(running_hub: RunningHub, *scopes: str) -> dict[str, str]:
    """The Authorization header of a new API key holding `scopes`."""
    with running_hub.hub.store.write() as connection:
        _key_id, key = api_keys.create(connection, "console-user", scopes, utcnow())
    return {"Authorization": f"Bearer {key}"}


def test_sources_lists_each_source_with_its_ingest_urls_to_readers_only_and_no_secret(crm_hub: RunningHub) -> None:
    """Before, no admin route listed the configured sources, so the console had nothing to show."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        assert crm_hub.client.get("/api/sources", headers=headers).status_code == 401
    refused = crm_hub.client.get("/api/sources", headers=_key(crm_hub, "replay", "mappings"))
    assert refused.status_code == 403 and "needs the 'read' scope" in refused.json()["detail"]
    assert crm_hub.client.get("/api/sources", headers=_key(crm_hub, "read")).status_code == 200
    answer = crm_hub.client.get("/api/sources", headers=AUTH)
    assert answer.json() == {"sources": [
        {"id": "default", "connector": "segment", "title": crm_hub.hub.sources["default"].title, "mapping": "segment.yaml",
         "mapping_version": crm_hub.hub.mappings["default"].version,
         "ingest_url": "https://hub.example.com/v1/webhooks/default", "sdk_ingest_url": "https://hub.example.com/v1/batch"},
        {"id": "crm", "connector": "hubspot", "title": crm_hub.hub.sources["crm"].title, "mapping": "hubspot.yaml",
         "mapping_version": crm_hub.hub.mappings["crm"].version,
         "ingest_url": "https://hub.example.com/v1/webhooks/crm", "sdk_ingest_url": None},
    ]}
    assert CRM_SECRET not in answer.text and WRITE_KEY not in answer.text


def test_identifier_types_are_those_of_identity_yaml_in_priority_order(running_hub: RunningHub) -> None:
    """The profile lookup offers the types the hub resolves by, custom ones included."""
    assert running_hub.client.get("/api/identifier-types").status_code == 401
    types = running_hub.admin("/api/identifier-types")["identifier_types"]
    assert types == [{"type": each.type, "limit": each.limit} for each in running_hub.hub.identity.identifier_types]
    assert {"type": "loyalty_id", "limit": 1} in types


def test_event_markup_reaches_the_console_only_as_json_never_as_html(running_hub: RunningHub) -> None:
    """Event properties are written by senders; the console renders them as text in the browser, so the
    server never puts them into a page, and the script has no way to turn a string into markup."""
    running_hub.send(message(userId="u-x", event=MARKUP, properties={"name": MARKUP}, traits={"nickname": MARKUP}))
    running_hub.settle()
    answer = running_hub.client.get("/api/touchpoints", headers=AUTH)
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["touchpoints"][0]["properties"] == {"name": MARKUP}
    for path in ("/console/", "/console/console.js", "/console/console.css"):
        served = running_hub.client.get(path)
        assert served.status_code == 200 and "pwned" not in served.text, path
    assert HTML_AND_CODE_SINKS.findall(SCRIPT) == []


def test_console_script_is_valid_javascript() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the script's syntax is checked where it is")
    checked = subprocess.run([node, "--check", str(FILES / "console.js")], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


def test_console_files_are_package_data_of_the_distribution() -> None:
    """An installed (non-editable) hub would serve a 500 for each console file pyproject.toml leaves out."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"].get("hub.api", [])
    for path in FILES.iterdir():
        relative = path.relative_to(FILES.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), f"{relative} is not package data of hub.api"
