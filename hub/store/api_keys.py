"""API keys for the admin API: a name, scopes, and only a digest of the key.

A key reads ``thk_<key id>_<secret>``. The prefix says what it is, so a
secret scanner, or a person who finds one pasted in a ticket, knows whose
it is; the key id (a ULID, public: `touchhub keys list` shows it and
`touchhub keys revoke` takes it) finds the row; the whole key's SHA-256 is
then compared in constant time. The secret is 256 random bits, so a fast
digest is enough: there is nothing a slow hash would protect from guessing.
The key is printed once, when it is made, and kept nowhere.

Scopes are few on purpose, one per kind of harm a key can do; `admin`
holds them all, and HUB_ADMIN_TOKEN (the bootstrap) acts with it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update
from ulid import ULID

from connectors.base import matches_digest, secret_digest
from hub.store.schema import api_keys

KEY_PREFIX = "thk"
ADMIN = "admin"
SCOPES: dict[str, str] = {  # each with what it allows, as `touchhub keys create --help` shows it
    "read": "every GET",
    "replay": "replay deliveries (single or from the dead-letter queue) and a source's stored events",
    "profiles:write": "unmerge; grant or revoke a profile's channel consent",
    "profiles:delete": "forget a person, for good",
    "mappings": "mapping preview",
    ADMIN: "all of them",
}
# A whole key: the id finds the row, the secret (token_urlsafe) runs to the first blank or quote after it.
_KEY = re.compile(rf"{KEY_PREFIX}_(?P<key_id>[^_\s]+)_[^\s'\"]+")
KEY_ID_LENGTH = api_keys.c.key_id.type.length  # a ULID's 26 characters
# last_used_at is written at most this often per key, so that a key polling GETs does not make a write of each.
USE_RECORDED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class ApiKey:
    """A key as `touchhub keys list` shows it: everything but its digest."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def use_to_record(self, now: datetime) -> bool:
        """Whether a request at `now` updates last_used_at (at most once per `USE_RECORDED_EVERY`)."""
        return self.last_used_at is None or now - self.last_used_at >= USE_RECORDED_EVERY


def create(connection: Connection, name: str, scopes: Collection[str], now: datetime) -> tuple[str, str]:
    """Make a key with `scopes` (names from `SCOPES`); returns its id and the key whole, the one time it is seen."""
    key_id = str(ULID())
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    connection.execute(insert(api_keys).values(
        key_id=key_id, name=name, secret_digest=secret_digest(key), scopes=sorted(set(scopes)), created_at=now,
    ))
    return key_id, key


def verify(connection: Connection, presented: str) -> ApiKey | None:
    """The key `presented` is, revoked or not; None when it is none of ours (its id unknown or its secret wrong)."""
    key_id = _id_in(presented)
    if key_id is None:
        return None
    row = connection.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if row is None or not matches_digest(presented, row.secret_digest):
        return None
    return _key(row)


def _id_in(key: str) -> str | None:
    """The key id inside a whole key (`thk_<key id>_<secret>`), or None when `key` does not read as one."""
    whole = _KEY.fullmatch(key)
    return whole["key_id"] if whole else None


def named_id(text: str) -> str:
    """The key id `text` names: itself, or the id inside a whole key pasted instead, so that a leaked key can be
    revoked as it was found (a header value `Bearer thk_...`, a line of a proxy log or a curl command, blanks
    around it) and its secret is never printed back."""
    found = _KEY.search(text)
    return found["key_id"] if found else text.strip()


def shown_id(key_id: str) -> str:
    """`key_id` quoted as a message may print it, or `<redacted>` when it is longer than a key id: no id, and it
    may be a secret pasted alone or a key cut short."""
    return repr(key_id) if len(key_id) <= KEY_ID_LENGTH else "<redacted>"


def record_use(connection: Connection, key: ApiKey, now: datetime) -> None:
    """Set the key's last_used_at, unless another request set it less than `USE_RECORDED_EVERY` ago."""
    column = api_keys.c.last_used_at
    connection.execute(
        update(api_keys).where(api_keys.c.key_id == key.key_id, or_(column.is_(None), column < now - USE_RECORDED_EVERY))
        .values(last_used_at=now)
    )


def listed(connection: Connection) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return [_key(row) for row in connection.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id))]


def revoke(connection: Connection, key_id: str, now: datetime) -> ApiKey | None:
    """Revoke a key (a key revoked before keeps its first revoked_at); None when no key has that id. The id is
    read in either case, as a ULID is: ids are stored as `str(ULID())` writes them, upper-case."""
    key_id = key_id.upper()
    connection.execute(
        update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    row = connection.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    return None if row is None else _key(row)


def _key(row: Any) -> ApiKey:
    return ApiKey(row.key_id, row.name, tuple(row.scopes), row.created_at, row.last_used_at, row.revoked_at)
