"""URLs as logs, the CLI and the delivery log show them: without the secrets they may carry.

A database URL holds its password; a webhook receiver's URL may hold Basic
credentials (``https://user:pass@host``), a token as the user name
(``https://tok@host``) or a token in its query (``?token=...``, or a bare
``?s3cr3t``). A token in the path itself (a Slack-style hook URL) cannot be
told from an ordinary path and is shown.
"""

from __future__ import annotations

from urllib.parse import urlsplit

HIDDEN = "***"


def shown_url(url: str) -> str:
    """`url` with its secrets hidden: its password (a database URL's as SQLAlchemy reads it, so one holding "/"
    or "?" too), a user name standing alone in a web URL, and every query value."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        from sqlalchemy.engine import make_url  # only the CLI and settings' repr show database URLs
        from sqlalchemy.exc import ArgumentError

        try:
            database = make_url(url)
        except ArgumentError:  # not a database URL either: hidden as a web URL would be
            pass
        else:  # libpq also takes ?password= and ?sslpassword=
            query = "&".join(f"{name}={HIDDEN}" for name in database.query)
            return database.set(query={}).render_as_string(hide_password=True) + (f"?{query}" if query else "")
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{HIDDEN}@{host}" if has_password else f"{HIDDEN}@{host}"
    query = _hidden_query(parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    scheme = url[:len(parts.scheme)]  # as written: urlsplit lowercases it
    return f"{scheme}://{netloc}{parts.path}{'?' + query if query else ''}{'#' + parts.fragment if parts.fragment else ''}"


def shown_path(path: str) -> str:
    """A request's path as an access log shows it: every query value hidden (an unsubscribe link's token opts
    its person out; a callback's query may carry a provider's credentials)."""
    route, has_query, query = path.partition("?")
    return f"{route}?{_hidden_query(query)}" if has_query else path


def _hidden_query(query: str) -> str:
    return "&".join(
        f"{name}={HIDDEN}" if has_value else HIDDEN
        for name, has_value, _ in (field.partition("=") for field in query.split("&") if field)
    )


def setting_shown(field: str, value: object) -> object:
    """The value of the setting `field` with the password or token a URL may carry (a database's, a receiver's
    Basic auth, a proxy's) hidden. Every setting ending in `_url` holds one: a list of them went stale as the
    provider URLs were added, and printed those whole."""
    return shown_url(value) if field.endswith("_url") and isinstance(value, str) else value
