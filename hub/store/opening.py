"""Opening HUB_DATABASE_URL for the hub and every command: a URL SQLAlchemy cannot parse, a driver not
installed or a server that does not answer is a ConfigError naming the setting, never a traceback."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hub.errors import ConfigError
from hub.secret_urls import shown_url
from hub.store import Store

# Heroku, Render and most hosted PostgreSQL services hand out `postgres://`, a scheme SQLAlchemy dropped.
HOSTED_POSTGRES = "postgres://"
POSTGRES_DRIVER = "postgresql+psycopg://"
URL_FORM = "write it as sqlite:///var/hub.db (a file) or postgresql+psycopg://user:password@host:5432/database"


def store_url(url: str) -> str:
    """`url` as SQLAlchemy reads it: a hosted provider's `postgres://` becomes `postgresql+psycopg://`."""
    return POSTGRES_DRIVER + url[len(HOSTED_POSTGRES):] if url.startswith(HOSTED_POSTGRES) else url


def open_store(url: str, *, migrate: bool = False, lease: timedelta | None = None) -> Store:
    """The store at HUB_DATABASE_URL `url` (brought up to date if `migrate`; `lease` as `Store` takes it); ConfigError
    naming the setting, the URL without its password and the reason when it cannot be parsed, its driver is missing
    or it cannot be reached."""
    try:
        store = Store(store_url(url), lease)
    except (ArgumentError, ImportError) as exc:
        raise unusable_url(url, exc) from None
    if migrate:
        try:
            store.migrate()
        except SQLAlchemyError as exc:
            store.dispose()
            raise ConfigError(
                f"HUB_DATABASE_URL={shown_url(url)}: cannot open it ({why(exc)}); check that the database is up "
                "and reachable from here, and the URL's host, port, user, password and database name"
            ) from None
    return store


def unusable_url(url: str, exc: Exception) -> ConfigError:
    return ConfigError(f"HUB_DATABASE_URL={shown_url(url)}: not a usable database URL ({why(exc)}); {URL_FORM}")


def why(exc: Exception) -> str:
    """The driver's own words when there are some (SQLAlchemy's wrapper adds the SQL and a docs link), one line."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())
