"""Opening HUB_DATABASE_URL for the hub and every command: a URL SQLAlchemy cannot parse, a driver not
installed, a server that does not answer, a SQLite folder that cannot be made or written, an in-memory SQLite
database, or a schema a newer hub migrated is a ConfigError naming the setting, never a traceback."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hub.errors import ConfigError
from hub.secret_urls import shown_url
from hub.store import Store
from hub.store.engine import SQLITE_LOCK_TIMEOUT_SECONDS

# Heroku, Render and most hosted PostgreSQL services hand out `postgres://`, a scheme SQLAlchemy dropped.
HOSTED_POSTGRES = "postgres://"
POSTGRES_DRIVER = "postgresql+psycopg://"
URL_FORM = "write it as sqlite:///var/hub.db (a file) or postgresql+psycopg://user:password@host:5432/database"


def store_url(url: str) -> str:
    """`url` as SQLAlchemy reads it: a hosted provider's `postgres://` becomes `postgresql+psycopg://`."""
    return POSTGRES_DRIVER + url[len(HOSTED_POSTGRES):] if url.startswith(HOSTED_POSTGRES) else url


def open_store(
    url: str, *, migrate: bool = False, lease: timedelta | None = None, lock_timeout: float = SQLITE_LOCK_TIMEOUT_SECONDS
) -> Store:
    """The store at HUB_DATABASE_URL `url` (brought up to date if `migrate`; `lease`, `lock_timeout` as `Store` takes
    them); ConfigError
    naming the setting, the URL without its password and the reason when it cannot be parsed, its driver is missing,
    it cannot be reached, its SQLite folder cannot be made or written, it is an in-memory SQLite database, or (to
    migrate) a newer hub's schema."""
    try:
        _refuse_in_memory(url)
        store = Store(store_url(url), lease, lock_timeout)
    except (ArgumentError, ImportError) as exc:
        raise unusable_url(url, exc) from None
    except OSError as exc:  # the SQLite file's folder cannot be made (a file in the way, no permission)
        raise _unusable_folder(url, exc) from None
    if migrate:
        try:
            _migrate(url, store)
        except ConfigError:
            store.dispose()
            raise
    return store


def _migrate(url: str, store: Store) -> None:
    """`store.migrate()`, whose failures are ConfigErrors naming HUB_DATABASE_URL (a newer hub's schema already is
    one: `Store.migrate`)."""
    try:
        store.migrate()
    except OSError as exc:  # the writer lock's file beside the database, opened on the first write
        raise _unusable_folder(url, exc) from None
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"HUB_DATABASE_URL={shown_url(url)}: cannot open it ({why(exc)}); check that the database is up "
            "and reachable from here, and the URL's host, port, user, password and database name"
        ) from None


def unusable_url(url: str, exc: Exception) -> ConfigError:
    return ConfigError(f"HUB_DATABASE_URL={shown_url(url)}: not a usable database URL ({why(exc)}); {URL_FORM}")


def _unusable_folder(url: str, exc: OSError) -> ConfigError:
    where = f"{exc.filename}: " if exc.filename else ""
    return ConfigError(
        f"HUB_DATABASE_URL={shown_url(url)}: cannot make or write the database's folder ({where}{exc.strerror or exc}); "
        "move what is in the way or fix its permissions, or point HUB_DATABASE_URL at a file in a folder this user "
        "can write"
    )


def _refuse_in_memory(url: str) -> None:
    """SQLite gives each pooled connection its own empty in-memory database, so the hub's tables would be missing
    from all but one (every ingest a 500), and nothing acknowledged could survive the process."""
    parsed = make_url(store_url(url))
    if parsed.get_backend_name() != "sqlite":
        return
    if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        raise ConfigError(
            f"HUB_DATABASE_URL={shown_url(url)}: an in-memory SQLite database is not kept (each connection gets its "
            "own, emptied on exit); give a file, e.g. sqlite:///var/hub.db"
        )


def why(exc: Exception) -> str:
    """The driver's own words when there are some (SQLAlchemy's wrapper adds the SQL and a docs link), one line."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())
