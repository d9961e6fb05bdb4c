"""Older rows of the paged lists, reached from the console (a More button) and from `touchhub deliveries list`
(--cursor, and --json with next_cursor), by the same keyset cursors the admin API answers.

The console is rendered by test_console20's stand-in browser (the real console.js in node against a running hub).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import Result

from hub.store import Store, decisions
from hub.store.schema import deliveries, quarantine, touchpoints
from tests import test_console20
from tests.conftest import RunningHub, message
from tests.test_admin_cli23 import flat, touchhub
from tests.test_pagination23 import BATCH, add, decision, delivery, quarantined, touchpoint

BOTH_ENGINES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
NEXT_PAGE = "Older deliveries: "


def seed_deliveries(store: Store, count: int, status: Callable[[int], str] = lambda n: "dead") -> None:
    """`count` deliveries planned in one batch (one `now`): only their ids order them, newest first."""
    with store.write() as connection:
        connection.execute(deliveries.insert(), [
            {**delivery(n, BATCH, status(n)), "last_error": f"error-{n:03}"} for n in range(count)
        ])


def newest_first(count: int, name: str = "del", keep: Callable[[int], bool] = lambda n: True) -> list[str]:
    return [f"{name}-{n:03}" for n in reversed(range(count)) if keep(n)]


# --- the CLI -----------------------------------------------------------------------------------------------------

def listed(result: Result) -> tuple[list[str], list[str] | None]:
    """The delivery ids of a `deliveries list` table, and the command its last line gives for the next page."""
    assert result.exit_code == 0, result.output
    table, _, command = result.stdout.partition(NEXT_PAGE)
    return re.findall(r"\bdel-\d{3}\b", table), shlex.split(command) if command else None


@BOTH_ENGINES
def test_deliveries_list_pages_out_every_delivery_once_in_order(store: Store, database_url: str) -> None:
    """`deliveries list` showed the newest `--limit` deliveries and no way past them: older ones of the log (or of a
    large dead-letter queue) could not be read from the CLI. Each page now ends with the command for the next one,
    filters kept, and the last page with none."""
    seed_deliveries(store, 8, lambda n: "dead" if n % 3 else "failed")
    ids, command = listed(touchhub(database_url, "deliveries", "list", "--status", "dead", "--limit", "2"))
    pages = [ids]
    while command is not None:
        assert command[:3] == ["touchhub", "deliveries", "list"] and command[3:7] == ["--status", "dead", "--limit", "2"]
        ids, command = listed(touchhub(database_url, *command[1:]))
        pages.append(ids)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sum(pages, []) == newest_first(8, keep=lambda n: n % 3 != 0)


@BOTH_ENGINES
def test_deliveries_list_json_carries_the_cursor_the_admin_api_answers(running_hub: RunningHub) -> None:
    """There was no JSON form: a script had to scrape the table, and could not page. --json is the admin API's page:
    the same deliveries and the same next_cursor, null on the last page."""
    seed_deliveries(running_hub.hub.store, 5)
    database_url = running_hub.hub.settings.database_url
    cursor: str | None = None
    read: list[str] = []
    while True:
        result = touchhub(database_url, "deliveries", "list", "--limit", "2", "--json", *(["--cursor", cursor] if cursor else []))
        assert result.exit_code == 0, result.output
        page = json.loads(result.stdout)
        assert page == running_hub.admin("/api/deliveries", limit=2, **({"cursor": cursor} if cursor else {}))
        read += [each["delivery_id"] for each in page["deliveries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert read == newest_first(5)


@pytest.mark.parametrize("cursor", ["not a cursor!", "WyJkZWxpdmVyaWVzIiwgWyJ5ZXN0ZXJkYXkiLCAiZGVsLTAwMSJdXQ", "e30"])
def test_deliveries_list_refuses_a_bad_cursor_saying_where_to_get_one(store: Store, database_url: str, cursor: str) -> None:
    """Garbage, an altered time or no key at all: exit 2 naming --cursor and where a good one is printed."""
    result = touchhub(database_url, "deliveries", "list", "--cursor", cursor)
    said = flat(result.stderr)
    assert result.exit_code == 2 and "Traceback" not in said, result.output
    assert "Invalid value for --cursor: it is not one this hub gave (cut or altered)" in said, said
    assert "Copy it whole from the line under a page's table, or from its --json next_cursor" in said, said


def test_deliveries_list_refuses_another_lists_cursor_naming_whose_it_is(store: Store, database_url: str) -> None:
    other = decisions.PAGES.cursor(decision(1, BATCH))
    result = touchhub(database_url, "deliveries", "list", "--cursor", other)
    assert result.exit_code == 2, result.output
    assert "Invalid value for --cursor: it pages the decisions, not the deliveries" in flat(result.stderr), result.stderr


# --- the console ---------------------------------------------------------------------------------------------------

def shown(page: dict[str, Any], pattern: str) -> list[str]:
    """The cells of the view's tables that are markers like `pattern`, top to bottom."""
    return [cell for row in page["rows"] for cell in row if re.fullmatch(pattern, cell)]


