"""The console's triggers, quarantine, profile and mapping views, seen as a user sees them, and the API behind them.

There is no browser here: `render` runs the real console.js in node against a running hub, with the few DOM
calls the console makes stood in for (`PAGE`), and answers the text of the view, its table rows and every
request the page sent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.sandbox.providers import SandboxProviders
from hub.api.console import FILES
from hub.store import quarantine
from tests.conftest import ADMIN_TOKEN, WRITE_KEY, RunningHub, make_settings, message, serve_hub

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# A stand-in for the browser: the DOM calls console.js makes, `fetch` recorded, then the view at `hash` rendered
# and `actions` done on it (click a button by its label, type into a field by its name), each waited out.
PAGE = r"""
const [script, hubUrl, token, hash, actions] = process.argv.slice(2);
class Node {}
class Text extends Node {
  constructor(data) { super(); this.data = data; }
  get textContent() { return this.data; }
}
class Element extends Node {
  constructor(tag) {
    super();
    Object.assign(this, { tagName: tag.toUpperCase(), children: [], listeners: {}, typed: "" });
    this.classList = { toggle() {} };
  }
  append(...nodes) { this.children.push(...nodes.map((node) => (node instanceof Node ? node : new Text(String(node))))); }
  replaceChildren(...nodes) { this.children = []; this.append(...nodes); }
  addEventListener(type, listener) { (this.listeners[type] ||= []).push(listener); }
  getAttribute(name) { return this[name]; }
  focus() {}
  get value() {
    if (this.tagName !== "SELECT") return this.typed;
    const options = this.children.filter((child) => child.tagName === "OPTION");
    return (options.find((option) => option.selected) || options[0] || { typed: "" }).typed;
  }
  set value(value) { this.typed = String(value); }
  get textContent() { return this.children.map((child) => child.textContent).join(""); }
  *walk() { yield this; for (const child of this.children) if (child instanceof Element) yield* child.walk(); }
}
const frame = Object.fromEntries(
  ["sign-in", "tabs", "sign-out", "view", "token", "sign-in-error"].map((id) => [id, new Element("div")]));
