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
    """`url` with its password, a user name standing alone, and every query value hidden."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{HIDDEN}@{host}" if has_password else f"{HIDDEN}@{host}"
    query = "&".join(
        f"{name}={HIDDEN}" if has_value else HIDDEN
        for name, has_value, _ in (field.partition("=") for field in parts.query.split("&") if field)
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    head = f"{parts.scheme}://" if url.startswith(f"{parts.scheme}://") else f"{parts.scheme}:"  # sqlite:///path
    return f"{head}{netloc}{parts.path}{'?' + query if query else ''}{'#' + parts.fragment if parts.fragment else ''}"
