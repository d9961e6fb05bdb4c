"""The hub's store as the read-and-repair commands open it: only if it is there.

`touchhub decisions explain`, `profiles explain` and `deliveries` read (and
replay) what a running hub stored. Opening a SQLite URL creates the file and
its folder, so such a command run from the wrong folder used to leave an
empty var/hub.db behind and then fail on "no such table" (or, migrating it,
report an empty delivery log as if the hub had sent nothing). These say
which HUB_DATABASE_URL they read and what to do instead.

The delivery log they print masks recipients by the hub's routes, as the
admin API does (`delivery_recipients`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hub.errors import ConfigError
from hub.secret_urls import shown_url
from hub.store.opening import open_store, store_url, unusable_url, why
from hub.store import Store, newer_revisions, newer_schema

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hub.routes_file import ChannelRoute
    from hub.settings import HubSettings
    from hub.store.delivery_log import RecipientOf


def existing_store(settings: HubSettings) -> Store:
    """The store at HUB_DATABASE_URL if it exists and holds the hub's schema; else ConfigError saying what to do."""
    url = settings.database_url
    try:
        parsed = make_url(store_url(url))
    except ArgumentError as exc:
        raise unusable_url(url, exc) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "").expanduser().resolve()
        if not path.is_file():
            raise ConfigError(_not_found(url, f"no database file at {path}"))
    store = open_store(url, lock_timeout=settings.sqlite_lock_timeout_seconds)
    try:
        with store.read() as connection:
            migrated = inspect(connection).has_table("decisions")
            newer = newer_revisions(connection)
        current = migrated and store.is_current()
    except SQLAlchemyError as exc:
        store.dispose()
        raise ConfigError(_not_found(url, f"cannot open it ({why(exc)})")) from None
    if newer:  # not older: `touchhub migrate` of this release fails on it
        store.dispose()
        raise newer_schema(url, newer)
    if not current:
        store.dispose()
        what = "an older hub's schema" if migrated else "no hub schema (no decisions table)"
        raise ConfigError([
            f"HUB_DATABASE_URL={shown_url(url)}: it has {what}",
            "if this is not the hub's store, set HUB_DATABASE_URL to it; if it is, bring the schema up to date with "
            "`touchhub migrate` (serve and worker also do this on start)",
        ])
    return store


def delivery_recipients(mappings_dir: Path) -> tuple[Mapping[str, ChannelRoute], RecipientOf]:
    """The routes in `mappings_dir`, and what each delivery's target is by them (as the running hub's
    `Router.recipient` says), so a push token is shown cut short, not whole; ConfigError when routes.yaml is
    unusable."""
    from hub.routes_file import load_routes, recipient_of

    routes = load_routes(mappings_dir / "routes.yaml")
    return routes, partial(recipient_of, routes)


def _not_found(url: str, what: str) -> list[str]:
    parsed = make_url(store_url(url))
    relative = parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "/").is_absolute()
    where = f" (a relative path is read from the current folder, {Path.cwd()})" if relative else ""
    return [
        f"HUB_DATABASE_URL={shown_url(url)}: {what}{where}",
        "run this from the hub's folder (where `touchhub serve` runs), or set HUB_DATABASE_URL to the hub's store",
    ]
