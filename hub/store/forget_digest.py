"""The digests the forgotten-identifier blocklist keeps: keyed, so that the table gives nobody the values back.

Forgetting a person puts a digest of each of their identifiers on a
blocklist, so an old install sending the same email cannot bring them back
(`hub.store.forget`). An unkeyed sha256 is no cover for a phone number (the
~10^10 numbers of a country are all hashed in seconds) or an email (hash a
list of addresses): the table still held the forgotten person's phone and
email for whoever read the database or a backup, and GDPR counts such a hash
as personal data. With HUB_FORGET_KEY set, a row keeps the HMAC-SHA256 of the
unkeyed digest under that key instead, which nobody can test a guess against
without the key, kept outside the database.

The HMAC is taken of the unkeyed digest, not of the value, so a row written
unkeyed (before the key was set, or by a node without it) is keyed in place,
value unknown, when a hub with the key starts (`use_keys`). Until then it
still refuses its identifier: a lookup asks for the unkeyed digest beside the
keyed ones. Those few more values in the one indexed lookup of an identifier
the identity cache does not know cost less, and are exact where remembering
whether the store holds unkeyed rows is not: on a multi-node PostgreSQL,
another node without the key, or an older hub mid-upgrade, may write one at
any moment.

The keys are held per store engine, so each `Store` of a process is read with
its hub's settings, and one opened without them (`open_store` alone) stays
unkeyed, as before HUB_FORGET_KEY.

A node without the key reads a keyed row as nothing: it would take the
person back in at their next identify. So an unkeyed hub refuses to start on
a blocklist that holds keyed rows, and one already running when another node
keys the blocklist (the first node of a rollout restarted with the key) fails
its pipeline batches from then on, the events left in the inbox, until it is
restarted with the key (`refuse_keyed_rows_once_moved`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, delete, exists, select

from hub.errors import ConfigError
from hub.model import Identifier
from hub.store.refusals import rename_refused_identifiers
from hub.store.schema import forgotten_identifiers
from hub.store.sql import NewRows, lock_profiles

if TYPE_CHECKING:
    from hub.store import Store

KEYING_BATCH = 1000  # unkeyed rows read, and deleted once keyed, per statement: none holds too many values
PLAIN, KEYED = "sha256:", "hmac-sha256:"  # how a refusal in the audit trail names a forgotten identifier's digest
_INSERT_KEYED = NewRows(forgotten_identifiers.c.digest)  # a row keyed by another node meanwhile is skipped
_HOLDS_KEYED = select(exists().where(forgotten_identifiers.c.keyed))


def identifier_digest(ident: Identifier) -> str:
    """The unkeyed sha256 of an identifier: what consent changes name it by (`hub.store.consent_changes`), and what
    the blocklist kept before HUB_FORGET_KEY (and still keeps without it)."""
    return hashlib.sha256(f"{ident.type}\x1f{ident.value}".encode()).hexdigest()


@dataclass(frozen=True)
class ForgetKeys:
    """The keys the blocklist is digested with: `current` keys new rows (None: they stay unkeyed), `previous` ones
    (HUB_FORGET_PREVIOUS_KEYS) only still match the rows they keyed."""

    current: bytes | None = None
    previous: tuple[bytes, ...] = ()

    @property
    def keyed(self) -> bool:
        return self.current is not None

    def stored(self, ident: Identifier) -> str:
        """The digest a new blocklist row keeps for `ident`."""
        unkeyed = identifier_digest(ident)
        return self.keyed_form(unkeyed) if self.keyed else unkeyed

    def keyed_form(self, unkeyed: str) -> str:
        """An unkeyed digest keyed by the current key: HMAC-SHA256 of its hex text."""
        return _hmac(self._hmacs[0], unkeyed)

    def refusal_value(self, unkeyed: str) -> str:
        """How a refusal in the audit trail names a forgotten identifier of this unkeyed digest: by the digest the
        blocklist keeps, prefixed with its form (`KEYED`, `PLAIN`)."""
        return KEYED + self.keyed_form(unkeyed) if self.keyed else PLAIN + unkeyed

    def candidates(self, ident: Identifier) -> tuple[str, ...]:
        """Every digest a blocklist row of `ident` may hold: by each key, and unkeyed."""
        unkeyed = identifier_digest(ident)
        return (*(_hmac(prepared, unkeyed) for prepared in self._hmacs), unkeyed)

    @cached_property
    def _hmacs(self) -> tuple[hmac.HMAC, ...]:
        """An HMAC per key, the current one first, each copied per digest: half the time of `hmac.digest`, which
        hashes the key in again every time."""
        keys = (self.current, *self.previous) if self.current is not None else self.previous
        return tuple(hmac.new(key, digestmod=hashlib.sha256) for key in keys)


def _hmac(prepared: hmac.HMAC, unkeyed: str) -> str:
    digest = prepared.copy()
    digest.update(unkeyed.encode())
    return digest.hexdigest()


UNKEYED = ForgetKeys()
_IN_USE: WeakKeyDictionary[Engine, ForgetKeys] = WeakKeyDictionary()
# Per store engine read without a key: the graph epoch at which its blocklist last held no keyed row.
_NO_KEYED_ROWS_AT: WeakKeyDictionary[Engine, int] = WeakKeyDictionary()


def forget_keys(connection: Connection) -> ForgetKeys:
    """The keys this process reads and writes the connection's store's blocklist with (`use_keys`)."""
    return _IN_USE.get(connection.engine, UNKEYED)


def use_keys(store: Store, keys: ForgetKeys) -> int:
    """Digest `store`'s blocklist with `keys` in this process, and key the rows still unkeyed; returns how many.

    Called where a hub opens its store, before any of its workers or
    requests touch the blocklist. Without a key, ConfigError if the blocklist
    holds keyed rows: the hub could not refuse their people.
    """
    _IN_USE[store.engine] = keys
    if not keys.keyed:
        with store.read() as connection:
            refuse_keyed_rows(connection)
        return 0
    with store.write() as connection:
        lock_profiles(connection)  # a blocklist write: under the lock, as every identity write (`hub.identity_epoch`)
        return _key_unkeyed_rows(connection, keys)


def refuse_keyed_rows(connection: Connection) -> None:
    """ConfigError if this process reads the blocklist without HUB_FORGET_KEY and it holds keyed rows.

    A lookup without the key asks only for the unkeyed digest, which a keyed
    row never holds: the person it stands for would be taken back in. Which
    key keyed a row cannot be told, so a node with only HUB_FORGET_PREVIOUS_KEYS
    is refused too. A scan of the blocklist (`keyed` has no index), asked
    only by nodes without the key.
    """
    if not forget_keys(connection).keyed and connection.execute(_HOLDS_KEYED).scalar():
        raise ConfigError(
            "HUB_FORGET_KEY: not set on this node, but the store's blocklist of forgotten people holds digests keyed "
            "by a node that has it; without the key this node cannot recognise those people and would take them "
            "back in; set HUB_FORGET_KEY to the other nodes' key (the same on every node) and restart this one"
        )


def refuse_keyed_rows_once_moved(connection: Connection, epoch: int) -> None:
    """`refuse_keyed_rows`, asked again only when the identity graph's `epoch` moved since it last found none.

    Every write to the blocklist moves the epoch (a trigger), so an unmoved
    one vouches that it still holds no keyed row. Asked where the pipeline
    reads the epoch, first and last in each batch (`readable_graph_epoch`): a
    node still running without the key when another keys the blocklist fails
    every batch from then on, rolled back with what it resolved, and its
    events wait in the inbox for a node with the key. On a node with the key
    this is a dictionary lookup, and without one a scan per batch that
    changed the graph.
    """
    engine = connection.engine
    if _NO_KEYED_ROWS_AT.get(engine) != epoch:
        refuse_keyed_rows(connection)
        _NO_KEYED_ROWS_AT[engine] = epoch


def _key_unkeyed_rows(connection: Connection, keys: ForgetKeys) -> int:
    """Replace each unkeyed row by its keyed form, keeping when its identifier was forgotten, and rename the
    refusals that named one by its unkeyed digest.

    A batch is deleted by the digests it read, never by `NOT keyed`: on
    PostgreSQL another node may commit an unkeyed row meanwhile, which would
    go before it was keyed, refusing nothing ever after. The next batch
    reads it instead. In digest order, so nodes starting at once take the
    rows' locks in one order and never deadlock.
    """
    table = forgotten_identifiers
    unkeyed = table.c.keyed.is_(False)
    batch = select(table.c.digest, table.c.forgotten_at).where(unkeyed).order_by(table.c.digest).limit(KEYING_BATCH)
    keyed = 0
    while rows := connection.execute(batch).all():
        _INSERT_KEYED(connection, [{"digest": keys.keyed_form(digest), "forgotten_at": at, "keyed": True} for digest, at in rows])
        connection.execute(delete(table).where(table.c.digest.in_([digest for digest, _ in rows]), unkeyed))
        keyed += len(rows)
    if keyed:
        _key_plain_refusals(connection, keys)
    return keyed


def _key_plain_refusals(connection: Connection, keys: ForgetKeys) -> None:
    """Refusals recorded while the hub had no key named the forgotten identifier by its unkeyed digest (`PLAIN`):
    the value the key hides, kept readable in the audit trail. Named by the keyed digest instead, as a keyed hub
    names them, a later refusal of the identifier counts on the same row."""
    from hub.identity import FORGOTTEN_RULE  # hub.identity imports this module

    def keyed_name(ident: Identifier) -> Identifier | None:
        if not ident.value.startswith(PLAIN):
            return None
        return Identifier(ident.type, keys.refusal_value(ident.value.removeprefix(PLAIN)))

    rename_refused_identifiers(connection, FORGOTTEN_RULE, keyed_name)