def listings(page: dict[str, Any], path: str) -> list[dict[str, list[str]]]:
    """The query of each request the view made to `path`."""
    return [parse_qs(urlsplit(each["url"]).query) for each in page["requests"] if urlsplit(each["url"]).path == path]


def deliveries_view(running_hub: RunningHub, count: int) -> str:
    seed_deliveries(running_hub.hub.store, count)
    return "#deliveries"


def quarantine_view(running_hub: RunningHub, count: int) -> str:
    add(running_hub, quarantine, [{**quarantined(n, BATCH), "reason": f"bad-{n:03}"} for n in range(count)])
    return "#quarantine"


def timeline_view(running_hub: RunningHub, count: int) -> str:
    """A person whose timeline is one event the hub took (ev-000, the oldest) and `count` - 1 stored after it."""
    running_hub.send(message(userId="u-long", event="ev-000", timestamp="2020-01-01T00:00:00Z"))
    running_hub.settle()
    profile_id = running_hub.admin("/api/profiles/lookup", type="user_id", value="u-long")["profile_id"]
    add(running_hub, touchpoints, [
        {**touchpoint(n, BATCH), "profile_id": profile_id, "event": f"ev-{n:03}"} for n in range(1, count)
    ])
    return f"#profiles/{profile_id}"


# view: (what fills it with `count` rows and answers its hash, the marker of row n in the view, the API path, page size)
VIEWS: dict[str, tuple[Callable[[RunningHub, int], str], str, str, int]] = {
    "deliveries": (deliveries_view, "error", "/api/deliveries", 100),
    "quarantine": (quarantine_view, "bad", "/api/quarantine", 200),
    "timeline": (timeline_view, "ev", "/api/touchpoints", 200),
}


@BOTH_ENGINES
@pytest.mark.parametrize("view", VIEWS)
def test_console_list_shows_older_rows_with_more_each_once_in_order(
    running_hub: RunningHub, tmp_path: Path, view: str
) -> None:
    """The deliveries, the quarantine and a profile's timeline showed only their first page (100, 200, 200 rows):
    the rest of a long dead-letter queue could not be seen nor replayed from the console. More appends the next page
    asked with the same query and the list's cursor, then goes at the end of the list."""
    fill, marker, path, size = VIEWS[view]
    hash_ = fill(running_hub, size + 3)
    first = test_console20.render(running_hub, tmp_path, hash_)
    assert shown(first, rf"{marker}-\d{{3}}") == newest_first(size + 3, marker)[:size]
    assert f"{size} shown, newest first; More shows older ones." in first["text"]
    page = test_console20.render(running_hub, tmp_path, hash_, {"click": "More"})
    assert shown(page, rf"{marker}-\d{{3}}") == newest_first(size + 3, marker)
    assert f"All {size + 3} shown." in page["text"] and "More shows older ones" not in page["text"]
    opened, older = listings(page, path)
    assert "cursor" not in opened
    assert older.pop("cursor") == [running_hub.admin(path, **{name: value for [name, [value]] in opened.items()})["next_cursor"]]
    assert older == opened


def test_console_list_of_one_page_offers_no_more(running_hub: RunningHub, tmp_path: Path) -> None:
    """A list that fits its first page says it is whole, with no More to page to nothing."""
    seed_deliveries(running_hub.hub.store, 3)
    page = test_console20.render(running_hub, tmp_path, "#deliveries")
    assert shown(page, r"error-\d{3}") == newest_first(3, "error")
    assert "All 3 shown." in page["text"] and "More" not in page["text"]


def test_console_deliveries_more_keeps_the_filters_shown_and_a_new_filter_starts_over(
    running_hub: RunningHub, tmp_path: Path
) -> None:
    """More asks with the filters the list was shown with, though a field was edited since (a cursor pages only the
    list it came from); Show with the edited filters starts again from the newest."""
    seed_deliveries(running_hub.hub.store, 105)
    page = test_console20.render(
        running_hub, tmp_path, "#deliveries", {"field": "limit", "text": "2"}, {"click": "More"}, {"submit": "Show"}
    )
    opened, older, again = listings(page, "/api/deliveries")
    assert opened["limit"] == older["limit"] == ["100"] and "cursor" in older
    assert again["limit"] == ["2"] and "cursor" not in again
    assert shown(page, r"error-\d{3}") == newest_first(105, "error")[:2]
    assert "2 shown, newest first; More shows older ones." in page["text"]