const stored = new Map([["touchhub.console.token", token]]);
const requests = [];
let pending = 0;
let lastAnswer = Date.now();
const browserFetch = globalThis.fetch;
Object.assign(globalThis, {
  Node,
  document: { createElement: (tag) => new Element(tag), getElementById: (id) => frame[id], querySelectorAll: () => [] },
  window: {
    location: { href: `${hubUrl}/console/`, hash },
    sessionStorage: { getItem: (key) => stored.get(key) ?? null, setItem: (key, value) => stored.set(key, value), removeItem: (key) => stored.delete(key) },
    addEventListener() {}, setTimeout, clearTimeout, confirm: () => true,
  },
  fetch: async (url, options) => {
    const request = { method: options.method, url: String(url), body: options.body === undefined ? null : JSON.parse(options.body) };
    requests.push(request);
    pending += 1;
    try {
      const answer = await browserFetch(url, options);
      const text = await answer.text();
      request.bytes = text.length;
      return new Response(text, { status: answer.status, headers: answer.headers });
    } finally {
      pending -= 1;
      lastAnswer = Date.now();
    }
  },
});
async function settled() {
  lastAnswer = Date.now();
  do await new Promise((resolve) => setTimeout(resolve, 50));
  while (pending > 0 || Date.now() - lastAnswer < 700);  // 700 ms: past the preview's pause in typing
}
const everything = () => [...frame.view.walk()];
await import(new URL(`file://${script}`));
await settled();
for (const action of JSON.parse(actions)) {
  if (action.submit) {
    everything().find((node) => node.tagName === "FORM" && [...node.walk()].some((each) => each.textContent === action.submit)).onsubmit({ preventDefault() {} });
  } else if (action.click) {
    const control = everything().find((node) => node.tagName === "BUTTON" && node.textContent === action.click);
    control.onclick({ target: control, preventDefault() {} });
  } else {
    const control = everything().find((node) => node.name === action.field);
    control.value = action.text;
    (control.listeners.input || []).forEach((listener) => listener({ target: control }));
  }
  await settled();
}
const rows = everything().filter((node) => node.tagName === "TR").map((row) => row.children.map((cell) => cell.textContent));
console.log(JSON.stringify({ text: frame.view.textContent, rows, requests }));
"""


def render(hub: RunningHub, tmp_path: Path, hash_: str, *actions: dict[str, str]) -> dict[str, Any]:
    """The console's view at `hash_` (e.g. "#triggers") on `hub`, after `actions`: its text, its table rows (each
    a list of cell texts) and the requests it sent ({method, url, body, bytes of the answer})."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the console's views are rendered where it is")
    page = tmp_path / "page.mjs"
    page.write_text(PAGE, encoding="utf-8")
    arguments = [str(FILES / "console.js"), hub.url.rstrip("/"), ADMIN_TOKEN, hash_, json.dumps(actions)]
    done = subprocess.run([node, str(page), *arguments], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def hub_with_own_mappings(tmp_path: Path, mappings_dir: Path, sandbox: SandboxProviders) -> Iterator[tuple[RunningHub, Path]]:
    with serve_hub(make_settings(tmp_path, mappings_dir=mappings_dir, **sandbox.settings_overrides()), sandbox) as hub:
        yield hub, mappings_dir


def test_triggers_view_warns_of_a_refused_template_edit(hub_with_own_mappings: tuple[RunningHub, Path], tmp_path: Path) -> None:
    """A template edit that does not parse is refused (the last good one is still sent) and /api/rules says so in
    `refused_template_edits`, but the triggers view read only `refused_edit`: ops who saved a broken template saw
    the rules in force and no warning."""
    running_hub, mappings_dir = hub_with_own_mappings
    template = mappings_dir / "templates" / "post_purchase_support.sms.j2"
    template.write_text("Hi {{ profile.first_name }, broken }}\n", encoding="utf-8")
    later = time.time() + 5
    os.utime(template, (later, later))
    [problem] = running_hub.admin("/api/rules")["refused_template_edits"]
    assert "post_purchase_support.sms.j2" in problem
    page = render(running_hub, tmp_path, "#triggers")
    assert "An edit of a template these rules send was refused" in page["text"]
    assert problem in page["text"]
    assert "triggers.yaml was refused" not in page["text"]  # the rules file itself was not touched


PAD = "x" * 400_000


def _refuse(running_hub: RunningHub, **properties: Any) -> None:
    """Send a message the hub refuses whole (no userId nor anonymousId): its body, UTF-8, is quarantined."""
    body = json.dumps({"batch": [message(event="Product Viewed", properties=properties)]}, ensure_ascii=False)
    refused = running_hub.client.post("/v1/batch", content=body.encode(), auth=(WRITE_KEY, ""))
    assert refused.status_code == 400, refused.text


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_quarantine_list_cuts_each_body_short_and_gives_one_whole_by_its_id(running_hub: RunningHub) -> None:
    """The list answered every body whole, though the console shows only the start of each: 200 refused bodies of
    HUB_MAX_BODY_BYTES, sent by anyone with the public write key, made the view download ~100 MB. A body cut
    inside a character (here a 3-byte one) ends before it, not with a replacement character."""
    for _ in range(3):
        _refuse(running_hub, pad=PAD)
    _refuse(running_hub, pad="€" * 2000)
    answer = running_hub.client.get("/api/quarantine", params={"limit": 200}, headers=AUTH)
    assert answer.status_code == 200 and len(answer.content) < 40_000, len(answer.content)
    rows = answer.json()["quarantine"]
    whole = [running_hub.admin(f"/api/quarantine/{row['id']}") for row in rows]
    assert [len(body["raw_body"].encode()) for body in whole] == [row["raw_body_bytes"] for row in rows]
    assert all(PAD in body["raw_body"] for body in whole[1:])
    for row, body in zip(rows, whole):
        assert row["raw_body_cut"] and not body["raw_body_cut"]
        assert body["raw_body"].startswith(row["raw_body"]) and "\ufffd" not in row["raw_body"]
        assert quarantine.LISTED_BODY_BYTES - 2 <= len(row["raw_body"].encode()) <= quarantine.LISTED_BODY_BYTES
        assert {key: value for key, value in row.items() if key not in ("raw_body", "raw_body_cut")} == {
            key: value for key, value in body.items() if key not in ("raw_body", "raw_body_cut", "raw_body_base64")}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_quarantined_body_asked_for_by_an_id_that_is_no_row_is_a_404_naming_it(running_hub: RunningHub) -> None:
    _refuse(running_hub, pad="short")
    [row] = running_hub.admin("/api/quarantine")["quarantine"]
    assert not row["raw_body_cut"] and row["raw_body_bytes"] == len(row["raw_body"])
    for unknown in (row["id"] + 1, 0, 2**64, "1%00"):
        answer = running_hub.client.get(f"/api/quarantine/{unknown}", headers=AUTH)
        assert answer.status_code == 404, (unknown, answer.text)
        assert answer.json()["detail"].startswith("no quarantine"), answer.text
    assert running_hub.client.get(f"/api/quarantine/{row['id']}").status_code == 401  # a reader's key, as the list


def test_quarantine_view_downloads_the_start_of_each_body_and_loads_one_whole_on_demand(
    running_hub: RunningHub, tmp_path: Path
) -> None:
    """The view asked for 200 bodies whole and cut each to 4,000 characters in the tab; now it gets each cut,
    and a button fetches the one the user wants to read whole."""
    _refuse(running_hub, pad=PAD)
    page = render(running_hub, tmp_path, "#quarantine")
    [listed] = [request for request in page["requests"] if "/api/quarantine" in request["url"]]
    assert listed["bytes"] < 10_000 and PAD not in page["text"]
    assert "Only its start is shown." in page["text"]
    page = render(running_hub, tmp_path, "#quarantine", {"click": "Load the whole body"})
    assert PAD in page["text"]


def test_profile_timeline_is_newest_first_by_when_the_events_occurred(running_hub: RunningHub, tmp_path: Path) -> None:
    """The console's "Timeline (newest first)" was sorted by when the hub received each event: an order placed
    yesterday and sent (offline, or a backfill) after today's page view was listed above it."""
    now = datetime.now(timezone.utc)
    running_hub.send(message(userId="u-time", event="Product Viewed", timestamp=now.isoformat()))
    running_hub.settle()
    running_hub.send(message(userId="u-time", event="Order Completed", timestamp=(now - timedelta(days=1)).isoformat()))
    running_hub.settle()
    profile_id = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-time")["profile_id"]

    def events(**params: Any) -> list[str]:
        return [each["event"] for each in running_hub.admin("/api/touchpoints", profile_id=profile_id, **params)["touchpoints"]]

    assert events(order="occurred") == ["Product Viewed", "Order Completed"]
    assert events() == events(order="received") == ["Order Completed", "Product Viewed"]  # what the hub got last
    wrong = running_hub.client.get("/api/touchpoints", params={"order": "time"}, headers=AUTH)
    assert wrong.status_code == 422 and "order" in wrong.text

    page = render(running_hub, tmp_path, f"#profiles/{profile_id}")
    shown = [cells[1] for cells in page["rows"] if cells[1] in ("Product Viewed", "Order Completed")]
    assert shown == ["Product Viewed", "Order Completed"], page["rows"]


def _previews(page: dict[str, Any]) -> list[dict[str, Any]]:
    return [request["body"] for request in page["requests"] if request["url"].endswith("/preview")]


def test_mapping_preview_sends_the_headers_typed_in_its_box(running_hub: RunningHub, tmp_path: Path) -> None:
    """The preview had no way to give the request headers a source reads an id from (a Standard Webhooks
    sender's webhook-id), so it showed a touchpoint id the real event never gets. An empty box sends none."""
    typed = {"field": "headers", "text": "webhook-id: msg_2Kx\n\n  webhook-timestamp : 1700000000 \n"}
    page = render(running_hub, tmp_path, "#mappings/default", typed)
    first, last = _previews(page)
    assert "headers" not in first
    assert last["headers"] == {"webhook-id": "msg_2Kx", "webhook-timestamp": "1700000000"}


def test_mapping_preview_names_a_header_line_it_cannot_read_and_sends_nothing(running_hub: RunningHub, tmp_path: Path) -> None:
    page = render(running_hub, tmp_path, "#mappings/default", {"field": "headers", "text": "webhook-id: msg_1\nwebhook-id msg_2"})
    assert len(_previews(page)) == 1  # only the one made as the view opened
    assert 'Headers, line 2: "webhook-id msg_2" is no header; write its name, a colon, then its value' in page["text"]

